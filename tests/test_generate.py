"""generate.py end to end, in-process: every strategy, the decoding setting the flags resolve to, --compare (one
prompt and a batch), why decoding stopped, the colours, the logits processors, and one table of bad input."""

import contextlib
import io
import json
import re
import sys

import pytest
import torch

import generate
import layerskip as ls
from common import round_pieces
from conftest import assert_one_line_error, tiny_model
from model_io import load_model, save_checkpoint, token_texts
from settings import RANGES, Settings

pytestmark = pytest.mark.cli

SUMMARY = re.compile(r"^(\d+) tokens? in [\d.]+ s: [\d.]+ tokens/s \| acceptance rate (\d+%|n/a) \| "
                     r"([\d.]+) tokens per round \((\d+) rounds?\) \| stopped at (.+)$", re.M)
IDENTICAL = re.compile(r"^speedup [\d.]+x \(.*\) \| outputs identical$", re.M)
PROMPT = "First Citizen:\n"


@pytest.fixture(scope="module")
def rec(tmp_path_factory, tiny_tokenizer):
    """A 4-layer float32 checkpoint (greedy far from ties) storing a setting as bench.py --auto does."""
    model = tiny_model(vocab_size=tiny_tokenizer.vocab_size, dim=64, max_seq_len=128, dtype=torch.float32)
    path = tmp_path_factory.mktemp("rec") / "rec.pt"
    stored = {"exit_layer": 2, "num_speculations": 3, "draft_threshold": 0.3}
    save_checkpoint(path, model, tiny_tokenizer, metadata={"recommended": stored})
    return path


def run(capsys, *argv) -> str:
    """generate.main(argv) in-process; its stdout (not a terminal: plain text)."""
    generate.main([str(a) for a in argv])
    return capsys.readouterr().out


def text_block(out):
    """The generated text: what stands between the two rules."""
    return out.split("-" * 80 + "\n")[1]


def test_every_strategy_end_to_end(rec, capsys):
    """--compare: greedy outputs identical, early exit's differ by design; --stream writes the same text; no colour."""
    spec = run(capsys, "--checkpoint", rec, "--exit", 2, "--num_speculations", 3, "--compare", "--max_new_tokens", 40,
               "--prompt", PROMPT)
    n, rate, per_round, _, stopped = SUMMARY.search(spec).groups()
    assert (n, stopped) == ("40", "max_new_tokens (40)") and rate.endswith("%") and float(per_round) >= 1
    assert re.search(r"^autoregressive: 40 tokens in", spec, re.M) and IDENTICAL.search(spec)
    early = run(capsys, "--checkpoint", rec, "--strategy", "early_exit", "--exit", 1, "--max_new_tokens", 12,
                "--prompt", PROMPT, "--temperature", 0.8, "--seed", 1, "--compare")
    assert SUMMARY.search(early).groups()[:2] == ("12", "n/a")
    assert "| early exit: outputs differ by design (exit E is a smaller model than the full one)\n" in early
    ar = run(capsys, "--checkpoint", rec, "--strategy", "autoregressive", "--stream", "--max_new_tokens", 40,
             "--prompt", PROMPT)
    assert SUMMARY.search(ar).groups()[:4] == ("40", "n/a", "1.00", "40")
    assert text_block(ar) == text_block(spec) and len(text_block(ar)) > len(PROMPT) + 10
    assert "\033[" not in spec + early + ar


STORED = "self_speculative, exit layer 2 of 4, 3 speculations, drafting stops below confidence 0.3, greedy"
SETTINGS = [  # (checkpoint, flags, the header's "decoding:" words); rec stores a setting, plain none
    ("rec", [], STORED),
    ("rec", ["--strategy", "self_speculative"], STORED),
    ("rec", ["--exit", 2], "self_speculative, exit layer 2 of 4, 4 speculations, greedy"),  # all or nothing
    ("rec", ["--num_speculations", 5], "self_speculative, exit layer 1 of 4, 5 speculations, greedy"),
    ("rec", ["--exit", 3, "--draft_cost", 0.2],
     "self_speculative, exit layer 3 of 4, 4 speculations, drafting stops by the cost model (draft cost 0.2, "
     "gamma 1.0), greedy"),
    ("rec", ["--strategy", "early_exit"], "early_exit, exit layer 1 of 4, greedy"),  # L // 4
    ("plain", [], "autoregressive, greedy"),
    ("plain", ["--exit_layer", 3], "self_speculative, exit layer 3 of 4, 4 speculations, greedy"),
    ("plain", ["--strategy", "self_speculative"], "self_speculative, exit layer 1 of 4, 4 speculations, greedy"),
    ("plain", ["--temperature", 0.8, "--top_k", 50, "--top_p", 0.9, "--seed", 1, "--repetition_penalty", 1.2,
               "--no_repeat_ngram_size", 3], "autoregressive, temperature 0.8, top_k 50, top_p 0.9, seed 1, "
                                             "repetition penalty 1.2, no repeated 3-grams"),
]


@pytest.mark.parametrize("checkpoint, flags, said", SETTINGS)
def test_the_flags_resolve_to_one_setting(rec, tiny_checkpoint, capsys, checkpoint, flags, said):
    """The stored setting applies when no drafting flag is given; otherwise the flags and the defaults."""
    path = rec if checkpoint == "rec" else tiny_checkpoint
    out = run(capsys, "--checkpoint", path, "--max_new_tokens", 2, "--prompt", "To be", *flags)
    assert re.search(r"^decoding: (.*?) \|", out, re.M)[1] == said


def test_threads_context_warning_and_counts_of_one(tiny_checkpoint, capsys):
    """One CPU thread unless --threads; a --max_seq_len past the trained context warns; "1 token", "1 round"."""
    torch.set_num_threads(2)  # conftest's autouse fixture restores the count after the test
    out = run(capsys, "--checkpoint", tiny_checkpoint, "--exit", 2, "--num_speculations", 1, "--max_new_tokens", 1)
    assert torch.get_num_threads() == 1 and "| cpu float32, 1 thread\n" in out
    assert "exit layer 2 of 4, 1 speculation, greedy |" in out and "1 token in " in out and "(1 round) |" in out
    generate.main(["--checkpoint", str(tiny_checkpoint), "--threads", "2", "--max_seq_len", "1000",
                   "--max_new_tokens", "2"])
    out, err = capsys.readouterr()
    assert torch.get_num_threads() == 2 and "context 1000," in out and SUMMARY.search(out)
    assert err == ("generate.py: warning: --max_seq_len 1000 is past the 256 tokens of context this checkpoint "
                   "was trained with: text past position 256 will likely degrade\n")
    generate.main(["--checkpoint", str(tiny_checkpoint), "--max_seq_len", "200", "--max_new_tokens", "2"])
    assert capsys.readouterr().err == ""


def test_the_summary_says_why_decoding_stopped(rec, tiny_tokenizer, capsys):
    """The header says how many tokens fit, the summary that the context window stopped; 0 tokens: rate n/a."""
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    n_prompt = len(tiny_tokenizer.encode(prompt))
    room = 128 - n_prompt  # fewer than 40
    out = run(capsys, "--checkpoint", rec, "--prompt", prompt, "--max_new_tokens", 40)
    assert f"prompt {n_prompt} tokens, up to 40 new ({room} fit the context window of 128) |" in out
    assert SUMMARY.search(out).groups()[::4] == (str(room), f"the context window of 128 tokens (prompt {n_prompt} + "
                                                             f"{room} new)")
    out = run(capsys, "--checkpoint", rec, "--prompt", "To be", "--max_new_tokens", 0)
    assert SUMMARY.search(out).groups() == ("0", "n/a", "0.00", "0", "max_new_tokens (0)")


def test_compare_stops_both_runs_at_every_stop_id(rec, capsys, monkeypatch):
    """With two stop ids (as Llama 3's), both --compare runs stop at the same one: greedy outputs identical."""
    model, tok = load_model(rec)
    free = ls.generate(model, tok.encode(PROMPT), 30).tokens  # greedy, no stop ids
    k = next(i for i in range(3, 30) if free[i] not in free[:i] and free[i] != tok.eos_id)

    def load_with_two_stop_ids(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        tokenizer.stop_ids = {tok.eos_id, free[k]}
        return model, tokenizer

    monkeypatch.setattr(generate, "load_model", load_with_two_stop_ids)
    out = run(capsys, "--checkpoint", rec, "--exit", 2, "--compare", "--max_new_tokens", 30, "--prompt", PROMPT)
    assert SUMMARY.search(out).groups()[::4] == (str(k + 1), f"a stop token (id {free[k]})")
    assert re.search(rf"^autoregressive: {k + 1} tokens in", out, re.M) and IDENTICAL.search(out)


def test_compare_verdicts(rec, capsys):
    """Sampled outputs differ by design; where greedy outputs part, in reduced precision the verdict points to
    near-ties, in float32 it does not."""
    out = run(capsys, "--checkpoint", rec, "--exit", 2, "--compare", "--temperature", 0.8, "--seed", 1,
              "--max_new_tokens", 8)
    assert re.search(r"^speedup .* \| sampling: outputs differ by design \(the same distribution, other random "
                     r"draws\)$", out, re.M)
    verdict, s = generate.compare_verdict, Settings("self_speculative", 2, 3)
    assert verdict([5, 6, 7], [5, 6, 7], s, torch.float32) == "outputs identical"
    assert verdict([5, 6, 7], [5, 8, 7], s, torch.float32) == "outputs differ from token 1 on"
    assert verdict([5, 6, 7], [5, 6], s, torch.float32) == "outputs differ from token 2 on"
    assert verdict([5, 6, 7], [5, 8, 7], s, torch.bfloat16) == (
        "outputs differ from token 1 on (in bfloat16, near-ties can flip greedy choices: identical outputs are a "
        "float32 guarantee)")


def test_a_batch_of_prompts_compares_row_by_row(rec, tmp_path, capsys):
    """A .jsonl prompt file decodes in batches, each row as decoded alone, each --compare row identical."""
    prompts = [PROMPT, "To be, or not", "ROMEO:\n", "Speak, speak."]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p if i % 2 else {"prompt": p}) for i, p in
                                                enumerate(prompts)) + "\n\n")
    out = run(capsys, "--checkpoint", rec, "--prompt_file", tmp_path / "p.jsonl", "--batch_size", 3, "--compare",
              "--max_new_tokens", 16)
    assert "batch: 4 prompts, at most 3 decoded at once" in out and "4 of 4 rows identical" in out
    rows = re.findall(r"-{30} prompt \d of 4 -{30}\n(.*?)\n\[", out, re.S)
    for prompt, row in zip(prompts, rows, strict=True):
        alone = run(capsys, "--checkpoint", rec, "--prompt", prompt, "--max_new_tokens", 16)
        assert text_block(alone) == row + "\n"


def test_round_colours_tell_roles_apart(tiny_tokenizer):
    """Accepted, rejected, correction and bonus tokens in four colours, each run painted once; else plain text."""
    tok, seq = tiny_tokenizer, tiny_tokenizer.encode("First Citizen:")
    a, b, c, d = tok.encode(" Before we proceed", bos=False)[:4]
    ta, tb, tc = token_texts(tok, [a, b, c], seq)
    td, = token_texts(tok, [d], seq + [a])
    G, R, C, B, X = generate.ACCEPTED, generate.REJECTED, generate.CORRECTION, generate.BONUS, generate.RESET
    assert len({G, R, C, B}) == 4
    pieces = round_pieces(tok, ls.Round(drafted=[a, b, c], accepted=1, token=d), seq)
    assert generate.round_text(pieces, colour=True, show_rejected=True) == f"{G}{ta}{X}{R}{tb}{tc}{X}{C}{td}{X}"
    assert generate.round_text(pieces, colour=True, show_rejected=False) == f"{G}{ta}{X}{C}{td}{X}"
    assert generate.round_text(pieces, colour=False, show_rejected=False) == ta + td
    bonus = round_pieces(tok, ls.Round(drafted=[a, b, c], accepted=3, token=d), seq)
    assert generate.round_text(bonus, colour=True, show_rejected=True) == \
        f"{G}{ta}{tb}{tc}{X}{B}{token_texts(tok, [d], seq + [a, b, c])[0]}{X}"
    plain = round_pieces(tok, ls.Round([], 0, d), seq)
    assert generate.round_text(plain, colour=True, show_rejected=True) == token_texts(tok, [d], seq)[0]


def test_logits_processors_keep_greedy_self_speculative_equal_to_autoregressive(rec, capsys):
    """The flags reach the decoder (the text is ls.generate's with both processors); --compare finds it identical."""
    model, tok = load_model(rec)
    ids, processors = tok.encode(PROMPT), dict(repetition_penalty=1.2, no_repeat_ngram_size=2)
    plain = ls.generate(model, ids, 40, eos_id=tok.stop_ids).tokens
    processed = ls.generate(model, ids, 40, eos_id=tok.stop_ids, **processors).tokens
    alone = [ls.generate(model, ids, 40, eos_id=tok.stop_ids, **{k: v}).tokens for k, v in processors.items()]
    out = run(capsys, "--checkpoint", rec, "--exit", 2, "--num_speculations", 3, "--compare", "--max_new_tokens", 40,
              "--prompt", PROMPT, "--repetition_penalty", 1.2, "--no_repeat_ngram_size", 2)
    assert processed != plain and processed not in alone and IDENTICAL.search(out)  # each processor bites
    assert text_block(out) == PROMPT + tok.decode(ids + processed)[len(tok.decode(ids)):] + "\n"


# ---------------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr naming the problem and the fix, nothing on stdout

BAD = [  # (flags, what the line says); {d}: an empty folder, {plain}: no stored setting, {rec}: one stored
    (["--checkpoint", "{d}/nope.pt"], "nope.pt: no such file or directory; give a checkpoint"),
    (["--checkpoint", "{plain}", "--prompt", " \n "], "--prompt is empty: give some text to continue"),
    (["--checkpoint", "{plain}", "--prompt", "to be or not " * 100], "give 1 to 255 (the context window holds 256)"),
    (["--checkpoint", "{plain}", "--prompt_file", sys.executable], "is not a text file (binary or not UTF-8)"),
    (["--temperature", "1e-40"], f"argument --temperature: temperature must be {RANGES['temperature'].span()}"),
    (["--checkpoint", "{plain}", "--exit", "9"], "exit layer 9 is out of range: this model has 4 layers, use 1..4"),
    (["--checkpoint", "{plain}", "--strategy", "autoregressive", "--exit", "4"],
     "--exit has no effect with --strategy autoregressive, which runs all 4 layers"),
    (["--checkpoint", "{plain}", "--compare"], "--compare needs an exit layer to draft with, and this checkpoint "
                                               "stores no setting: add --exit E (1..4)"),
    (["--checkpoint", "{rec}", "--top_p", "0.9"], "--top_p applies to sampling only, and --temperature 0 is greedy"),
    (["--checkpoint", "{plain}", "--device", "cuda:99"], "--device cuda:99: "),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_is_one_line(tmp_path, tiny_checkpoint, rec, capsys, flags, message):
    paths = dict(d=tmp_path, plain=tiny_checkpoint, rec=rec)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert_one_line_error(generate.main, [a.format(**paths) for a in flags], capsys, message)
    assert printed.getvalue() == ""
