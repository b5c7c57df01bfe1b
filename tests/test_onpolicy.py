"""Tests of on-policy data for the draft exit: onpolicy.py's batched greedy decoding, the text read back by train.py
(windows, aligned samples) and exit E's loss on it."""

import argparse
import json

import numpy as np
import pytest
import torch

import layerskip as ls
import onpolicy
from conftest import assert_one_line_error
from model_io import load_model
from test_train import TINY, step_losses, tiny_run, train_here, weights  # noqa: F401 (tiny_run: a fixture)

pytestmark = pytest.mark.cli


def test_onpolicy_data_end_to_end(shakespeare, tiny_run, tmp_path, capsys):
    """onpolicy.py writes greedy continuations of training windows, each as decoded alone; train.py fits exit E."""
    ckpt, out = tiny_run / "model.pt", tmp_path / "on.bin"
    onpolicy.main([str(c) for c in ["--checkpoint", ckpt, "--data", shakespeare, "--out", out,
                                    "--samples", 5, "--prefix", 8, "--new_tokens", 12, "--batch", 2]])
    tokens, meta = np.fromfile(out, dtype=np.uint16), json.loads(out.with_suffix(".json").read_text())
    assert (meta["tokens"], meta["samples"], meta["checkpoint"]) == (len(tokens), 5, str(ckpt))
    ends = meta["starts"][1:] + [len(tokens)]  # each sample: 8 real tokens, then 1..12 of the model's (cut at EOS)
    assert len(ends) == 5 and meta["starts"][0] == 0 and all(9 <= b - a <= 20 for a, b in zip(meta["starts"], ends))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["on.bin", "on.json"]  # no temporary file left
    model, tok = load_model(ckpt)
    train_tokens = np.memmap(shakespeare / "train.bin", dtype=np.uint16, mode="r")
    windows = np.lib.stride_tricks.sliding_window_view(train_tokens, 8)
    for a, b in zip(meta["starts"], ends):  # a real window, continued as ls.generate does one prompt, cut after EOS
        assert (windows == tokens[a:a + 8]).all(1).any()
        expect = ls.generate(model, tokens[a:a + 8].tolist(), 12).tokens
        assert tokens[a + 8:b].tolist() == expect[:expect.index(tok.eos_id) + 1 if tok.eos_id in expect else 12]

    common = TINY + ["--max_iters", 3, "--eval_interval", 3, "--init_from", ckpt, "--e_scale", 0, "--exit_always", 2,
                     "--onpolicy_data", out]
    log = train_here(common + ["--out_dir", tmp_path / "b"], capsys)
    assert "exit 2 on-policy" in log and len(step_losses(log)) == 3
    train_here(common + ["--onpolicy_weight", 0, "--out_dir", tmp_path / "c"], capsys)
    with_loss, without = weights(tmp_path / "b/ckpt.pt"), weights(tmp_path / "c/ckpt.pt")
    changed = {k for k in with_loss if not torch.equal(with_loss[k], without[k])}
    # the on-policy loss moved the weights (which blocks it reaches: test_exit_losses_run_only_the_first_blocks)
    assert {"tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.1.feed_forward.w2.weight"} <= changed

    # the levers: whole samples as windows, a distance from the last layer's distribution instead of cross-entropy
    for kind in ("kl", "tvd"):
        log = train_here(common + ["--onpolicy_loss", kind, "--onpolicy_aligned", "--out_dir", tmp_path / kind],
                         capsys)
        assert "exit 2 on-policy" in log and len(step_losses(log)) == 3
    assert not torch.equal(weights(tmp_path / "kl/ckpt.pt")["tok_embeddings.weight"],
                           weights(tmp_path / "tvd/ckpt.pt")["tok_embeddings.weight"])


def test_aligned_windows_hold_one_sample_and_count_its_greedy_tokens_only(tmp_path):
    """--onpolicy_aligned: window i is sample i; targets in the prefix and past the sample's end are -1."""
    tokens = np.arange(100, 125, dtype=np.uint16)  # three samples: 10, 7 and 8 tokens, prefix 4
    data = tmp_path / "on.bin"
    data.with_suffix(".json").write_text(json.dumps({"starts": [0, 10, 17], "prefix": 4}))
    x, y = onpolicy.aligned_samples(argparse.Namespace(onpolicy_data=str(data), block_size=8), tokens)
    assert x[0].tolist() == list(range(100, 108)) and y[0].tolist() == [-1, -1, -1, 104, 105, 106, 107, 108]
    assert x[1].tolist() == list(range(110, 116)) + [0, 0] and y[1].tolist() == [-1, -1, -1, 114, 115, 116, -1, -1]
    assert x[2].tolist() == list(range(117, 124)) + [0] and y[2].tolist() == [-1, -1, -1, 121, 122, 123, 124, -1]


def test_exit_losses_run_only_the_first_blocks(tiny_checkpoint):
    """Exit E's CE (as forward()'s), KL and TV (by hand, from the last layer's p; 0 at exit L) reach blocks < E only."""
    model, _ = load_model(tiny_checkpoint)
    x, y = torch.randint(model.params.vocab_size, (2, 2, 9), generator=torch.Generator().manual_seed(3))
    ce = onpolicy.exit_loss(model, x, y, 2)
    assert torch.allclose(ce, model(x, y, exit_weights={1: 1.0})[1][1], rtol=0, atol=1e-6)
    y = y.clone()
    y[0, :4] = -1
    with torch.no_grad():
        p = torch.softmax(model(x), -1)[y >= 0]
        q = torch.softmax(model.head(model.run_blocks(model.tok_embeddings(x), 0, 2)), -1)[y >= 0]
    kl = onpolicy.distill_loss(model, x, y, 2, "kl")
    assert torch.allclose(kl, (p * (p / q).log()).sum(-1).mean(), atol=1e-5)
    tvd = onpolicy.distill_loss(model, x, y, 2, "tvd")
    assert torch.allclose(tvd, 0.5 * (p - q).abs().sum(-1).mean(), atol=1e-6) and 0 < tvd < 1
    assert onpolicy.distill_loss(model, x, y, 4, "kl").abs() < 1e-5  # exit 4 of 4: the last layer itself
    assert onpolicy.distill_loss(model, x, y, 4, "tvd") < 1e-6
    for loss in (ce, kl):
        model.zero_grad()
        loss.backward()
        assert model.layers[1].attention.wq.weight.grad.abs().sum() > 0
        assert model.layers[2].attention.wq.weight.grad is None and model.layers[3].feed_forward.w2.weight.grad is None


BAD = [  # (flags, what the one line says); {key}: a path made by the test
    (["--checkpoint", "{none}"], "no such file"),
    (["--data", "data/shakespeare"], "another tokenizer than data/shakespeare"),
    (["--data", "{folder}"], "{folder} is not prepared: build it with `python data/prepare.py --input ... --out_dir "
                           "{folder}`"),
    (["--data", "{damaged}"], "{damaged} is damaged (ValueError): rebuild it with"),
    (["--prefix", 200, "--new_tokens", 100], "--prefix 200 + --new_tokens 100 pass the model's context window of 256"),
    (["--out", "{folder}"], "--out {folder} is a folder: give a file name"),
    (["--out", "{out}.json"], "give a .bin name"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(map(str, a)) for a, _ in BAD])
def test_onpolicy_bad_input_is_one_line(shakespeare, tmp_path, capsys, tiny_checkpoint, args, message):
    """Bad files, a model and corpus that do not match, a count out of range: exit 2, one line, nothing written."""
    (tmp_path / "folder").mkdir()
    damaged = tmp_path / "damaged"  # the corpus's tokenizer, and an empty train.bin
    damaged.mkdir()
    (damaged / "tokenizer.model").write_bytes((shakespeare / "tokenizer.model").read_bytes())
    (damaged / "train.bin").write_bytes(b"")
    names = dict(none=tmp_path / "none.pt", folder=tmp_path / "folder", damaged=damaged, out=tmp_path / "out")
    argv = ["--checkpoint", tiny_checkpoint, "--data", shakespeare, "--out", tmp_path / "x.bin"]
    args = [str(a).format(**names) for a in args]
    assert_one_line_error(onpolicy.main, argv + args, capsys, message.format(**names))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "folder"]
