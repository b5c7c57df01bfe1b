"""Tests of generate.py: every strategy end to end, --compare's verdict, why decoding stopped, the terminal
colours, the default strategy and the recommendation rule, the logits processors, --threads, and one clean line
on stderr with exit code 2 for every bad input."""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import generate
import layerskip as ls
from common import round_pieces
from conftest import assert_one_line_error
from model_io import load_model, save_checkpoint, token_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^(\d+) tokens? in [\d.]+ s: [\d.]+ tokens/s \| acceptance rate (\d+%|n/a) \| "
                     r"([\d.]+) tokens per round \((\d+) rounds?\) \| stopped at (.+)$", re.M)
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
    n, rate, per_round, rounds, stopped = SUMMARY.search(spec.stdout).groups()
    assert int(n) == 40 and rate.endswith("%") and float(per_round) >= 1.0 and stopped == "max_new_tokens (40)"
    assert re.search(r"^autoregressive: 40 tokens in", spec.stdout, re.M)
    speedup = re.search(r"^speedup ([\d.]+)x \(.*\) \| outputs (identical|differ.*)$", spec.stdout, re.M)
    assert speedup and float(speedup[1]) > 0 and speedup[2] == "identical"

    early = run_cli("--checkpoint", spread_checkpoint, "--strategy", "early_exit", "--exit", 1, "--max_new_tokens",
                    12, "--prompt", prompt, "--temperature", 0.8, "--top_k", 50, "--top_p", 0.9, "--seed", 1)
    assert early.returncode == 0, early.stderr
    assert "decoding: early_exit, exit layer 1 of 4, temperature 0.8, top_k 50, top_p 0.9, seed 1 |" in early.stdout
    assert SUMMARY.search(early.stdout).groups()[:2] == ("12", "n/a")

    ar = run_cli("--checkpoint", spread_checkpoint, "--strategy", "autoregressive", "--stream",
                 "--max_new_tokens", 40, "--prompt", prompt)
    assert ar.returncode == 0, ar.stderr
    assert SUMMARY.search(ar.stdout).groups()[:4] == ("40", "n/a", "1.00", "40")
    assert text_block(ar.stdout) == text_block(spec.stdout)  # greedy: the same text, token for token
    assert text_block(ar.stdout).startswith(prompt) and len(text_block(ar.stdout)) > len(prompt) + 10
    for out in (spec, early, ar):
        assert "\033[" not in out.stdout and out.stderr == ""


def test_default_strategy_follows_recommendation(spread_checkpoint, tiny_checkpoint, capsys):
    """No flags: the checkpoint's recommendation, else autoregressive; --exit alone: self_speculative."""
    assert decoding_line(capsys, "--checkpoint", spread_checkpoint) == \
        "self_speculative, exit layer 2 of 4, 3 speculations, greedy"
    assert decoding_line(capsys, "--checkpoint", spread_checkpoint, "--num_speculations", 5) == \
        "self_speculative, exit layer 2 of 4, 5 speculations, greedy"
    assert decoding_line(capsys, "--checkpoint", spread_checkpoint, "--strategy", "early_exit") == \
        "early_exit, exit layer 2 of 4, greedy"
    assert decoding_line(capsys, "--checkpoint", tiny_checkpoint) == "autoregressive, greedy"
    assert decoding_line(capsys, "--checkpoint", tiny_checkpoint, "--exit_layer", 3) == \
        "self_speculative, exit layer 3 of 4, 4 speculations, greedy"
    # a strategy that drafts, and no exit anywhere: L // 4 = 1 (common.decoding_settings, as the demo)
    assert decoding_line(capsys, "--checkpoint", tiny_checkpoint, "--strategy", "early_exit") == \
        "early_exit, exit layer 1 of 4, greedy"
    assert decoding_line(capsys, "--checkpoint", tiny_checkpoint, "--strategy", "self_speculative") == \
        "self_speculative, exit layer 1 of 4, 4 speculations, greedy"


@pytest.fixture(scope="module")
def recommending_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random 4-layer checkpoint recommending exit 3 with d = 2 and draft threshold 0.3 (as bench.py --auto)."""
    torch.manual_seed(0)
    model = ls.Transformer(ls.ModelArgs(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=32,
                                        vocab_size=tiny_tokenizer.vocab_size, max_seq_len=128))
    path = tmp_path_factory.mktemp("rec") / "rec.pt"
    rec = {"exit_layer": 3, "num_speculations": 2, "draft_threshold": 0.3}
    save_checkpoint(path, model, tiny_tokenizer, metadata={"recommended": rec})
    return path


def decoding_line(capsys, *argv):
    """The decoding description of the header line, in-process."""
    generate.main(["--max_new_tokens", "2", "--prompt", "To be", *map(str, argv)])
    return re.search(r"^decoding: (.*?) \|", capsys.readouterr().out, re.M)[1]


def test_recommended_d_and_threshold_apply_only_at_the_recommended_exit(recommending_checkpoint, capsys):
    """A recommendation made for exit 3 sets d and the threshold at exit 3 only; --exit 2 alone means d = 4 and
    no threshold (ls.speculation_settings), and --help says so."""
    ckpt = ("--checkpoint", recommending_checkpoint)
    at_rec = "self_speculative, exit layer 3 of 4, 2 speculations, drafting stops below confidence 0.3, greedy"
    assert decoding_line(capsys, *ckpt) == at_rec
    assert decoding_line(capsys, *ckpt, "--exit", 3) == at_rec
    assert decoding_line(capsys, *ckpt, "--exit", 2) == "self_speculative, exit layer 2 of 4, 4 speculations, greedy"
    assert decoding_line(capsys, *ckpt, "--exit", 3, "--num_speculations", 5) == \
        "self_speculative, exit layer 3 of 4, 5 speculations, greedy"  # the threshold was tuned with d = 2
    assert decoding_line(capsys, *ckpt, "--exit", 2, "--draft_threshold", 0.5) == \
        "self_speculative, exit layer 2 of 4, 4 speculations, drafting stops below confidence 0.5, greedy"
    assert decoding_line(capsys, *ckpt, "--draft_threshold", 0) == \
        "self_speculative, exit layer 3 of 4, 2 speculations, greedy"  # 0 = off, even where one is recommended
    with pytest.raises(SystemExit) as e:
        generate.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "the checkpoint's recommended one if E is its recommended exit layer, else 4" in help_text
    assert "at any other exit the count is 4 and there is no threshold" in help_text


def test_threads_default_to_one_on_cpu(tiny_checkpoint, capsys):
    """--threads N sets torch's CPU threads; without it, CPU decoding uses 1; the header says how many."""
    before, n = torch.get_num_threads(), min(2, os.cpu_count() or 1)  # --threads takes at most the cores there are
    try:
        torch.set_num_threads(2)
        decoding_line(capsys, "--checkpoint", tiny_checkpoint, "--device", "cpu")
        assert torch.get_num_threads() == 1
        generate.main(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--threads", str(n),
                       "--max_new_tokens", "2"])
        assert torch.get_num_threads() == n and f"| cpu float32, {generate.plural(n, 'thread')}\n" in \
            capsys.readouterr().out
        decoding_line(capsys, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--threads", 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_summary_says_it_stopped_at_the_context_window(spread_checkpoint, tiny_tokenizer, capsys):
    """A prompt that leaves room for fewer tokens than asked: the header says how many fit, the summary why it
    stopped; zero new tokens: acceptance rate n/a, not 0%."""
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    n_prompt = len(tiny_tokenizer.encode(prompt))
    room = 128 - n_prompt
    assert 0 < room < 40
    generate.main(["--checkpoint", str(spread_checkpoint), "--prompt", prompt, "--max_new_tokens", "40"])
    out = capsys.readouterr().out
    assert f"prompt {n_prompt} tokens, up to 40 new ({room} fit the context window of 128) |" in out
    n, rate, _, _, stopped = SUMMARY.search(out).groups()
    assert int(n) == room and rate.endswith("%")
    assert stopped == f"the context window of 128 tokens (prompt {n_prompt} + {room} new)"

    generate.main(["--checkpoint", str(spread_checkpoint), "--prompt", "To be", "--max_new_tokens", "0"])
    out = capsys.readouterr().out
    assert "3 speculations" in out and SUMMARY.search(out).groups() == ("0", "n/a", "0.00", "0", "max_new_tokens (0)")


def test_compare_stops_both_runs_at_every_stop_id(spread_checkpoint, capsys, monkeypatch):
    """A tokenizer with two stop ids (as Llama 3's): --compare's autoregressive run and both warm-ups stop on the
    same ids as the chosen strategy, so greedy outputs are identical and end at the stop token."""
    model, tok = load_model(spread_checkpoint)
    prompt = "First Citizen:\n"
    free = ls.generate(model, tok.encode(prompt), 30).tokens  # greedy, no stop ids
    k = next(i for i in range(3, 30) if free[i] not in free[:i] and free[i] != tok.eos_id)
    stops = {tok.eos_id, free[k]}

    def load_with_two_stop_ids(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        tokenizer.stop_ids = set(stops)
        return model, tokenizer

    calls, real_stream = [], ls.generate_stream
    def spy(*args, **kwargs):
        calls.append(kwargs.get("eos_id"))
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(generate, "load_model", load_with_two_stop_ids)
    monkeypatch.setattr(ls, "generate_stream", spy)  # ls.generate decodes through it too
    generate.main(["--checkpoint", str(spread_checkpoint), "--exit", "2", "--num_speculations", "3", "--compare",
                   "--max_new_tokens", "30", "--prompt", prompt])
    out = capsys.readouterr().out
    assert calls == [stops] * 4  # two warm-ups, the chosen strategy, the autoregressive run
    assert SUMMARY.search(out).groups()[0] == str(k + 1)
    assert SUMMARY.search(out).groups()[4] == f"a stop token (id {free[k]})"
    assert re.search(rf"^autoregressive: {k + 1} tokens in", out, re.M)
    assert re.search(r"^speedup [\d.]+x \(.*\) \| outputs identical$", out, re.M)


def test_compare_verdicts(spread_checkpoint, capsys):
    """Sampled outputs differ by design (said so, not reported as a mismatch); a greedy mismatch in reduced
    precision points to near-ties and the float32 guarantee; in float32 it is a plain mismatch."""
    generate.main(["--checkpoint", str(spread_checkpoint), "--exit", "2", "--compare", "--temperature", "0.8",
                   "--seed", "1", "--max_new_tokens", "8", "--prompt", "To be"])
    out = capsys.readouterr().out
    assert re.search(r"^speedup .* \| sampling: outputs differ by design \(the same distribution, other random "
                     r"draws\)$", out, re.M)
    verdict = generate.compare_verdict
    assert verdict([5, 6, 7], [5, 6, 7], 0.0, torch.float32) == "outputs identical"
    assert verdict([5, 6, 7], [5, 8, 7], 0.0, torch.float32) == "outputs differ from token 1 on"
    assert verdict([5, 6, 7], [5, 6], 0.0, torch.float32) == "outputs differ from token 2 on"
    assert verdict([5, 6, 7], [5, 8, 7], 0.0, torch.bfloat16) == ("outputs differ from token 1 on (in bfloat16, "
                                                                  "near-ties can flip greedy choices: identical "
                                                                  "outputs are a float32 guarantee)")
    assert "float16, near-ties" in verdict([5], [6], 0.0, torch.float16)
    assert "by design" in verdict([5], [5], 0.7, torch.float32)


def test_max_seq_len_past_the_trained_context_warns(tiny_checkpoint, capsys):
    """--max_seq_len above the 256 tokens the checkpoint was trained with: one warning line, then decoding."""
    generate.main(["--checkpoint", str(tiny_checkpoint), "--max_seq_len", "1000", "--max_new_tokens", "2"])
    out, err = capsys.readouterr()
    assert err == ("generate.py: warning: --max_seq_len 1000 is past the 256 tokens of context this checkpoint was "
                   "trained with: text past position 256 will likely degrade\n")
    assert "context 1000," in out and SUMMARY.search(out)
    generate.main(["--checkpoint", str(tiny_checkpoint), "--max_seq_len", "200", "--max_new_tokens", "2"])
    out, err = capsys.readouterr()
    assert err == "" and "context 200," in out


def test_round_colours_tell_roles_apart(tiny_tokenizer):
    """Accepted drafts green, rejected struck through (when shown), a correction cyan, a bonus token magenta, each
    run of one kind painted once; without colour, the decoded text; a round without drafts stays plain."""
    tok = tiny_tokenizer
    seq = tok.encode("First Citizen:")
    a, b, c, d = tok.encode(" Before we proceed", bos=False)[:4]
    ta, = token_texts(tok, [a], seq)
    tb, tc = token_texts(tok, [b, c], seq + [a])
    td, = token_texts(tok, [d], seq + [a])
    G, R, C, X = generate.ACCEPTED, generate.REJECTED, generate.CORRECTION, generate.RESET
    pieces = round_pieces(tok, ls.Round(drafted=[a, b, c], accepted=1, token=d), seq)
    assert [k for _, k in pieces] == ["accepted", "rejected", "rejected", "correction"]
    assert generate.round_text(pieces, colour=True, show_rejected=True) == f"{G}{ta}{X}{R}{tb}{tc}{X}{C}{td}{X}"
    assert generate.round_text(pieces, colour=True, show_rejected=False) == f"{G}{ta}{X}{C}{td}{X}"
    assert generate.round_text(pieces, colour=False, show_rejected=False) == \
        tok.decode(seq + [a, d])[len(tok.decode(seq)):]
    tabc = "".join(token_texts(tok, [a, b, c], seq))
    bonus = round_pieces(tok, ls.Round(drafted=[a, b, c], accepted=3, token=d), seq)
    assert generate.round_text(bonus, colour=True, show_rejected=True) == \
        f"{G}{tabc}{X}{generate.BONUS}{token_texts(tok, [d], seq + [a, b, c])[0]}{X}"
    assert len({G, R, C, generate.BONUS}) == 4
    plain = round_pieces(tok, ls.Round([], 0, d), seq)
    assert generate.round_text(plain, colour=True, show_rejected=True) == token_texts(tok, [d], seq)[0]


def test_one_token_one_round_one_speculation_are_singular(tiny_checkpoint, capsys):
    """Counts of one read in the singular: "1 token", "1 round", "1 speculation", "1 thread"."""
    generate.main(["--checkpoint", str(tiny_checkpoint), "--exit", "2", "--num_speculations", "1",
                   "--max_new_tokens", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "decoding: self_speculative, exit layer 2 of 4, 1 speculation, greedy | prompt " in out
    assert "| cpu float32, 1 thread\n" in out
    assert SUMMARY.search(out).groups()[0] == "1" and "1 token in " in out and "(1 round) |" in out


@pytest.mark.parametrize("flag, value, said", [("--repetition_penalty", 1.5, "repetition penalty 1.5"),
                                               ("--no_repeat_ngram_size", 2, "no repeated 2-grams")])
def test_logits_processors_keep_greedy_self_speculative_equal_to_autoregressive(spread_checkpoint, capsys,
                                                                                 monkeypatch, flag, value, said):
    """Each processor reaches generate_stream for the chosen strategy and for --compare's autoregressive run; it
    changes the text (the plain greedy text repeats bigrams, the processed one with n = 2 none), and greedy
    self-speculative output stays identical to autoregressive output under it, as --compare says and as
    layerskip.generate decodes it."""
    model, tok = load_model(spread_checkpoint)
    prompt, kw = "First Citizen:\n", {flag[2:]: value}
    calls, real_stream = [], ls.generate_stream
    monkeypatch.setattr(ls, "generate_stream", lambda *a, **k: calls.append(k) or real_stream(*a, **k))
    argv = ["--checkpoint", str(spread_checkpoint), "--exit", "2", "--num_speculations", "3", "--compare",
            "--max_new_tokens", "40", "--prompt", prompt, flag, str(value)]
    generate.main(argv)
    out = capsys.readouterr().out
    assert f"decoding: self_speculative, exit layer 2 of 4, 3 speculations, greedy, {said} |" in out
    assert re.search(r"^speedup [\d.]+x \(.*\) \| outputs identical$", out, re.M)
    assert len(calls) == 4
    chosen, ar = calls[0], calls[-1]  # the two warm-ups in between
    assert chosen["strategy"] == "self_speculative" and ar.get("strategy", "autoregressive") == "autoregressive"
    assert chosen[flag[2:]] == ar[flag[2:]] == value
    ids = tok.encode(prompt)
    plain = ls.generate(model, ids, 40, eos_id=tok.stop_ids).tokens
    processed = ls.generate(model, ids, 40, eos_id=tok.stop_ids, **kw).tokens

    def continuation(tokens):
        return prompt + tok.decode(ids + tokens)[len(tok.decode(ids)):] + "\n"

    assert processed != plain and text_block(out) == continuation(processed)
    if flag == "--no_repeat_ngram_size":
        def bigrams(tokens):
            return list(zip(ids + tokens, (ids + tokens)[1:]))
        assert len(set(bigrams(plain))) < len(bigrams(plain))
        assert len(set(bigrams(processed))) == len(bigrams(processed))


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
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "model_args"}, d / "no_args.pt")  # marker, no model args
    meta = d / "meta_empty_tokenizer"
    meta.mkdir()
    (meta / "params.json").write_text('{"dim": 32, "n_layers": 2, "n_heads": 4}')
    (meta / "consolidated.00.pth").write_bytes(b"")
    (meta / "tokenizer.model").write_bytes(b"")  # an interrupted download
    hf = d / "hf_bad_index"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, '
                                    '"num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 600}')
    (hf / "tokenizer.model").write_bytes(tiny_tokenizer.model_proto)
    (hf / "model.safetensors.index.json").write_text('{"weight_map": {"model.norm.weight": ')
    (d / "empty.txt").write_text(" \n\n")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))  # text, but not UTF-8
    (d / "zeros.txt").write_bytes(b"\x00" * 64)  # valid UTF-8, and binary
    return d


# name: (arguments, what the one line must say); {d}: bad_files, {ckpt}: the tiny checkpoint (4 layers, no
# recommended exit), {rec}: one that recommends exit 2, {binary}: this Python interpreter (an executable)
BAD_INPUTS = {
    # checkpoints: missing, folders, binary, corrupt, inconsistent
    "missing path": (["--checkpoint", "{d}/nope.pt"], "nope.pt: no such file or directory; give a checkpoint"),
    "unknown layout": (["--checkpoint", "{d}/empty_dir"], "not a model directory of a known layout: expected "
                                                           "params.json"),
    "corrupt file": (["--checkpoint", "{d}/garbage.pt"], "garbage.pt: cannot be read as a checkpoint"),
    "binary checkpoint": (["--checkpoint", "{binary}"], ": cannot be read as a checkpoint"),
    "truncated file": (["--checkpoint", "{d}/truncated.pt"], "it may be truncated or corrupt: re-download or "
                                                              "re-train it"),
    "vocab mismatch": (["--checkpoint", "{d}/small_vocab.pt"], "the tokenizer has 600 tokens but the model embeds "
                                                                "only 100"),
    "checkpoint without model args": (["--checkpoint", "{d}/no_args.pt"], "no_args.pt: a layerskip checkpoint "
                                                                          "without model_args"),
    "empty tokenizer.model": (["--checkpoint", "{d}/meta_empty_tokenizer"], "meta_empty_tokenizer/tokenizer.model: "
                                                                            "the file is empty"),
    "corrupt index": (["--checkpoint", "{d}/hf_bad_index"], "hf_bad_index/model.safetensors.index.json: not valid "
                                                            "JSON"),
    # prompts: empty, too long, files that are missing, folders, binary, not UTF-8, empty
    "empty prompt": (["--checkpoint", "{ckpt}", "--prompt", ""], "--prompt is empty: give some text to continue"),
    "blank prompt": (["--checkpoint", "{ckpt}", "--prompt", " \n "], "--prompt is empty"),
    "prompt too long": (["--checkpoint", "{ckpt}", "--prompt", "to be or not " * 100],
                        r"context window holds 256: use a prompt of at most 255 tokens"),
    "missing prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}/no.txt"],
                            "cannot read --prompt_file {d}/no.txt (No such file or directory)"),
    "prompt file is a folder": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}"],
                                "--prompt_file {d} is a folder: give a text file"),
    "binary prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{binary}"],
                           "--prompt_file {binary} is not a text file (binary or not UTF-8)"),
    "zeros prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}/zeros.txt"], "zeros.txt is not a text "
                                                                                        "file"),
    "latin-1 prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}/latin1.txt"], "latin1.txt is not a "
                                                                                           "text file"),
    "empty prompt file": (["--checkpoint", "{ckpt}", "--prompt_file", "{d}/empty.txt"], "empty.txt is empty"),
    "prompt and prompt file": (["--prompt", "x", "--prompt_file", "{d}/empty.txt"], "not allowed with argument"),
    # numbers: NaN, infinity, zero, negative, huge, wrong type
    "temperature nan": (["--temperature", "nan"], "argument --temperature: must be a finite number >= 0, got nan"),
    "temperature inf": (["--temperature", "inf"], "argument --temperature: must be a finite number >= 0, got inf"),
    "temperature negative": (["--temperature", "-1"], "argument --temperature: must be a finite number >= 0"),
    "temperature underflows": (["--temperature", "1e-40"], "use 0 for greedy decoding or at least 0.001"),
    "temperature word": (["--temperature", "hot"], "argument --temperature: expected a number, got 'hot'"),
    "seed huge": (["--seed", str(10 ** 21)], "argument --seed: must be 0..18446744073709551615, got " + str(10 ** 21)),
    "seed negative": (["--seed", "-1"], "argument --seed: must be 0..18446744073709551615, got -1"),
    "seed fraction": (["--seed", "1.5"], "argument --seed: expected a whole number, got '1.5'"),
    "max_new_tokens negative": (["--max_new_tokens", "-1"], "argument --max_new_tokens: must be at least 0, got -1"),
    "max_new_tokens word": (["--max_new_tokens", "many"], "argument --max_new_tokens: expected a whole number"),
    "exit 0": (["--exit", "0"], "argument --exit/--exit_layer: must be at least 1, got 0"),
    "exit out of range": (["--checkpoint", "{ckpt}", "--exit", "9"], "exit layer 9 is out of range: this model "
                                                                      "has 4 layers, use 1..4"),
    "exit huge": (["--checkpoint", "{ckpt}", "--exit", str(10 ** 30)], "this model has 4 layers, use 1..4"),
    "exit nan": (["--exit", "nan"], "argument --exit/--exit_layer: expected a whole number, got 'nan'"),
    "num_speculations 0": (["--num_speculations", "0"], "argument --num_speculations: must be at least 1, got 0"),
    "threshold above 1": (["--draft_threshold", "2"], "argument --draft_threshold: must be a finite number >= 0 and "
                                                      "<= 1, got 2"),
    "threshold negative": (["--draft_threshold", "-0.1"], "argument --draft_threshold: must be a finite number"),
    "threshold nan": (["--draft_threshold", "nan"], "argument --draft_threshold: must be a finite number"),
    "top_k 0": (["--top_k", "0"], "argument --top_k: must be at least 1, got 0"),
    "top_p 0": (["--top_p", "0"], "argument --top_p: must be a finite number > 0 and <= 1, got 0"),
    "top_p above 1": (["--top_p", "1.5"], "argument --top_p: must be a finite number > 0 and <= 1, got 1.5"),
    "top_p inf": (["--top_p", "inf"], "argument --top_p: must be a finite number"),
    "repetition_penalty 0": (["--repetition_penalty", "0"], "argument --repetition_penalty: must be a finite number "
                                                            ">= 0.01, got 0"),
    "repetition_penalty negative": (["--repetition_penalty", "-1.2"], "argument --repetition_penalty: must be"),
    "repetition_penalty nan": (["--repetition_penalty", "nan"], "argument --repetition_penalty: must be a finite"),
    "repetition_penalty inf": (["--repetition_penalty", "inf"], "argument --repetition_penalty: must be a finite"),
    "repetition_penalty underflows": (["--repetition_penalty", "1e-300"], "must be a finite number >= 0.01"),
    "no_repeat_ngram_size negative": (["--no_repeat_ngram_size", "-1"], "argument --no_repeat_ngram_size: must be "
                                                                        "at least 0, got -1"),
    "no_repeat_ngram_size fraction": (["--no_repeat_ngram_size", "2.5"], "argument --no_repeat_ngram_size: expected "
                                                                         "a whole number, got '2.5'"),
    "max_seq_len 0": (["--max_seq_len", "0"], "argument --max_seq_len: must be 1..1048576, got 0"),
    "max_seq_len huge": (["--max_seq_len", str(10 ** 12)], "argument --max_seq_len: must be 1..1048576"),
    "threads 0": (["--threads", "0"], "argument --threads: must be 1..%d, got 0" % (os.cpu_count() or 1)),
    "threads huge": (["--threads", str(10 ** 9)], "argument --threads: must be 1..%d" % (os.cpu_count() or 1)),
    "unknown flag": (["--checkpoint", "{ckpt}", "--exti", "3"], "unrecognized arguments: --exti 3"),
    "unknown strategy": (["--strategy", "beam"], "argument --strategy: invalid choice: 'beam'"),
    "unknown dtype": (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    "unknown device": (["--checkpoint", "{ckpt}", "--device", "foo"], "--device foo: unknown device: use cpu"),
    "no such GPU": (["--checkpoint", "{ckpt}", "--device", "cuda:99"], "--device cuda:99: "),
    # flags that would do nothing: refused, not ignored
    "exit with autoregressive": (["--checkpoint", "{ckpt}", "--strategy", "autoregressive", "--exit", "4"],
                                 "--exit has no effect with --strategy autoregressive, which runs all 4 layers: drop "
                                 "--exit, or use --strategy self_speculative or early_exit"),
    "compare with autoregressive": (["--checkpoint", "{rec}", "--strategy", "autoregressive", "--compare"],
                                    "with --strategy autoregressive there is nothing to compare; drop --compare"),
    "compare without any exit": (["--checkpoint", "{ckpt}", "--compare"], "--compare needs an exit layer to draft "
                                 "with, and this checkpoint stores no recommended one: add --exit E (1..4)"),
    "d without any exit": (["--checkpoint", "{ckpt}", "--num_speculations", "3"], "--num_speculations needs an "
                                                                                  "exit layer"),
    "d with early exit": (["--checkpoint", "{rec}", "--strategy", "early_exit", "--num_speculations", "3"],
                          "--num_speculations applies to self_speculative decoding only, not to --strategy "
                          "early_exit: drop --num_speculations"),
    "threshold with autoregressive": (["--checkpoint", "{rec}", "--strategy", "autoregressive", "--draft_threshold",
                                       "0.5"], "--draft_threshold applies to self_speculative decoding only"),
    "top_p when greedy": (["--checkpoint", "{rec}", "--top_p", "0.9"], "--top_p applies to sampling only, and "
                                                                       "--temperature 0 is greedy"),
    "top_k when greedy": (["--checkpoint", "{rec}", "--top_k", "5"], "--top_k applies to sampling only"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(case, bad_files, tiny_checkpoint, spread_checkpoint, capsys):
    """Each bad input (in-process): exit code 2, one stderr line naming the flag or file, the problem and the fix
    (`generate.py: error: ...` in a real process), and nothing on stdout (generate_stream checks its arguments
    before the header is printed)."""
    argv, message = BAD_INPUTS[case]
    paths = dict(d=bad_files, ckpt=tiny_checkpoint, rec=spread_checkpoint, binary=sys.executable)
    printed = io.StringIO()

    def main(args):
        with contextlib.redirect_stdout(printed):
            generate.main(args)

    assert_one_line_error(main, [a.format(**paths) for a in argv], capsys, message.format(**paths))
    assert printed.getvalue() == ""


def test_bad_input_in_a_subprocess_has_no_traceback(bad_files):
    """The real process: a truncated checkpoint gives exit code 2 and one line, no Traceback."""
    r = run_cli("--checkpoint", bad_files / "truncated.pt")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "truncated or corrupt" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA GPU")
def test_cuda_without_cuda_in_a_subprocess(tiny_checkpoint):
    """--device cuda where torch has no CUDA: one line that says to use the CPU, exit code 2, no traceback."""
    r = run_cli("--checkpoint", tiny_checkpoint, "--device", "cuda")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA" in r.stderr and "use --device cpu" in r.stderr
