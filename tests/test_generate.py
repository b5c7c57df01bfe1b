"""Tests of generate.py: every strategy end to end, --compare's verdict, the terminal colours, the default
strategy, and one clean line on stderr with exit code 2 for every bad input."""

import os
import re
import subprocess
import sys

import pytest
import torch

import generate
import layerskip as ls
from model_io import save_checkpoint, token_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^(\d+) tokens in [\d.]+ s: [\d.]+ tokens/s \| acceptance rate (\d+%|n/a) \| "
                     r"([\d.]+) tokens per round \((\d+) rounds\)$", re.M)
RULE = "-" * 80


@pytest.fixture(scope="module")
def spread_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random 4-layer checkpoint whose logits are spread out (greedy choices far from ties, so float32
    self-speculative and autoregressive decoding agree), recommending exit 2 and 3 speculations."""
    torch.manual_seed(0)
    args = ls.ModelArgs(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=tiny_tokenizer.vocab_size,
                        multiple_of=32, max_seq_len=128)
    model = ls.Transformer(args)
    with torch.no_grad():
        model.output.weight.mul_(4)
        for layer in model.layers:
            layer.attention.wo.weight.mul_(8)
            layer.feed_forward.w2.weight.mul_(8)
    path = tmp_path_factory.mktemp("spread") / "spread.pt"
    save_checkpoint(path, model, tiny_tokenizer, metadata={"recommended": {"exit_layer": 2, "num_speculations": 3}})
    return path


def run_cli(*argv):
    """generate.py in a subprocess, stdout not a terminal."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "generate.py", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def text_block(stdout):
    """The generated text: what stands between the two rules."""
    return stdout.split(RULE + "\n")[1]


def test_cli_self_speculative_compare_and_other_strategies(spread_checkpoint):
    """All 3 strategies run; --compare says greedy outputs identical; piped text is plain."""
    prompt = "First Citizen:\n"
    spec = run_cli("--checkpoint", spread_checkpoint, "--exit", 2, "--num_speculations", 3, "--compare",
                   "--max_new_tokens", 40, "--prompt", prompt)
    assert spec.returncode == 0, spec.stderr
    assert "decoding: self_speculative, exit layer 2 of 4, 3 speculations, greedy" in spec.stdout
    n, rate, per_round, rounds = SUMMARY.search(spec.stdout).groups()
    assert int(n) == 40 and rate.endswith("%") and float(per_round) >= 1.0
    assert re.search(r"^autoregressive: 40 tokens in", spec.stdout, re.M)
    speedup = re.search(r"^speedup ([\d.]+)x \(.*\) \| outputs (identical|differ.*)$", spec.stdout, re.M)
    assert speedup and float(speedup[1]) > 0 and speedup[2] == "identical"

    early = run_cli("--checkpoint", spread_checkpoint, "--strategy", "early_exit", "--exit", 1, "--max_new_tokens",
                    12, "--prompt", prompt, "--temperature", 0.8, "--top_k", 50, "--top_p", 0.9, "--seed", 1)
    assert early.returncode == 0, early.stderr
    assert "decoding: early_exit, exit layer 1 of 4, temperature 0.8" in early.stdout
    assert SUMMARY.search(early.stdout).groups()[:2] == ("12", "n/a")

    ar = run_cli("--checkpoint", spread_checkpoint, "--strategy", "autoregressive", "--stream",
                 "--max_new_tokens", 40, "--prompt", prompt)
    assert ar.returncode == 0, ar.stderr
    assert SUMMARY.search(ar.stdout).groups() == ("40", "n/a", "1.00", "40")
    assert text_block(ar.stdout) == text_block(spec.stdout)  # greedy: the same text, token for token
    assert text_block(ar.stdout).startswith(prompt) and len(text_block(ar.stdout)) > len(prompt) + 10
    for out in (spec, early, ar):
        assert "\033[" not in out.stdout and out.stderr == ""


def test_default_strategy_follows_recommendation(spread_checkpoint, tiny_checkpoint, capsys):
    """No flags: the checkpoint's recommendation, else autoregressive; --exit alone: self_speculative."""
    def decoding_line(*argv):
        generate.main(["--max_new_tokens", "4", "--prompt", "To be", *map(str, argv)])
        return re.search(r"^decoding: (.*?) \|", capsys.readouterr().out, re.M)[1]

    assert decoding_line("--checkpoint", spread_checkpoint) == \
        "self_speculative, exit layer 2 of 4, 3 speculations, greedy"
    assert decoding_line("--checkpoint", spread_checkpoint, "--num_speculations", 5) == \
        "self_speculative, exit layer 2 of 4, 5 speculations, greedy"
    assert decoding_line("--checkpoint", spread_checkpoint, "--strategy", "early_exit") == \
        "early_exit, exit layer 2 of 4, greedy"
    assert decoding_line("--checkpoint", tiny_checkpoint) == "autoregressive, greedy"
    assert decoding_line("--checkpoint", tiny_checkpoint, "--exit_layer", 3) == \
        "self_speculative, exit layer 3 of 4, 4 speculations, greedy"


def test_round_colours_tell_roles_apart(tiny_tokenizer):
    """Accepted drafts green, rejected struck through (when shown), verifier cyan; plain = decoded text."""
    tok = tiny_tokenizer
    seq = tok.encode("First Citizen:")
    a, b, c, d = tok.encode(" Before we proceed", bos=False)[:4]
    event = ls.Round(drafted=[a, b, c], accepted=1, token=d)
    ta, = token_texts(tok, [a], seq)
    tb, tc = token_texts(tok, [b, c], seq + [a])
    td, = token_texts(tok, [d], seq + [a])
    G, R, V, X = generate.ACCEPTED, generate.REJECTED, generate.VERIFIER, generate.RESET
    assert generate.round_text(event, seq, tok, colour=True, show_rejected=True) == \
        f"{G}{ta}{X}{R}{tb}{tc}{X}{V}{td}{X}"
    assert generate.round_text(event, seq, tok, colour=True, show_rejected=False) == f"{G}{ta}{X}{V}{td}{X}"
    assert generate.round_text(event, seq, tok, colour=False, show_rejected=False) == \
        tok.decode(seq + [a, d])[len(tok.decode(seq)):]
    assert generate.round_text(ls.Round([], 0, d), seq, tok, colour=True, show_rejected=True) == td  # AR: plain


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the problem and the fix, exit code 2, no traceback


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_checkpoint, tiny_tokenizer):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty_dir").mkdir()
    (d / "garbage.pt").write_bytes(os.urandom(4096))
    data = tiny_checkpoint.read_bytes()
    (d / "truncated.pt").write_bytes(data[:len(data) // 2])
    torch.manual_seed(0)
    small = ls.Transformer(ls.ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=100, multiple_of=16, max_seq_len=64))
    save_checkpoint(d / "small_vocab.pt", small, tiny_tokenizer)  # a 600-token tokenizer, 100 embeddings
    return d


BAD_INPUTS = {  # name: (arguments, what the one line must say)
    "missing path": (["--checkpoint", "{d}/nope.pt"], "nope.pt: no such file or directory; give a checkpoint"),
    "unknown layout": (["--checkpoint", "{d}/empty_dir"], "not a model directory of a known layout: expected "
                                                           "params.json"),
    "corrupt file": (["--checkpoint", "{d}/garbage.pt"], "garbage.pt: cannot be read as a checkpoint"),
    "truncated file": (["--checkpoint", "{d}/truncated.pt"], "it may be truncated or corrupt: re-download or "
                                                              "re-train it"),
    "vocab mismatch": (["--checkpoint", "{d}/small_vocab.pt"], "the tokenizer has 600 tokens but the model embeds "
                                                                "only 100"),
    "exit out of range": (["--checkpoint", "{ckpt}", "--exit", "9"], "exit layer 9 is out of range: this model "
                                                                      "has 4 layers, use 1..4"),
    "prompt too long": (["--checkpoint", "{ckpt}", "--prompt", "to be or not " * 100],
                        r"context window holds 256: use a prompt of at most 255 tokens"),
    "early exit without exit": (["--checkpoint", "{ckpt}", "--strategy", "early_exit"], "add --exit E"),
    "missing prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}/no.txt"], "cannot read --prompt_file"),
    "unknown flag": (["--checkpoint", "{ckpt}", "--exti", "3"], "unrecognized arguments: --exti 3"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(case, bad_files, tiny_checkpoint, capsys):
    """Each bad input (in-process): exit code 2, nothing on stdout, one stderr line naming problem and fix."""
    argv, message = BAD_INPUTS[case]
    argv = [a.format(d=bad_files, ckpt=tiny_checkpoint) for a in argv]
    with pytest.raises(SystemExit) as e:
        generate.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("generate.py: error: ") and message in err


def test_bad_input_in_a_subprocess_has_no_traceback(bad_files):
    """The real process: a truncated checkpoint gives exit code 2 and one line, no Traceback."""
    r = run_cli("--checkpoint", bad_files / "truncated.pt")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "truncated or corrupt" in r.stderr
