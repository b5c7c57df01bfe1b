"""Tests of train.py: exact resume, data-parallel runs equal to one process, the 1.5B dry run, the schedules, and
what a run writes (checkpoints, a finished run kept unless forced). Bad input: test_train_inputs.py."""

import argparse
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import layerskip as ls
import train
from conftest import ROOT, assert_one_line_error

pytestmark = pytest.mark.cli

TINY = ["--preset", "toy", "--dim", "32", "--n_layers", "4", "--n_heads", "4", "--n_kv_heads", "2",
        "--block_size", "32", "--eval_iters", "2", "--log_interval", "1"]


def run(args, torchrun=False):
    """train.py ARGS as a command (torchrun: 2 gloo ranks); the finished process."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
                                   if torchrun else [])
    def launch():
        return subprocess.run(launcher + [str(a) for a in args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=600)
    proc = launch()
    if torchrun and "terminate called without an active exception" in proc.stderr:
        # A rare abort of a gloo rank (SIGABRT from C++, no Python error; about 1 launch in 40 on our 2-core
        # machines) is not what these tests check: launch once more, and only once.
        proc = launch()
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


def test_resume_continues_exactly(shakespeare, tmp_path, capsys):
    """N steps straight == N/2 steps, stop (ckpt.pt at the step reached, no model.pt, no "done"), --resume for the
    rest with the run's own configuration: identical weights."""
    common = TINY + ["--max_iters", 8, "--eval_interval", 4, "--p_max", 0.3, "--e_scale", 0.5]
    train_here(common + ["--out_dir", tmp_path / "straight"], capsys)
    assert "done:" not in train_here(common + ["--out_dir", tmp_path / "split", "--stop_after", 4], capsys)
    assert torch.load(tmp_path / "split/ckpt.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "split/model.pt").exists()
    assert_one_line_error(train.main, ["--resume", "--out_dir", tmp_path / "split", "--max_iters", 20], capsys,
                          "drop --max_iters")  # a resumed run keeps its own config
    out = train_here(["--resume", "--out_dir", tmp_path / "split"], capsys)
    assert f"resumed {tmp_path / 'split/ckpt.pt'} at step 4" in out
    a, b = weights(tmp_path / "straight/ckpt.pt"), weights(tmp_path / "split/ckpt.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


DDP_LAYERSKIP = TINY + ["--max_iters", 6, "--eval_interval", 6, "--batch_size", 4, "--p_max", 0.5, "--e_scale", 0.5]
RANK_DEPENDENT = """import os, sys
sys.path.insert(0, {root!r})
import layerskip, train
draw = layerskip.layer_dropout_mask
layerskip.layer_dropout_mask = lambda b, p, seed, step, l: draw(b, p, seed + int(os.environ['RANK']), step, l)
train.main()
"""


@pytest.mark.parametrize("rank_dependent", [False, True], ids=["same-draws", "rank-dependent-draws"])
def test_two_rank_ddp_with_layerskip_draws_the_same_skips(shakespeare, tmp_path, rank_dependent):
    """torchrun, 2 gloo ranks, layer dropout + early-exit loss on: both ranks draw the same layer-dropout pattern
    (a digest of every skip decision) and end with identical parameters. The check can fail: seed the mask with the
    rank, and the digests differ and the run stops after its first step (DDP would keep the weights identical
    anyway: it averages the gradients)."""
    script = "train.py"
    if rank_dependent:
        script = tmp_path / "rank_dependent.py"
        script.write_text(RANK_DEPENDENT.format(root=str(ROOT)))
    proc = run([script, *DDP_LAYERSKIP, "--out_dir", tmp_path / "run"], torchrun=True)
    skips = re.search(r"layer-dropout digests by rank: (\w+) (\w+) \((\w+)\)", proc.stdout)
    if rank_dependent:
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
    """Layer dropout off: 2 ranks x batch 4 log the same losses as 1 process x batch 8, with gradient
    accumulation and with FSDP2 too."""
    common = TINY + ["--max_iters", 5, "--eval_interval", 5, "--p_max", 0, "--e_scale", 0.5]
    proc = run(["train.py", *common, *extra, "--batch_size", 4, "--out_dir", tmp_path / "ddp"], torchrun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train_here(common + [a for a in extra if a != "--fsdp"] + ["--batch_size", 8, "--out_dir", tmp_path / "one"],
                     capsys)
    assert len(step_losses(proc.stdout)) == len(step_losses(one)) == 5
    assert step_losses(proc.stdout) == pytest.approx(step_losses(one), abs=2e-4)


def test_missing_data_is_built_on_first_use(tmp_path):
    """A fresh clone has no prepared data: train.py builds the preset's corpus (here a copy of data/shakespeare)
    and trains. (A folder with no prepare.py gets a one-line error instead: test_train_inputs.py.)"""
    corpus = tmp_path / "shakespeare"
    corpus.mkdir()
    for name in ("prepare.py", "input.txt", "__init__.py"):
        (corpus / name).write_bytes((ROOT / "data/shakespeare" / name).read_bytes())
    proc = run(["train.py", "--preset", "toy", "--max_iters", 5, "--eval_interval", 5, "--data", corpus,
                "--out_dir", tmp_path / "run"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is not prepared yet: building it" in proc.stdout
    assert all((corpus / n).exists() for n in ("train.bin", "val.bin", "tokenizer.model", "meta.json"))
    assert (tmp_path / "run/model.pt").exists()


def test_dry_run_of_the_paper_1p5b_shape(capsys):
    """--dry_run of the 1.5B preset (on a machine without CUDA, though it names --device cuda): dim 2048, 16 heads,
    24 layers, context 4096, Llama 2's FFN and vocabulary, 1.3B-1.6B parameters."""
    out = train_here(["--preset", "llama1.5b", "--dry_run"], capsys)
    info = json.loads(out.strip().splitlines()[-1])
    assert (info["dim"], info["n_heads"], info["n_layers"], info["context"]) == (2048, 16, 24, 4096)
    assert info["vocab_size"] == 32000 and info["ffn_hidden"] == 5632
    assert 1.3e9 < info["n_params"] < 1.6e9
    assert "memory per GPU" in out


@pytest.mark.parametrize("tie", [True, False])
def test_size_from_one_block_equals_the_built_model(tie):
    """The parameter count printed before anything is allocated (L blocks + embedding + head + norm, from one block
    on the meta device) equals the built model's, with a tied head and without."""
    cfg = argparse.Namespace(**{**train.DEFAULTS, "dim": 96, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2,
                                "vocab_size": 500, "block_size": 16, "tie_embeddings": tie})
    size = train.size_model(cfg, train.Ranks())  # one process
    model = ls.Transformer(train.model_args(cfg))
    assert size["n_params"] == sum(p.numel() for p in model.parameters())
    assert size["ffn_hidden"] == model.layers[0].feed_forward.w1.out_features == 256  # 2/3 * 4 * 96, multiple of 32


def test_loss_falls_and_the_run_writes_what_it_says(shakespeare, tmp_path, capsys):
    """A few seconds of the toy preset on Shakespeare cut the training loss by more than 1 nat; the validation
    losses are printed by exit E = blocks run, 1..4; the last line names ckpt.pt and model.pt (fp16, no optimizer:
    smaller), both at the last step."""
    out = train_here(["--preset", "toy", "--max_iters", 60, "--eval_interval", 60, "--out_dir", tmp_path], capsys)
    losses = step_losses(out)
    assert losses[0] - losses[-1] > 1.0, losses
    assert re.search(r"^val loss by exit E: 1:[\d.]+ 2:[\d.]+ 3:[\d.]+ 4:[\d.]+$", out, re.M)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"done: {tmp_path / 'ckpt.pt'} (full state) and {tmp_path / 'model.pt'} (fp16 weights")
    assert [torch.load(tmp_path / n, weights_only=True)["step"] for n in ("ckpt.pt", "model.pt")] == [60, 60]
    assert (tmp_path / "model.pt").stat().st_size < (tmp_path / "ckpt.pt").stat().st_size


def test_finished_run_is_kept_unless_forced(shakespeare, tmp_path, capsys):
    """A new run into the --out_dir of a finished one is refused and changes nothing; with --force it replaces the
    run: new weights, and a log.jsonl holding only the new run's evaluation; --resume may not be forced."""
    out, tiny = tmp_path / "run", TINY + ["--batch_size", 4, "--eval_iters", 1, "--max_iters", 1]
    train_here(tiny + ["--out_dir", out], capsys)
    files = {name: (out / name).read_bytes() for name in ("ckpt.pt", "model.pt", "log.jsonl")}
    assert_one_line_error(train.main, tiny + ["--out_dir", out], capsys,
                          f"--out_dir {out} already holds a run (ckpt.pt, model.pt): continue it with --resume")
    assert {name: (out / name).read_bytes() for name in files} == files
    assert_one_line_error(train.main, ["--resume", "--force", "--out_dir", out], capsys, "drop --force")
    (out / "ckpt.pt").unlink()  # model.pt alone is a finished run too
    assert_one_line_error(train.main, tiny + ["--out_dir", out], capsys, "already holds a run (model.pt)")
    train_here(tiny + ["--out_dir", out, "--force", "--seed", 7], capsys)
    first = torch.load(io.BytesIO(files["model.pt"]), weights_only=True)["model"]
    assert not torch.equal(first["tok_embeddings.weight"], weights(out / "model.pt")["tok_embeddings.weight"])
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["seed"] == 7


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, tiny_checkpoint):
    """A stop while a checkpoint is being written leaves the previous checkpoint intact and no temp file."""
    import model_io
    target = tmp_path / "ckpt.pt"
    target.write_bytes(tiny_checkpoint.read_bytes())
    before = target.read_bytes()

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    monkeypatch.setattr(model_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        model_io.atomic_save({"anything": 1}, target)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    model_io.load_checkpoint(target)  # still loads


def test_init_from_continues_with_constant_rates(shakespeare, tmp_path, capsys):
    """--init_from starts from the checkpoint's weights (not from the seed's initialisation) and keeps the
    layer-dropout rates constant (S=1). (Another shape, another tokenizer, a corrupt file: test_train_inputs.py.)"""
    train_here(TINY + ["--max_iters", 2, "--eval_interval", 2, "--out_dir", tmp_path / "a"], capsys)
    out = train_here(TINY + ["--max_iters", 2, "--eval_interval", 2, "--init_from", tmp_path / "a/model.pt",
                             "--p_max", 0.2, "--seed", 5, "--out_dir", tmp_path / "b"], capsys)
    assert "layer dropout p_max=0.2 (S=1)" in out  # continued training: no time schedule on the dropout rates
    start, now = weights(tmp_path / "a/model.pt"), weights(tmp_path / "b/ckpt.pt")
    # two warm-up steps move a weight by ~1e-4; another seed's initialisation differs by ~0.1
    assert (now["tok_embeddings.weight"] - start["tok_embeddings.weight"].float()).abs().max() < 0.01


def test_exit_always_and_its_weight_in_the_schedule():
    """--exit_always E adds exit E (block E-1) to every step's exits with its eq. 6 weight; --exit_always_weight W
    gives it a fixed share W and scales the rest by 1 - W, the fine-tuning scripts' two-exit loss
    (e CE_E + CE_L) / (1 + e) at W = e / (1 + e)."""
    cfg = argparse.Namespace(**{**train.DEFAULTS, "n_layers": 4, "max_iters": 10, "p_max": 0.0, "e_scale": 0.0,
                                "exit_always": 2, "exit_always_weight": 0.5})
    assert train.layerskip_schedule(3, cfg, True)[1] == {3: 0.5, 1: 0.5}  # e = 1: (CE_2 + CE_4) / 2
    cfg.e_scale, cfg.exit_always_weight, cfg.rotation = 1.0, 0.0, 4
    # step 0, R=4: exits {0, 3}; forced exit 2 is block 1: e = [0, 1, 3, 3 + 3] -> {1: 1/7, 3: 6/7}
    assert train.layerskip_schedule(0, cfg, True)[1] == pytest.approx({0: 0.0, 1: 1 / 7, 3: 6 / 7})
    cfg.exit_always_weight = 0.3
    w = train.layerskip_schedule(0, cfg, True)[1]
    assert w == pytest.approx({0: 0.0, 1: 0.3 + 0.7 / 7, 3: 0.7 * 6 / 7}) and sum(w.values()) == pytest.approx(1)
