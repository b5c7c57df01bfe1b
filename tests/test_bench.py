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


def test_prediction_from_rounds_counts_the_rounds_that_happened():
    """Rounds of 3 drafts (twice) and 1 draft (once; a draft threshold stopped it) that made 9 tokens, with
    verification costs by draft count [0.9, 1.0, 1.1, 1.2]: 2 x (3 x 0.25 + 1.2) + (0.25 + 1.0) = 5.15 AR steps."""
    costs = {"ar_step": 1.0, "draft_step": 0.25, "verify_by_drafts": [0.9, 1.0, 1.1, 1.2]}
    assert bench.predicted_from_rounds(costs, {3: 2, 1: 1}, 9) == pytest.approx(9 / 5.15)
    assert bench.per_token_acceptance(accepted=6, rejections=2) == 0.75


def test_per_token_alpha_not_the_acceptance_rate_feeds_the_fixed_d_formula():
    """Simulate greedy rounds with per-draft acceptance 0.8 and d = 6: the round-based prediction and the fixed-d
    formula at the estimated alpha agree, while plugging the acceptance rate (accepted / drafted, which counts the
    drafts after a rejection as failures) into the formula undercounts the tokens of a round."""
    import random
    rng, d, alpha = random.Random(0), 6, 0.8
    accepted = rejections = drafted = tokens = 0
    for _ in range(20000):
        n = 0
        while n < d and rng.random() < alpha:
            n += 1
        accepted, rejections, drafted, tokens = accepted + n, rejections + (n < d), drafted + d, tokens + n + 1
    costs = {"ar_step": 1.0, "draft_step": 0.1, "verify_pass": 1.0, "verify_by_drafts": [1.0] * (d + 1)}
    from_rounds = bench.predicted_from_rounds(costs, {d: 20000}, tokens)
    a = bench.per_token_acceptance(accepted, rejections)
    assert a == pytest.approx(alpha, abs=0.01)
    assert bench.predicted_speedup(costs, a, d) == pytest.approx(from_rounds, rel=0.01)
    assert bench.predicted_speedup(costs, accepted / drafted, d) < 0.85 * from_rounds


def test_bench_runs_on_a_short_context_model_and_auto_writes_only_after_success(tiny_tokenizer, tmp_path,
                                                                                 monkeypatch):
    """A toy model with a 64-token window runs to the end; when a measurement fails after the sweep, --auto
    leaves the checkpoint untouched."""
    import torch
    from model_io import save_checkpoint
    torch.manual_seed(0)
    args = ls.ModelArgs(dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=tiny_tokenizer.vocab_size,
                        max_seq_len=64)
    ckpt = tmp_path / "toy.pt"
    save_checkpoint(ckpt, ls.Transformer(args), tiny_tokenizer)
    common = ["--checkpoint", str(ckpt), "--baseline", "", "--prompts", "shakespeare", "--n_prompts", "2",
              "--max_new_tokens", "16", "--repeats", "1", "--threads", "1", "--out_dir", str(tmp_path)]
    bench.main(common + ["--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["greedy_outputs_identical"] is True and report["predicted_speedup"] > 0
    before = ckpt.read_bytes()

    def broken(*a, **k):
        raise RuntimeError("a measurement failed")

    monkeypatch.setattr(bench, "round_costs", broken)
    with pytest.raises(RuntimeError):
        bench.main(common + ["--auto", "--sweep_exits", "1", "2", "--sweep_specs", "1", "--sweep_thresholds", "0.5",
                             "--sweep_prompts", "1"])
    assert ckpt.read_bytes() == before


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
    assert set(report["costs_ms"]) == {"ar_step", "draft_step", "verify_pass", "verify_by_drafts"}
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
    assert per_exit["agreement"][-1] == 1.0 and all(0 <= a <= 1 for a in per_exit["agreement"])


def test_last_exit_loss_is_the_models_own(tiny_checkpoint):
    """per_exit_metrics' last exit equals the full model's forward loss and accuracy on the same windows."""
    import torch
    import torch.nn.functional as F
    model, tok = ls.load_model(tiny_checkpoint)
    docs = evaluate.validation_documents("shakespeare")[:1]
    r = evaluate.per_exit_metrics(model, tok, docs, 3, 32)
    ids = torch.tensor(tok.encode(docs[0])[:3 * 33]).view(3, 33)
    with torch.no_grad():
        logits = model(ids[:, :-1])
    assert r["loss"][-1] == pytest.approx(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item(), rel=1e-5)
    assert r["accuracy"][-1] == pytest.approx((logits.argmax(-1) == ids[:, 1:]).float().mean().item())
    assert r["loss"][0] != pytest.approx(r["loss"][-1])  # a different exit gives a different number
