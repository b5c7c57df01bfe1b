"""Tests of train.py: exact resume, data-parallel runs equal to one process, dry runs of presets, the schedules, what a
run writes (checkpoints, a finished run kept unless forced), and bad input as one line (train.py and bench_train.py)."""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench_train
import layerskip as ls
import model_io
import train
from conftest import ROOT, assert_one_line_error
from distributed import Ranks

pytestmark = pytest.mark.cli

SHAKESPEARE = ROOT / "data/shakespeare"
TINY = ["--preset", "toy", "--dim", 32, "--n_layers", 4, "--n_heads", 4, "--n_kv_heads", 2, "--block_size", 32,
        "--eval_iters", 2, "--log_interval", 1]


def torchrun(args):
    """train.py ARGS under torchrun, 2 gloo ranks; the finished process."""
    for _ in range(2):  # a rare gloo abort (SIGABRT from C++, ~1 launch in 40 on 2 cores) is not checked: retry once
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               *map(str, args)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=600)
        if "terminate called without an active exception" not in proc.stderr:
            break
    return proc


def train_here(args, capsys):
    """train.main in this process (no interpreter start-up): its stdout."""
    capsys.readouterr()
    train.main([str(a) for a in args])
    return capsys.readouterr().out


def step_losses(stdout):
    return [float(m) for m in re.findall(r"^step +\d+/\d+ \| loss ([\d.]+)", stdout, re.M)]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def tiny_run(shakespeare, tmp_path_factory):
    """The --out_dir of a finished 2-step TINY run, for the tests that continue one (here and test_onpolicy.py)."""
    out = tmp_path_factory.mktemp("tiny_run")
    train.main([str(a) for a in TINY + ["--max_iters", 2, "--eval_interval", 2, "--out_dir", out]])
    return out


def test_resume_continues_exactly(shakespeare, tmp_path, capsys):
    """N steps straight == N/2 steps, stop (ckpt.pt, no model.pt), --resume with the run's own config: same weights."""
    common = TINY + ["--max_iters", 8, "--eval_interval", 4, "--p_max", 0.3, "--e_scale", 0.5]
    train_here(common + ["--out_dir", tmp_path / "straight"], capsys)
    assert "done:" not in train_here(common + ["--out_dir", tmp_path / "split", "--stop_after", 4], capsys)
    assert not (tmp_path / "split/model.pt").exists()
    assert_one_line_error(train.main, ["--resume", "--out_dir", tmp_path / "split", "--max_iters", 20], capsys,
                          "drop --max_iters")  # a resumed run keeps its own config
    out = train_here(["--resume", "--out_dir", tmp_path / "split"], capsys)
    assert f"resumed {tmp_path / 'split/ckpt.pt'} at step 4" in out
    a, b = weights(tmp_path / "straight/ckpt.pt"), weights(tmp_path / "split/ckpt.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RANK_DEPENDENT = """import os, sys
sys.path.insert(0, {root!r})
import layerskip, train
draw = layerskip.layer_dropout_mask
layerskip.layer_dropout_mask = lambda b, p, seed, step, l: draw(b, p, seed + int(os.environ['RANK']), step, l)
train.main()
"""


@pytest.mark.parametrize("rank_dependent", [False, True], ids=["same-draws", "rank-dependent-draws"])
def test_two_rank_ddp_with_layerskip_draws_the_same_skips(shakespeare, tmp_path, rank_dependent):
    """2 gloo ranks, layer dropout on: same skips (digests) and parameters; a rank-seeded mask stops the run."""
    script = tmp_path / "rank_dependent.py" if rank_dependent else "train.py"
    if rank_dependent:
        script.write_text(RANK_DEPENDENT.format(root=str(ROOT)))
    flags = TINY + ["--max_iters", 6, "--eval_interval", 6, "--batch_size", 4, "--p_max", 0.5, "--e_scale", 0.5]
    proc = torchrun([script, *flags, "--out_dir", tmp_path / "run"])
    skips = re.search(r"layer-dropout digests by rank: (\w+) (\w+) \((\w+)\)", proc.stdout)
    if rank_dependent:  # DDP would keep the weights identical anyway: it averages the gradients
        assert proc.returncode != 0 and skips and skips[3] == "DIFFERENT", proc.stdout[-2000:]
        assert "ranks drew different layer-dropout patterns" in proc.stderr
        assert len(step_losses(proc.stdout)) < 6  # stopped as soon as the draws differed, not at the end
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert skips and skips[1] == skips[2] and skips[3] == "identical", proc.stdout[-2000:]
    digests = re.search(r"parameter digests by rank: (\w+) (\w+) \((\w+)\)", proc.stdout)
    assert digests and digests[1] == digests[2] and digests[3] == "identical", proc.stdout[-2000:]


@pytest.mark.parametrize("extra", [[], ["--grad_accum", 2], ["--grad_accum", 2, "--fsdp"]],
                         ids=["ddp", "ddp-grad-accum", "fsdp-grad-accum"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(shakespeare, tmp_path, capsys, extra):
    """Layer dropout off: 2 ranks x batch 4 log 1 process x batch 8's losses, with grad_accum and FSDP2 too."""
    common = TINY + ["--max_iters", 5, "--eval_interval", 5, "--p_max", 0, "--e_scale", 0.5]
    proc = torchrun(["train.py", *common, *extra, "--batch_size", 4, "--out_dir", tmp_path / "ddp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train_here(common + [a for a in extra if a != "--fsdp"] + ["--batch_size", 8, "--out_dir", tmp_path / "one"],
                     capsys)
    assert len(step_losses(one)) == 5 and step_losses(proc.stdout) == pytest.approx(step_losses(one), abs=2e-4)


@pytest.mark.parametrize("preset, shape, low, high", [
    ("llama1.5b", (24, 2048, 16, 4096, 32000, 5632), 1.3e9, 1.6e9),
    ("python-deep", (32, 128, 4, 256, 2048, 352), 5.5e6, 6.5e6),  # FFN: 2/3 * 4 * 128 = 341, up to a multiple of 32
])
def test_dry_run_sizes_a_preset_without_allocating(capsys, preset, shape, low, high):
    """--dry_run, no CUDA needed: the preset's layers, width, heads, context, vocabulary, FFN width and size."""
    out = train_here(["--preset", preset, "--dry_run"], capsys)
    info = json.loads(out.strip().splitlines()[-1])
    assert tuple(info[k] for k in ("n_layers", "dim", "n_heads", "context", "vocab_size", "ffn_hidden")) == shape
    assert low < info["n_params"] < high and "memory per GPU" in out


@pytest.mark.parametrize("tie", [True, False])
def test_size_counts_the_built_models_parameters(tie):
    """size_model's count (one block on the meta device: nothing allocated) equals the built model's."""
    cfg = argparse.Namespace(**{**train.DEFAULTS, "dim": 96, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2,
                                "vocab_size": 500, "block_size": 16, "tie_embeddings": tie})
    size = train.size_model(cfg, Ranks())  # one process
    model = ls.Transformer(train.model_args(cfg))
    assert size["n_params"] == sum(p.numel() for p in model.parameters())
    assert size["ffn_hidden"] == model.layers[0].feed_forward.w1.out_features == 256  # 2/3 * 4 * 96, multiple of 32


def test_a_fresh_clone_builds_its_data_and_the_loss_falls(tmp_path, capsys):
    """A corpus with a prepare.py and no data (a fresh clone) is built on first use; the toy preset then cuts the loss
    by > 1 nat, prints val losses by exit E, writes ckpt.pt and a smaller model.pt."""
    corpus, run = tmp_path / "shakespeare", tmp_path / "run"
    corpus.mkdir()
    for name in ("prepare.py", "input.txt", "__init__.py"):
        (corpus / name).write_bytes((SHAKESPEARE / name).read_bytes())
    out = train_here(["--preset", "toy", "--max_iters", 60, "--eval_interval", 60, "--data", corpus, "--out_dir", run],
                     capsys)
    assert "is not prepared yet: building it" in out
    losses = step_losses(out)
    assert losses[0] - losses[-1] > 1.0, losses
    assert re.search(r"^val loss by exit E: 1:[\d.]+ 2:[\d.]+ 3:[\d.]+ 4:[\d.]+$", out, re.M)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"done: {run / 'ckpt.pt'} (full state) and {run / 'model.pt'} (fp16 weights")
    assert [torch.load(run / n, weights_only=True)["step"] for n in ("ckpt.pt", "model.pt")] == [60, 60]
    assert (run / "model.pt").stat().st_size < (run / "ckpt.pt").stat().st_size


def test_finished_run_is_kept_unless_forced(tiny_run, tmp_path, capsys):
    """A finished run's --out_dir is refused untouched; --force replaces the run (weights, log)."""
    out, tiny = tmp_path / "run", TINY + ["--max_iters", 2, "--eval_interval", 2, "--seed", 7]
    shutil.copytree(tiny_run, out)
    files = {name: (out / name).read_bytes() for name in ("ckpt.pt", "model.pt", "log.jsonl")}
    assert_one_line_error(train.main, tiny + ["--out_dir", out], capsys,
                          f"--out_dir {out} already holds a run (ckpt.pt, model.pt): continue it with --resume")
    assert {name: (out / name).read_bytes() for name in files} == files
    (out / "ckpt.pt").unlink()  # model.pt alone is a finished run too
    assert_one_line_error(train.main, tiny + ["--out_dir", out], capsys, "already holds a run (model.pt)")
    train_here(tiny + ["--out_dir", out, "--force"], capsys)
    first = torch.load(io.BytesIO(files["model.pt"]), weights_only=True)["model"]
    assert not torch.equal(first["tok_embeddings.weight"], weights(out / "model.pt")["tok_embeddings.weight"])
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["seed"] == 7


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A stop (Ctrl-C) while a checkpoint is being written leaves the previous checkpoint intact and no temp file."""
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"the previous checkpoint")

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        model_io.atomic_save({"anything": 1}, target)
    assert target.read_bytes() == b"the previous checkpoint" and list(tmp_path.iterdir()) == [target]


def test_init_from_continues_with_constant_rates(tiny_run, tmp_path, capsys):
    """--init_from starts from the checkpoint's weights and keeps the layer-dropout rates constant (S=1)."""
    out = train_here(TINY + ["--max_iters", 2, "--eval_interval", 2, "--init_from", tiny_run / "model.pt",
                             "--p_max", 0.2, "--seed", 5, "--out_dir", tmp_path], capsys)
    assert "layer dropout p_max=0.2 (S=1)" in out  # continued training: no time schedule on the dropout rates
    start, now = weights(tiny_run / "model.pt"), weights(tmp_path / "ckpt.pt")
    # two warm-up steps move a weight by ~1e-4; another seed's initialisation differs by ~0.1
    assert (now["tok_embeddings.weight"] - start["tok_embeddings.weight"].float()).abs().max() < 0.01


def test_exit_always_and_its_weight_in_the_schedule():
    """--exit_always E joins every step's exits at its eq. 6 weight; --exit_always_weight W: share W, the rest 1 - W."""
    cfg = argparse.Namespace(**{**train.DEFAULTS, "n_layers": 4, "max_iters": 10, "p_max": 0.0, "e_scale": 0.0,
                                "exit_always": 2, "exit_always_weight": 0.5})
    assert train.layerskip_schedule(3, cfg, True)[1] == {3: 0.5, 1: 0.5}  # e = 1: (CE_2 + CE_4) / 2
    cfg.e_scale, cfg.exit_always_weight, cfg.rotation = 1.0, 0.0, 4
    # step 0, R=4: exits {0, 3}; forced exit 2 is block 1: e = [0, 1, 3, 3 + 3] -> {1: 1/7, 3: 6/7}
    assert train.layerskip_schedule(0, cfg, True)[1] == pytest.approx({0: 0.0, 1: 1 / 7, 3: 6 / 7})
    cfg.exit_always_weight = 0.3  # exit 2's share 0.3; the other exits keep 0.7 of theirs: the sum stays 1
    assert train.layerskip_schedule(0, cfg, True)[1] == pytest.approx({0: 0.0, 1: 0.3 + 0.7 / 7, 3: 0.7 * 6 / 7})


BAD = [  # (flags after TINY, the one line); a case per kind of check (argparse's ranges: common.py's, tested there)
    (["--device", "tpu"], "--device tpu: unknown device: use cpu, cuda, cuda:N or mps"),
    (["--n_heads", 3], "dim 32, n_heads 3, n_kv_heads 2: each head needs a whole, even number of channels"),
    (["--max_iters", 10, "--final_iters", 20], "--final_iters 20 is more than --max_iters 10"),
    (["--exit_always_weight", 0.5], "--exit_always_weight W is the share of one exit: name it with --exit_always E"),
    (["--onpolicy_loss", "kl"], "--onpolicy_loss shapes the loss on --onpolicy_data FILE: give the file too"),
    (["--block_size", 500_000], "val.bin has 95942 tokens, fewer than one training window of 500001"),
    (["--vocab_size", 100], "--vocab_size 100 is smaller than the tokenizer's 4096"),
    (["--dim", 65536, "--n_layers", 1024], "this run needs about"),
    (["--out_dir", "{past}"], "--out_dir {past}: {past} is a file, not a folder"),
    (["--data", "{none}"], "{none}/train.bin is missing: prepare the data"),
    (["--data", "{data}"], "train.bin: not a file of uint16 tokens (ValueError)"),
    (["--init_from", "{ckpt}", "--dim", 48], "dim: 48 here vs 64 in the checkpoint"),
    (["--exit_always", 2, "--onpolicy_data", "{past}"], "holds token ids past the tokenizer"),
    (["--exit_always", 2, "--onpolicy_data", SHAKESPEARE / "val.bin", "--onpolicy_aligned"],
     "needs " + str(SHAKESPEARE / "val.json")),
    (["--resume"], "cannot resume: {out}/ckpt.pt: no such file"),
]


@pytest.mark.parametrize("flags, match", BAD, ids=[" ".join(map(str, a)) for a, _ in BAD])
def test_bad_input_is_one_line_and_creates_nothing(shakespeare, tmp_path, capsys, tiny_checkpoint, flags, match):
    """Each bad value, clash, path or file: exit 2, one line naming it and what to do, nothing created or changed."""
    data = tmp_path / "data"  # a copy of the corpus with an empty train.bin
    data.mkdir()
    for name in ("val.bin", "tokenizer.model", "meta.json"):
        (data / name).write_bytes((SHAKESPEARE / name).read_bytes())
    (data / "train.bin").write_bytes(b"")
    np.full(1000, 65000, dtype=np.uint16).tofile(tmp_path / "past.bin")
    names = dict(data=data, past=tmp_path / "past.bin", none=tmp_path / "none", out=tmp_path / "out",
                 ckpt=tiny_checkpoint)
    before = sorted(tmp_path.rglob("*"))
    small = TINY + ["--data", SHAKESPEARE, "--batch_size", 4, "--eval_iters", 1, "--max_iters", 1]
    out = [] if "--out_dir" in flags else ["--out_dir", tmp_path / "out"]
    flags = [str(f).format(**names) for f in flags]
    assert_one_line_error(train.main, small + flags + out, capsys, match.format(**names))
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    """As a command: --batch_size 0 prints one line (no traceback, no usage block), exits 2, creates no folder."""
    proc = subprocess.run([sys.executable, "train.py", "--batch_size", "0", "--out_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "train.py: error: argument --batch_size: must be 1..65536, got 0 (see --help)\n"
    assert not (tmp_path / "out").exists()


BENCH_TRAIN_BAD = [
    (["--n_kv_heads", 4], "dim 192, n_heads 6, n_kv_heads 4: each head needs"),
    (["--dim", 65536, "--n_heads", 4, "--n_kv_heads", 2, "--n_layers", 1024], "this shape needs about"),
]


@pytest.mark.parametrize("argv, match", BENCH_TRAIN_BAD, ids=[" ".join(map(str, a)) for a, _ in BENCH_TRAIN_BAD])
def test_bench_train_bad_input_is_one_line(capsys, argv, match):
    """bench_train.py: a bad shape, count or memory need is one line and exit 2, before any model is built."""
    assert_one_line_error(bench_train.main, argv, capsys, match)
