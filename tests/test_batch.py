"""Batched decoding is decoding each prompt alone: token for token, in float64 on random models, for every
strategy, with ragged prompts and rows that finish at different rounds; a batch runs as one (blocks are called per
round, not per row). Sampled rows keep the full model's distribution: test_layerskip.py's chi-square test."""

import json

import pytest
import torch

import bench
import generate
import layerskip as ls
from conftest import ROOT, assert_one_line_error, block_inputs, tiny_model
from data.prepare import load_prompts
from model_io import load_model, save_checkpoint
from settings import Settings, recommended


def ragged_prompts(B, seed=0, vocab=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 12, (B,), generator=g)]


def alone(model, prompts, max_new_tokens, **kw):
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    return [ls.generate(model, p, m, **kw).tokens for p, m in zip(prompts, budgets)]


@pytest.mark.method
@pytest.mark.parametrize("B", [1, 2, 5, 16])
def test_batched_greedy_equals_each_prompt_alone(B):
    """Ragged prompts x strategies x exits {1, middle, L-1} x d {1, 4, 8}, with an EOS that ends rows inside drafts
    or as the verifier's token and with per-row budgets (rows end at different rounds): every row equals its
    batch-1 run. Without EOS or budgets too, at B = 5."""
    L = 6
    model = tiny_model(n_layers=L, seed=B)
    prompts = ragged_prompts(B, seed=B)
    budgets = [5 + (7 * b) % 19 for b in range(B)]
    eos = alone(model, prompts[:1], 24)[0][6]  # a token the full model emits: some rows stop there
    for kw, m in [({"eos_id": eos}, budgets)] + ([({}, 24)] if B == 5 else []):
        want = alone(model, prompts, m, **kw)
        assert [g.tokens for g in ls.generate(model, prompts, m, **kw)] == want
        for E in (1, L // 2, L - 1):
            got = ls.generate(model, prompts, m, strategy="early_exit", exit_layer=E, **kw)
            assert [g.tokens for g in got] == alone(model, prompts, m, strategy="early_exit", exit_layer=E, **kw)
            for d in (1, 4, 8):
                got = ls.generate(model, prompts, m, strategy="self_speculative", exit_layer=E, num_speculations=d,
                                  **kw)
                assert [g.tokens for g in got] == want, (B, E, d, kw, m)


@pytest.mark.method
def test_rows_that_stop_at_eos_in_drafts_and_as_the_verifier_token():
    """The EOS paths are really exercised in a batch: some rows accept an EOS draft, some stop on the verifier's
    EOS, while other rows of the same batch go on; every row still equals its run alone."""
    model = tiny_model(n_layers=6, seed=3)
    prompts = ragged_prompts(16, seed=7)
    ar = alone(model, prompts, 30)
    eos = max(set(t for r in ar for t in r), key=lambda t: sum(t in r for r in ar))  # in most rows' text
    want = alone(model, prompts, 30, eos_id=eos)
    eos_in_draft = eos_by_verifier = 0
    for E in (1, 2, 3):
        for d in (2, 4, 8):
            rounds = list(ls.generate_stream(model, prompts, 30, Settings(strategy="self_speculative", exit_layer=E,
                                             num_speculations=d, eos_id=eos)))
            got = [[t for r in rounds if r[b] is not None for t in r[b].tokens] for b in range(16)]
            assert got == want
            for r in rounds:
                for e in filter(None, r):
                    eos_in_draft += eos in e.drafted[:e.accepted]
                    eos_by_verifier += e.token == eos
    assert eos_in_draft > 0 and eos_by_verifier > 0
    assert len({len(w) for w in want}) > 3  # rows really finished at different lengths


@pytest.mark.method
def test_stop_rules_and_processors_per_row():
    """The confidence threshold and the cost-model stop act per row (rows draft different numbers of tokens in
    the same round), and the logits processors read each row's own context: rows still equal their runs alone."""
    model = tiny_model(n_layers=6, seed=4)
    prompts = ragged_prompts(5, seed=4)
    for kw in ({"draft_threshold": 0.9}, {"draft_cost": 0.2, "draft_gamma": 0.5},
               {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}):
        spec = dict(strategy="self_speculative", exit_layer=2, num_speculations=8, **kw)
        processors = {k: v for k, v in kw.items() if k in ("repetition_penalty", "no_repeat_ngram_size")}
        want = alone(model, prompts, 30, **processors)
        rounds = list(ls.generate_stream(model, prompts, 30, Settings(**spec)))
        assert [[t for r in rounds if r[b] for t in r[b].tokens] for b in range(5)] == want
        if "draft_threshold" in kw or "draft_cost" in kw:  # rows disagreed on a round's draft length
            assert any(len({len(e.drafted) for e in r if e}) > 1 for r in rounds)


@pytest.mark.method
def test_a_batch_runs_as_one():
    """Counts of work: each round calls every block once for the whole batch (drafting: blocks 0..E-1 once per
    draft step; verification: blocks E..L-1 once), not once per row; finished rows leave the batch."""
    L, E, d, B = 6, 2, 4, 5
    model, prompts = tiny_model(n_layers=L, seed=5), ragged_prompts(B, seed=5)
    with block_inputs(model) as shapes:
        rounds = list(ls.generate_stream(model, prompts, [6, 10, 14, 18, 22],
                                         Settings(strategy="self_speculative", exit_layer=E, num_speculations=d)))
    calls, rows = [len(c) for c in shapes], [shape[0] for shape in shapes[L - 1]]
    per_round_drafts = [max(len(e.drafted) for e in r if e) for r in rounds]
    prefills = sum(len(p) > 1 for p in prompts)  # each prompt but its last token, alone, before the first round
    assert calls[L - 1] == prefills + len(rounds)  # then one verification per round for all rows
    assert calls[0] == prefills + sum(n + 1 for n in per_round_drafts)  # one draft step per draft, + the last's
    assert rows[:prefills] == [1] * prefills
    assert rows[prefills:] == [sum(e is not None for e in r) for r in rounds]  # the batch shrinks as rows finish
    assert rows[prefills] == B and rows[-1] == 1


@pytest.mark.method
def test_a_sampled_row_is_its_own_seeded_stream():
    """Row b with seed s + b draws what prompt b alone draws with that seed (the rows' random streams are apart)."""
    model = tiny_model(n_layers=4, seed=6)
    prompts = ragged_prompts(4, seed=6)
    kw = dict(strategy="self_speculative", exit_layer=2, num_speculations=3, temperature=1.0)
    got = ls.generate(model, prompts, 16, seed=10, **kw)
    assert [g.tokens for g in got] == [ls.generate(model, p, 16, seed=10 + b, **kw).tokens
                                       for b, p in enumerate(prompts)]


@pytest.mark.method
@pytest.mark.parametrize("batch_size", [1, 3])
def test_at_most_batch_size_at_once(batch_size):
    """batch_size B: at most B rows decode at once, a waiting prompt taking each finished row's place (and its
    cache row, mid-flight, beside rows at other positions); every prompt still equals its run alone."""
    model = tiny_model(n_layers=6, seed=8)
    prompts = ragged_prompts(7, seed=8)
    budgets = [3, 17, 6, 25, 0, 9, 14]  # a prompt with no budget gets no tokens
    eos = alone(model, prompts[:1], 20)[0][4]
    want = alone(model, prompts, budgets, eos_id=eos)
    for kw in ({}, dict(strategy="self_speculative", exit_layer=2, num_speculations=4),
               dict(strategy="self_speculative", exit_layer=3, num_speculations=8, draft_cost=0.2)):
        rounds = list(ls.generate_stream(model, prompts, budgets, Settings(eos_id=eos, **kw), batch_size))
        assert max(sum(e is not None for e in r) for r in rounds) == batch_size
        assert [[t for r in rounds if r[b] for t in r[b].tokens] for b in range(7)] == want


def test_shipped_model_float32_batch_of_8_humaneval_prompts():
    """The shipped 32-layer model in float32 at its stored setting: 8 HumanEval prompts decoded as one batch give
    each prompt's own autoregressive tokens (64 new tokens, greedy)."""
    model, tok = load_model(ROOT / "checkpoints/layerskip-python-deep.pt")
    ids = [tok.encode(p) for p in load_prompts("humaneval")[:8]]
    setting = recommended(model)
    got = ls.generate(model, ids, 64, eos_id=tok.stop_ids, **setting)
    assert [g.tokens for g in got] == alone(model, ids, 64, eos_id=tok.stop_ids)
    assert sum(g.rounds for g in got) < sum(len(g.tokens) for g in got) / 2  # drafts really were accepted


# ---------------------------------------------------------------------------------------------------------
# generate.py --prompt_file F.jsonl --batch_size B (a batch's --compare: test_generate.py)


@pytest.mark.parametrize("lines, flags, message", [
    (['"a"', "{not json"], [], "line 2: not JSON"),
    (['"a"', '{"text": "b"}'], [], "line 2: no prompt"),
    (None, ["--batch_size", "2"], "--batch_size decodes several prompts: give them in a .jsonl --prompt_file"),
])
def test_cli_batch_bad_input(lines, flags, message, tmp_path, tiny_checkpoint, capsys):
    argv = ["--checkpoint", tiny_checkpoint, "--max_new_tokens", 2, *flags]
    if lines is not None:
        (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
        argv += ["--prompt_file", tmp_path / "p.jsonl"]
    assert_one_line_error(generate.main, argv, capsys, message)


# ---------------------------------------------------------------------------------------------------------
# bench.py --batch_sizes


def test_bench_batch_sizes_reports_every_batch_size(tiny_checkpoint, tmp_path, capsys):
    """One interleaved run over batch sizes 1 and 3: a row per size with both strategies' tokens/s, identical
    outputs, throughput over batch 1 exactly 1 at batch 1, the draft cost it used; a plot in --out_dir."""
    model, tok = load_model(tiny_checkpoint)
    ckpt = tmp_path / "rec.pt"  # a stored cost rule, to be rescaled per batch size
    save_checkpoint(ckpt, model, tok, metadata={"recommended": {"exit_layer": 2, "num_speculations": 4,
                                                                "draft_cost": 0.3, "draft_gamma": 1.0}})
    bench.main(["--checkpoint", str(ckpt), "--baseline", "", "--prompts", "shakespeare", "--n_prompts", "4",
                "--max_new_tokens", "8", "--repeats", "2", "--batch_sizes", "1", "3", "--out_dir", str(tmp_path),
                "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert "| batch | autoregressive tok/s | self-speculative tok/s | speedup |" in out
    report = json.loads((tmp_path / "b.json").read_text())["batches"]
    assert set(report) == {"1", "3"}
    assert report["1"]["self_speculative_over_batch_1"] == 1.0 and report["1"]["draft_cost"] == 0.3
    assert all(r["identical"] and r["autoregressive_tokens_per_s"] > 0 for r in report.values())
    assert 0 < report["3"]["draft_cost"] <= 1
    assert (tmp_path / "batch.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, match", [
    (["--batch_sizes", "1", "4", "--sweep"], "--batch_sizes is a run of its own"),
    (["--batch_sizes", "1", "64", "--n_prompts", "3"], "--batch_sizes 64 needs at least that many prompts"),
])
def test_bench_batch_sizes_bad_input(argv, match, tiny_checkpoint, capsys):
    assert_one_line_error(bench.main, ["--checkpoint", tiny_checkpoint, "--baseline", "", "--prompts", "shakespeare",
                                       *argv], capsys, match)
