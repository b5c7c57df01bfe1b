"""Tests of bench.py (and benchmarks/) and eval.py: loops, the speedup formulas, the tables, the sweep and
--auto/--store, peers, memory, and one-line errors for bad input (one table per script)."""

import csv
import json
import random
import shutil
import subprocess
import sys

import pytest
import torch

import bench
import eval as evaluate
import layerskip as ls
from benchmarks import memory, tables, timing
from benchmarks.loops import in_loops, loop_share
from benchmarks.sweep import calibrate_gamma, store_recommendation
from common import crop_prompt, prompt_set
from conftest import assert_one_line_error, tiny_model
from model_io import load_model, save_checkpoint

pytestmark = pytest.mark.cli


def test_loop_share_of_literal_sequences():
    """A token is in a loop when its stretch repeats a block of p <= max_period tokens min_repeats times in a row."""
    assert loop_share([]) == 0.0
    assert loop_share([1, 2, 3, 4, 5]) == 0.0
    assert loop_share([7, 7]) == 1.0  # period 1, twice
    assert loop_share([1, 2, 3, 1, 2, 3]) == 1.0  # period 3, twice
    assert loop_share([9, 1, 2, 3, 1, 2, 3, 8]) == 6 / 8  # the tokens around the loop are not in it
    assert loop_share([1, 2, 1, 2, 1]) == 1.0  # 1212 and 2121 overlap
    assert loop_share([5, 1, 2, 3, 1, 2, 4]) == 0.0  # 1 2 3 1 2 4: the block breaks off before repeating
    assert in_loops([4, 1, 1, 5, 6, 5, 6]) == [False, True, True, True, True, True, True]
    thirteen = list(range(13)) * 2
    assert loop_share(thirteen) == 0.0 and loop_share(thirteen, max_period=13) == 1.0
    assert loop_share([1, 2, 1, 2], min_repeats=3) == 0.0
    assert loop_share([0, 1, 2, 1, 2, 1, 2], min_repeats=3) == 6 / 7
    with pytest.raises(ValueError):
        in_loops([1, 1], min_repeats=1)


def test_calibrate_gamma_finds_the_power_that_predicts_acceptance():
    """Confidence 0.25 accepted half the time and 0.64 four times in five: the fit gives c^0.5; as c says: c^1."""
    pairs = [(1, 0.25), (0, 0.25)] + [(1, 0.64)] * 4 + [(0, 0.64)]
    assert calibrate_gamma(pairs) == 0.5
    assert calibrate_gamma([(1, 0.5), (0, 0.5), (1, 0.8)] * 4 + [(1, 0.8)] * 12 + [(0, 0.8)] * 4) == 1.0


def test_predicted_speedup_formulas():
    """Fixed d: (1 - a^(d+1)) / (1 - a) tokens per d drafts + a verification; from rounds: each by its draft count."""
    costs = {"ar_step": 1.0, "draft_step": 0.25, "verify_pass": 1.2, "verify_by_drafts": [0.9, 1.0, 1.1, 1.2]}
    assert timing.predicted_speedup(costs, 0.5, 3) == pytest.approx(1.875 / 1.95)
    assert timing.predicted_speedup(costs, 0.0, 3) == pytest.approx(1 / 1.95)  # nothing accepted: pure overhead
    assert timing.predicted_speedup(costs, 1.0, 3) == pytest.approx(4 / 1.95)  # everything accepted
    assert timing.predicted_from_rounds(costs, {3: 2, 1: 1}, 9) == pytest.approx(9 / 5.15)
    assert timing.per_token_acceptance(accepted=6, rejections=2) == 0.75
    passes = [dict(seconds=3.0, tokens=3, rounds=3, drafted=0, drafts_per_round={0: 3})]  # no drafts: alpha None
    r = timing.round_analysis(passes, {**costs, "verify_by_drafts": [0.9, 1.0, 1.2]}, speedup=1.0, alpha=None, d=2)
    assert r["predicted_speedup"] == pytest.approx(1 / 0.9) and r["measured_over_predicted"] == pytest.approx(0.9)
    assert r["predicted_fixed_d"] == pytest.approx(1 / 1.7) and r["round_ms"]["drafting"] == 0.0
    # simulated rounds (alpha 0.8, d 6): the formula at the per-token alpha matches the rounds' prediction; at the
    # acceptance rate (accepted / drafted: drafts after a rejection count as failures) it undercounts
    rng, d, alpha = random.Random(0), 6, 0.8
    accepted = rejections = drafted = tokens = 0
    for _ in range(20000):
        n = 0
        while n < d and rng.random() < alpha:
            n += 1
        accepted, rejections, drafted, tokens = accepted + n, rejections + (n < d), drafted + d, tokens + n + 1
    costs = {"ar_step": 1.0, "draft_step": 0.1, "verify_pass": 1.0, "verify_by_drafts": [1.0] * (d + 1)}
    from_rounds = timing.predicted_from_rounds(costs, {d: 20000}, tokens)
    a = timing.per_token_acceptance(accepted, rejections)
    assert a == pytest.approx(alpha, abs=0.01)
    assert timing.predicted_speedup(costs, a, d) == pytest.approx(from_rounds, rel=0.01)
    assert timing.predicted_speedup(costs, accepted / drafted, d) < 0.85 * from_rounds


def test_auto_sweeps_and_stores_the_fastest_setting_only_after_success(tiny_tokenizer, tmp_path, monkeypatch):
    """--auto sweeps E x d, thresholds (d, 2d), costs (2d, 4d), measures the best; --store stores it only after success
    (--auto alone writes nothing: test_outputs.py)."""
    ckpt = tmp_path / "toy.pt"
    save_checkpoint(ckpt, tiny_model(vocab_size=tiny_tokenizer.vocab_size, max_seq_len=64, dtype=torch.float32),
                    tiny_tokenizer)
    before = ckpt.read_bytes()
    argv = [str(a) for a in ["--checkpoint", ckpt, "--baseline", "", "--prompts", "shakespeare", "--n_prompts", 2,
                             "--max_new_tokens", 6, "--repeats", 1, "--threads", 1, "--out_dir", tmp_path,
                             "--json", tmp_path / "r.json", "--auto", "--sweep_exits", 1, 3, "--sweep_specs", 1, 2,
                             "--sweep_thresholds", 0.5, "--sweep_prompts", 1, "--store"]]

    def broken(*a, **k):
        raise RuntimeError("a measurement failed")
    with monkeypatch.context() as m:
        m.setattr(tables, "round_costs", broken)
        with pytest.raises(RuntimeError):
            bench.main(argv)
    assert ckpt.read_bytes() == before

    bench.main(argv)
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    grid = [r for r in rows if r["draft_threshold"] == "" and r["draft_cost"] == ""]
    assert {(r["exit_layer"], r["num_speculations"]) for r in grid} == {("1", "1"), ("1", "2"), ("3", "1"), ("3", "2")}
    first = max(grid, key=lambda r: float(r["speedup"]))
    E, d = first["exit_layer"], int(first["num_speculations"])
    adaptive = [r for r in rows if r["draft_threshold"] == "0.5"]
    assert {(r["exit_layer"], int(r["num_speculations"])) for r in adaptive} == {(E, d), (E, 2 * d)}
    cost_rule = [r for r in rows if r["draft_cost"]]
    assert {(r["exit_layer"], int(r["num_speculations"])) for r in cost_rule} == {(E, 2 * d), (E, 4 * d)}
    assert all(0 < float(r["draft_cost"]) <= 1 and 0.1 <= float(r["draft_gamma"]) <= 2 for r in cost_rule)
    report = json.loads((tmp_path / "r.json").read_text())
    best = max(report["sweep"], key=lambda r: r["speedup"])  # the rows of sweep.csv, unrounded
    rec = load_model(ckpt)[0].metadata["recommended"]
    keys = bench.SETTING_KEYS  # the stored setting is the fastest row's, and the one the report measured
    assert [rec[k] for k in keys] == [best[k] for k in keys] == [report[k] for k in keys]
    assert rec["prompts"] == "dev" and report["greedy_outputs_identical"] is True
    assert report["predicted_speedup"] > 0 and report["measured_over_predicted"] > 0  # what it found, measured
    assert set(report["costs_ms"]) == {"ar_step", "draft_step", "verify_pass", "verify_by_drafts"}
    ss = timing.self_speculative_name(rec)
    assert set(report["summary"]) == {"autoregressive", f"early_exit E={rec['exit_layer']}", ss}  # no yardstick


def test_eval_reports_every_exit_and_the_last_is_the_models_own(tiny_checkpoint, tmp_path, capsys):
    """eval.py prints a row per exit and writes per_exit_metrics' numbers; the last exit's are the model's own."""
    evaluate.main(["--checkpoints", str(tiny_checkpoint), "--data", "shakespeare", "--windows", "2",
                   "--block_size", "32", "--n_prompts", "1", "--max_new_tokens", "4", "--prompts", "shakespeare",
                   "--out_dir", str(tmp_path), "--json", str(tmp_path / "e.json"), "--threads", "1"])
    out = capsys.readouterr().out
    assert all(f"| {l} |" in out for l in range(1, 5))
    report = json.loads((tmp_path / "e.json").read_text())
    model, tok = load_model(tiny_checkpoint)
    docs = evaluate.validation_documents("shakespeare")
    assert report["per_exit"]["tiny"] == evaluate.per_exit_metrics(model, tok, docs, 2, 32)
    assert all(1 <= n <= 4 for n in report["layers_needed"]["tiny"])
    r = evaluate.per_exit_metrics(model, tok, docs[:1], 3, 32)
    assert r["agreement"][-1] == 1.0  # the last exit agrees with itself
    ids = torch.tensor(tok.encode(docs[0])[:3 * 33]).view(3, 33)
    with torch.no_grad():
        logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
    assert r["loss"][-1] == pytest.approx(loss, rel=1e-5) and r["loss"][0] != pytest.approx(r["loss"][-1])
    assert r["accuracy"][-1] == pytest.approx((logits.argmax(-1) == ids[:, 1:]).float().mean().item())


def test_bench_prints_a_second_table_with_loops_suppressed(tiny_checkpoint, tmp_path, capsys):
    """--no_repeat_ngram_size: a second table, every variant with the processor; loop shares as decoded directly."""
    bench.main(["--checkpoint", str(tiny_checkpoint), "--baseline", str(tiny_checkpoint), "--prompts", "shakespeare",
                "--n_prompts", "1", "--max_new_tokens", "40", "--repeats", "1", "--no_repeat_ngram_size", "2",
                "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert out.count("| autoregressive |") == 2 and "greedy, no_repeat_ngram_size 2, batch 1" in out
    assert out.count("self-speculative greedy output identical to autoregressive: True") == 2
    report = json.loads((tmp_path / "r.json").read_text())
    processed = report["with_processors"]

    model, tok = load_model(tiny_checkpoint)
    ids = crop_prompt(model, tok.encode(prompt_set("shakespeare")[0]), 40)
    plain, suppressed = (loop_share(ls.generate(model, ids, 40, eos_id=tok.stop_ids, seed=0, **kw).tokens)
                         for kw in ({}, {"no_repeat_ngram_size": 2}))
    assert plain > 0.4 and suppressed < plain  # an untrained model repeats itself; the processor stops it
    assert report["loop_share"] == pytest.approx(plain) and processed["loop_share"] == pytest.approx(suppressed)
    assert processed["summary"]["baseline autoregressive"]["in_loops"] == pytest.approx(suppressed)
    setting = dict(strategy="self_speculative", exit_layer=1, num_speculations=4, draft_threshold=None)
    both = {"checkpoint": (model, tok), "baseline": (model, tok), "reference": (model, tok)}
    variants = tables.table_variants(both, setting, {"no_repeat_ngram_size": 2}, "reference autoregressive")
    assert len(variants) == 6 and all(kw["no_repeat_ngram_size"] == 2 for _, _, kw in variants.values())


def test_peak_memory_is_the_fresh_process_own(tiny_checkpoint):
    """--memory reads a spawned process's own peak: not this one's 512 MiB buffer; decoding adds to the loaded model."""
    ballast = bytearray(2**29)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touch every page, so that it is resident
    here = memory.resident_bytes("VmRSS")
    mem = memory.measure_memory(tiny_checkpoint, {"autoregressive": {}}, "To be", 8, 1)["autoregressive"]
    assert here > 2**29 and mem["peak_bytes"] < here - 2**28
    assert 0 <= mem["above_loaded_bytes"] < mem["peak_bytes"]


@pytest.fixture
def bad_files(tmp_path):
    """A folder, a binary file, a file, an empty text and a short one."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.pt").write_bytes(bytes(range(256)))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "short.txt").write_text("To be\n")
    return tmp_path


BENCH_BAD = [  # (argv after --checkpoint CKPT --baseline '', what the one line says)
    (["--max_new_tokens", "1000000000"], "--max_new_tokens 1000000000 leaves no room for a prompt"),
    (["--exit", "99"], "exit layer 99 is out of range: this model has 4 layers"),  # settings.py's checks: one case
    (["--sweep", "--sweep_specs", "64"], "the sweep tries d, 2d and 4d"),
    (["--sweep", "--out_dir", "{tmp}/a_file"], "--out_dir"),
    (["--json", "{tmp}/no/such/folder/r.json"], "--json"),
    (["--prompts", "nosuchset"], "--prompts nosuchset: not humaneval, dev, shakespeare or an existing text file"),
    (["--prompts", "{tmp}/empty.txt"], "has no prompts"),  # common.prompt_set's errors: tested here
    (["--store"], "--store writes what --auto finds: give --auto too"),
    (["--auto", "--store", "--checkpoint", "{tmp}/folder"], "give a writable checkpoint file"),
]


@pytest.mark.parametrize("argv, match", BENCH_BAD)
def test_bench_refuses_bad_input_in_one_line(tiny_checkpoint, bad_files, capsys, argv, match):
    """Each bad value stops bench.py before it measures anything: exit 2, one line naming it."""
    shutil.copy(tiny_checkpoint, bad_files / "folder" / "model.pt")
    argv = [a.replace("{tmp}", str(bad_files)) for a in argv]
    assert_one_line_error(bench.main, ["--checkpoint", tiny_checkpoint, "--baseline", "", *argv], capsys, match)


EVAL_BAD = [  # (argv after --checkpoints CKPT --data SHORT_TEXT, what the one line says)
    (["--checkpoints", "{tmp}/binary.pt"], "cannot be read as a checkpoint"),
    (["--block_size", "32"], "less than one window of 33"),  # "To be" is a few tokens
    (["--data", "{tmp}/binary.pt"], "not UTF-8 text"),
    (["--block_size", "256"], "--block_size 256 does not fit"),  # window 256: at most 255; never clamped
    (["--data", "nosuchcorpus"], "--data nosuchcorpus: not python, python-stdlib, shakespeare"),
    (["--checkpoints", "{ckpt}", "{ckpt}"], "two are named tiny"),
]


@pytest.mark.parametrize("argv, match", EVAL_BAD)
def test_eval_refuses_bad_input_in_one_line(tiny_checkpoint, bad_files, capsys, argv, match):
    """Each bad value stops eval.py with exit code 2 and one line naming it."""
    argv = [a.replace("{tmp}", str(bad_files)).replace("{ckpt}", str(tiny_checkpoint)) for a in argv]
    assert_one_line_error(evaluate.main, ["--checkpoints", tiny_checkpoint, "--data", bad_files / "short.txt",
                                          *argv], capsys, match)


def test_peers_rows_decode_our_greedy_tokens_in_the_same_run(tiny_checkpoint, tmp_path, capsys):
    """--peers: transformers' AR and assistant_early_exit=E rows give our greedy tokens; ratios are the rows'."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    store_recommendation(ckpt, dict(exit_layer=2, num_speculations=3, draft_threshold=0.3, speedup=1.0), "shakespeare")
    bench.main(["--checkpoint", str(ckpt), "--baseline", "", "--prompts", "shakespeare", "--n_prompts", "2",
                "--max_new_tokens", "12", "--repeats", "1", "--peers", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    ss, ee = "self_speculative E=2 d=3 threshold 0.3", "transformers assistant_early_exit=2"
    assert f"| {ss} |" in out and "| transformers autoregressive |" in out and f"| {ee} |" in out
    assert ("drafts with num_assistant_tokens 3, num_assistant_tokens_schedule constant (transformers' default), "
            "assistant_confidence_threshold 0.3\n") in out
    report = json.loads((tmp_path / "r.json").read_text())
    s, peers = report["summary"], report["peers"]
    assert peers["identical"] == {"transformers autoregressive": True, ee: True}
    assert s[ee]["acceptance"] is None and s[ee]["tokens_per_round"] is None  # transformers reports no rounds
    x, y, z = peers["self_speculative_over_theirs"], peers["autoregressive_over_theirs"], peers["their_speedup"]
    speed = {name: row["tokens_per_s"] for name, row in s.items()}
    theirs = speed["transformers autoregressive"]
    assert (x, y, z) == pytest.approx((speed[ss] / speed[ee], speed["autoregressive"] / theirs, speed[ee] / theirs),
                                      rel=1e-9)
    assert f"= {x:.2f} x transformers assistant_early_exit's; our autoregressive = {y:.2f} x transformers" in out


def test_peers_refuses_in_one_line_before_timing(tiny_checkpoint, capsys, monkeypatch):
    """--peers without transformers, with one too old, or a model export.py refuses: one line, nothing timed."""
    import transformers
    monkeypatch.setattr(tables, "measure", lambda *a, **k: pytest.fail("timed"))
    argv = ["--checkpoint", tiny_checkpoint, "--baseline", "", "--peers"]
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    assert_one_line_error(bench.main, argv, capsys, "it is not installed: pip install transformers")
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    with monkeypatch.context() as old:
        old.setattr(transformers, "__version__", "4.46.3")
        assert_one_line_error(bench.main, argv, capsys, "--peers needs transformers 4.47 or newer")
    refused = "export.py: error: its tiktoken tokenizer cannot be exported to transformers faithfully here\n"
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 2, "", refused))
    assert_one_line_error(bench.main, argv, capsys, f"--peers converts --checkpoint {tiny_checkpoint} for "
                          "transformers, and that failed: export.py: error: its tiktoken tokenizer")
