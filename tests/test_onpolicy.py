"""Tests of on-policy data for the draft exit: onpolicy.py's batched greedy decoding and train.py's exit loss."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import layerskip as ls
from test_train import TINY, run, step_losses, weights

ROOT = Path(__file__).resolve().parents[1]


def test_batched_greedy_continuations_equal_one_prompt_at_a_time(tiny_checkpoint):
    """All rows decoded together give, row by row, exactly ls.generate's greedy autoregressive tokens."""
    import onpolicy
    model, _ = ls.load_model(tiny_checkpoint)
    prefixes = torch.randint(3, model.params.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    batched = onpolicy.greedy_continuations(model, prefixes, 20)
    for row, out in zip(prefixes.tolist(), batched.tolist()):
        assert out == ls.generate(model, row, 20).tokens


def test_exit_loss_runs_only_the_first_blocks(tiny_checkpoint):
    """train.exit_loss is exit E's cross-entropy, the number forward() reports for that exit, computed with
    blocks 0..E-1 only."""
    import train
    model, _ = ls.load_model(tiny_checkpoint)
    model.eval()
    x = torch.randint(model.params.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(model.params.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    calls = [0] * model.params.n_layers
    for l, block in enumerate(model.layers):
        block.register_forward_hook(lambda *_, l=l: calls.__setitem__(l, calls[l] + 1))
    loss = train.exit_loss(model, x, y, 2)
    assert calls == [1, 1, 0, 0]
    _, per_exit = model(x, y, exit_weights={1: 1.0})
    assert torch.allclose(loss, per_exit[1], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def shakespeare():
    if not (ROOT / "data/shakespeare/train.bin").exists():
        subprocess.run([sys.executable, "data/shakespeare/prepare.py"], cwd=ROOT, check=True, capture_output=True)


def test_onpolicy_data_end_to_end(shakespeare, tmp_path):
    """onpolicy.py writes the model's continuations of training windows; train.py fits exit E to them, logs that
    loss, moves the weights with it, and refuses bad flags and files in one line."""
    run(TINY + ["--max_iters", 2, "--eval_interval", 2, "--out_dir", tmp_path / "a"])
    ckpt, out = tmp_path / "a/model.pt", tmp_path / "on.bin"
    cmd = [sys.executable, "onpolicy.py", "--checkpoint", ckpt, "--data", "data/shakespeare", "--out", out,
           "--samples", 5, "--prefix", 8, "--new_tokens", 12, "--batch", 2]
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    tokens = np.fromfile(out, dtype=np.uint16)
    assert 5 * 9 <= len(tokens) <= 5 * 20  # each sample: 8 real tokens, then 1..12 of the model's (cut at EOS)
    model, tok = ls.load_model(ckpt)
    train_tokens = np.memmap(ROOT / "data/shakespeare/train.bin", dtype=np.uint16, mode="r")
    windows = np.lib.stride_tricks.sliding_window_view(train_tokens, 8)
    assert (windows == tokens[:8]).all(1).any()  # a real window...
    expect = ls.generate(model, tokens[:8].tolist(), 12).tokens
    if tok.eos_id in expect:  # ...continued greedily, cut after an EOS
        expect = expect[:expect.index(tok.eos_id) + 1]
    assert tokens[8:8 + len(expect)].tolist() == expect

    common = TINY + ["--max_iters", 3, "--eval_interval", 3, "--init_from", ckpt, "--e_scale", 0]
    proc = run(common + ["--exit_always", 2, "--onpolicy_data", out, "--out_dir", tmp_path / "b"])
    assert "exit 2 on-policy" in proc.stdout and len(step_losses(proc.stdout)) == 3
    run(common + ["--exit_always", 2, "--onpolicy_data", out, "--onpolicy_weight", 0, "--out_dir", tmp_path / "c"])
    with_loss, without = weights(tmp_path / "b/ckpt.pt"), weights(tmp_path / "c/ckpt.pt")
    changed = {k for k in with_loss if not torch.equal(with_loss[k], without[k])}
    # the on-policy loss moved the weights (which blocks it reaches: test_exit_loss_runs_only_the_first_blocks)
    assert {"tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.1.feed_forward.w2.weight"} <= changed
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01")  # one byte: not uint16 tokens
    for extra, message in [([], "name it with --exit_always E"),
                           (["--exit_always", 2, "--onpolicy_data", tmp_path / "none.bin"], "no such file"),
                           (["--exit_always", 2, "--onpolicy_data", bad], "not a file of uint16 tokens"),
                           (["--onpolicy_weight", 2], "give the file too")]:
        proc = run(common + (extra or ["--onpolicy_data", out]), check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_onpolicy_bad_input_is_one_line(shakespeare, tmp_path, tiny_checkpoint):
    for args, message in [(["--checkpoint", tmp_path / "none.pt"], "no such file"),
                          (["--checkpoint", tiny_checkpoint, "--data", "data/shakespeare"], "another tokenizer"),
                          (["--checkpoint", tiny_checkpoint, "--prefix", 200, "--new_tokens", 100], "context window"),
                          (["--samples", 0], "at least 1")]:
        proc = subprocess.run([sys.executable, "onpolicy.py", *map(str, args), "--out", str(tmp_path / "x.bin")],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
