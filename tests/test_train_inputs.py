"""Bad input to train.py and bench_train.py: one line naming the flag and what to do, exit code 2, no traceback,
and nothing created. One table per script, a case per kind of check (argparse's ranges are common.py's, tested
once); in-process (conftest.assert_one_line_error), so each case costs milliseconds."""

import subprocess
import sys

import numpy as np
import pytest

import bench_train
import train
from conftest import ROOT, assert_one_line_error

pytestmark = pytest.mark.cli

SHAKESPEARE = ROOT / "data/shakespeare"
# the toy preset made smaller still: a step takes a few milliseconds
TINY = ["--preset", "toy", "--data", SHAKESPEARE, "--dim", 32, "--n_layers", 4, "--n_heads", 4, "--n_kv_heads", 2,
        "--block_size", 32, "--batch_size", 4, "--eval_iters", 1, "--log_interval", 1, "--max_iters", 1]


def bad_files(tmp):
    """Files and folders for the cases below, made under tmp: {key} -> path."""
    data = tmp / "data"  # a copy of the corpus with an empty train.bin
    data.mkdir()
    for name in ("val.bin", "tokenizer.model", "meta.json"):
        (data / name).write_bytes((SHAKESPEARE / name).read_bytes())
    (data / "train.bin").write_bytes(b"")
    (tmp / "file").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)))  # binary, like /bin/ls
    np.full(1000, 65000, dtype=np.uint16).tofile(tmp / "past.bin")
    return {"{data}": data, "{file}": tmp / "file", "{past}": tmp / "past.bin", "{none}": tmp / "none",
            "{out}": tmp / "out"}


BAD = [  # (flags after TINY, what the one line says); {key}: a path of bad_files, {ckpt}: conftest's tiny_checkpoint
    (["--batch_size", 0], "argument --batch_size: must be 1..65536, got 0"),
    (["--device", "tpu"], "--device tpu: unknown device: use cpu, cuda, cuda:N or mps"),
    (["--n_heads", 3], "--dim 32 is not divisible by --n_heads 3"),
    (["--max_iters", 10, "--final_iters", 20], "--final_iters 20 is more than --max_iters 10"),
    (["--exit_always_weight", 0.5], "--exit_always_weight W is the share of one exit: name it with --exit_always E"),
    (["--onpolicy_loss", "kl"], "--onpolicy_loss shapes the loss on --onpolicy_data FILE: give the file too"),
    (["--block_size", 500_000], "val.bin has 95942 tokens, fewer than one training window of 500001"),
    (["--vocab_size", 100], "--vocab_size 100 is smaller than the tokenizer's 4096"),
    (["--dim", 65536, "--n_layers", 1024], "this run needs about"),
    (["--out_dir", "{file}"], "--out_dir {file}: {file} is a file, not a folder"),
    (["--data", "{none}"], "{none}/train.bin is missing: prepare the data"),
    (["--data", "{data}"], "train.bin: not a file of uint16 tokens (ValueError)"),
    (["--init_from", "{ckpt}", "--dim", 48], "dim: 48 here vs 64 in the checkpoint"),
    (["--init_from", "{ckpt}", "--dim", 64], "uses another tokenizer than"),
    (["--exit_always", 2, "--onpolicy_data", "{past}"], "holds token ids past the tokenizer"),
    (["--exit_always", 2, "--onpolicy_data", SHAKESPEARE / "val.bin", "--onpolicy_aligned"],
     "needs " + str(SHAKESPEARE / "val.json")),
    (["--resume"], "cannot resume: {out}/ckpt.pt: no such file"),
]


@pytest.mark.parametrize("flags, match", BAD, ids=[" ".join(map(str, a)) for a, _ in BAD])
def test_bad_input_is_one_line_and_creates_nothing(shakespeare, tmp_path, capsys, tiny_checkpoint, flags, match):
    """Each bad value, clash of flags, bad path or damaged file: exit 2, one line that names it and what to do,
    and nothing created or changed (no --out_dir left behind)."""
    names = {**bad_files(tmp_path), "{ckpt}": tiny_checkpoint}

    def fill(text):
        for key, path in names.items():
            text = text.replace(key, str(path))
        return text
    before = sorted(tmp_path.rglob("*"))
    out = [] if "--out_dir" in flags else ["--out_dir", tmp_path / "out"]
    assert_one_line_error(train.main, TINY + [fill(str(f)) for f in flags] + out, capsys, fill(match))
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    """As a command: --batch_size 0 prints one line (no traceback, no usage block), exits 2, creates no folder."""
    proc = subprocess.run([sys.executable, "train.py", "--batch_size", "0", "--out_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "train.py: error: argument --batch_size: must be 1..65536, got 0 (see --help)\n"
    assert not (tmp_path / "out").exists()


BENCH_TRAIN_BAD = [
    (["--steps", 0], "argument --steps: must be 1..100000, got 0"),
    (["--n_heads", 5], "--dim 192 / --n_heads 5 must be a whole, even number of channels per head"),
    (["--n_kv_heads", 4], "--n_heads 6 is not a multiple of --n_kv_heads 4"),
    (["--dim", 65536, "--n_heads", 4, "--n_kv_heads", 2, "--n_layers", 1024], "this shape needs about"),
]


@pytest.mark.parametrize("argv, match", BENCH_TRAIN_BAD, ids=[" ".join(map(str, a)) for a, _ in BENCH_TRAIN_BAD])
def test_bench_train_bad_input_is_one_line(capsys, argv, match):
    """bench_train.py: a bad shape, count or memory need is one line and exit 2, before any model is built."""
    assert_one_line_error(bench_train.main, argv, capsys, match)
