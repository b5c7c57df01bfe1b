"""Tests of bench.py and eval.py: the analytic speedup formula, the sweep/auto selection, the reports."""

import csv
import json
import shutil

import pytest

import bench
import eval as evaluate
import layerskip as ls


def test_predicted_speedup_formula():
    """d drafts accepted i.i.d. with probability a give (1 - a^(d+1)) / (1 - a) tokens per round, which cost
    d draft steps and one verification: AR 1.0, draft 0.25, verify 1.2, a 0.5, d 3 -> 1.875 / 1.95."""
    costs = {"ar_step": 1.0, "draft_step": 0.25, "verify_pass": 1.2}
    assert bench.predicted_speedup(costs, 0.5, 3) == pytest.approx(1.875 / 1.95)
    assert bench.predicted_speedup(costs, 0.0, 3) == pytest.approx(1 / 1.95)  # nothing accepted: pure overhead
    assert bench.predicted_speedup(costs, 1.0, 3) == pytest.approx(4 / 1.95)  # everything accepted


def test_sweep_auto_stores_the_fastest_setting(tiny_checkpoint, tmp_path, capsys):
    """--auto sweeps exit x d, writes the CSV, and stores the fastest (E, d) in the checkpoint's metadata,
    where load_model finds it; the report's JSON has the analytic prediction and the equality check."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    bench.main(["--checkpoint", str(ckpt), "--baseline", "", "--auto", "--sweep_exits", "1", "3",
                "--sweep_specs", "1", "2", "--sweep_thresholds", "0.5", "--n_prompts", "2", "--sweep_prompts", "1", "--max_new_tokens", "6",
                "--repeats", "1", "--threads", "1", "--out_dir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    grid = [r for r in rows if r["draft_threshold"] == ""]
    assert {(r["exit_layer"], r["num_speculations"]) for r in grid} == {("1", "1"), ("1", "2"), ("3", "1"), ("3", "2")}
    first = max(grid, key=lambda r: float(r["speedup"]))  # then thresholds on its E with d and 2d
    adaptive = [r for r in rows if r["draft_threshold"] == "0.5"]
    assert {(r["exit_layer"], int(r["num_speculations"])) for r in adaptive} == {
        (first["exit_layer"], int(first["num_speculations"])), (first["exit_layer"], 2 * int(first["num_speculations"]))}
    best = max(rows, key=lambda r: float(r["speedup"]))
    model, _ = ls.load_model(ckpt)
    rec = model.metadata["recommended"]
    assert (rec["exit_layer"], rec["num_speculations"]) == (int(best["exit_layer"]), int(best["num_speculations"]))
    assert rec["draft_threshold"] == (float(best["draft_threshold"]) if best["draft_threshold"] else None)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit_layer"] == rec["exit_layer"] and report["greedy_outputs_identical"] is True
    assert report["predicted_speedup"] > 0 and report["measured_over_predicted"] > 0
    assert set(report["costs_ms"]) == {"ar_step", "draft_step", "verify_pass"}
    assert "| autoregressive |" in capsys.readouterr().out


def test_eval_reports_every_exit(tiny_checkpoint, tmp_path, capsys):
    """eval.py prints one row per exit layer and writes per-exit numbers; exit L's loss is the model's own."""
    evaluate.main(["--checkpoints", str(tiny_checkpoint), "--data", "shakespeare", "--windows", "2",
                   "--block_size", "32", "--n_prompts", "1", "--max_new_tokens", "4", "--prompts", "shakespeare",
                   "--out_dir", str(tmp_path), "--json", str(tmp_path / "e.json"), "--threads", "1"])
    out = capsys.readouterr().out
    assert all(f"| {l} |" in out for l in range(1, 5))
    r = json.loads((tmp_path / "e.json").read_text())
    per_exit = r["per_exit"]["tiny"]
    assert len(per_exit["loss"]) == 4 and all(0 <= a <= 1 for a in per_exit["accuracy"])
    assert all(1 <= n <= 4 for n in r["layers_needed"]["tiny"])
