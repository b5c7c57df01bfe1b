"""Bad input to train.py and bench_train.py: one line naming the flag and what to do, exit code 2, no traceback,
and nothing created. A finished run is never overwritten without --force, and a run writes what it says it wrote.
In-process (conftest.assert_one_line_error), so each case costs milliseconds."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench_train
import train
from conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "data/shakespeare"
# the toy preset made smaller still: a step takes a few milliseconds
TINY = ["--preset", "toy", "--data", SHAKESPEARE, "--dim", 32, "--n_layers", 4, "--n_heads", 4, "--n_kv_heads", 2,
        "--block_size", 32, "--batch_size", 4, "--eval_iters", 1, "--log_interval", 1, "--max_iters", 1]
FLOAT_FLAGS = ["--lr", "--p_max", "--e_scale", "--exit_always_weight", "--final_e_scale", "--onpolicy_weight"]


@pytest.fixture(scope="module", autouse=True)
def shakespeare():
    """The shipped Shakespeare text, tokenized (about a second; the bins are not committed)."""
    if not (SHAKESPEARE / "train.bin").exists():
        subprocess.run([sys.executable, "data/shakespeare/prepare.py"], cwd=ROOT, check=True, capture_output=True)


BAD_VALUES = [
    # counts: zero, negative, not whole, huge
    (["--batch_size", 0], "argument --batch_size: must be 1..65536, got 0"),
    (["--batch_size", -4], "argument --batch_size: must be 1..65536, got -4"),
    (["--batch_size", 2.5], "argument --batch_size: expected a whole number, got '2.5'"),
    (["--batch_size", 10**9], "argument --batch_size: must be 1..65536, got 1000000000"),
    (["--grad_accum", 0], "argument --grad_accum: must be 1..65536, got 0"),
    (["--max_iters", -1], "argument --max_iters: must be 1..1000000000, got -1"),
    (["--max_iters", 0], "argument --max_iters: must be 1..1000000000, got 0"),
    (["--max_iters", "ten"], "argument --max_iters: expected a whole number, got 'ten'"),
    (["--max_iters", 10**12], "argument --max_iters: must be 1..1000000000"),
    (["--eval_interval", 0], "argument --eval_interval: must be at least 1, got 0"),
    (["--eval_iters", 0], "argument --eval_iters: must be 1..100000, got 0"),
    (["--log_interval", -1], "argument --log_interval: must be at least 1, got -1"),
    (["--warmup_iters", -1], "argument --warmup_iters: must be 0..1000000000, got -1"),
    (["--final_iters", -1], "argument --final_iters: must be 0..1000000000, got -1"),
    (["--stop_after", 0], "argument --stop_after: must be at least 1, got 0"),
    (["--n_layers", 0], "argument --n_layers: must be 1..1024, got 0"),
    (["--dim", 0], "argument --dim: must be 1..65536, got 0"),
    (["--dim", 10**6], "argument --dim: must be 1..65536, got 1000000"),
    (["--n_heads", 0], "argument --n_heads: must be 1..1024, got 0"),
    (["--n_kv_heads", -2], "argument --n_kv_heads: must be 1..1024, got -2"),
    (["--vocab_size", 0], "argument --vocab_size: must be 1..1048576, got 0"),
    (["--block_size", 100000000], "argument --block_size: must be 1..1048576, got 100000000"),
    (["--block_size", 0], "argument --block_size: must be 1..1048576, got 0"),
    (["--rotation", 0], "argument --rotation: must be at least 1, got 0"),
    (["--exit_always", 0], "argument --exit_always: must be at least 1, got 0"),
    (["--seed", -1], "argument --seed: must be 0..9223372036854775807, got -1"),
    (["--seed", 2**64], "argument --seed: must be 0..9223372036854775807"),
    (["--threads", 0], "argument --threads: must be 1.."),
    (["--threads", 10**6], "argument --threads: must be 1.."),
    # numbers: NaN, infinity, not a number, out of range
    *[([f"{flag}={v}"], f"argument {flag}: must be a finite number") for flag in FLOAT_FLAGS
      for v in ("nan", "inf", "-inf")],
    *[([flag, "x"], f"argument {flag}: expected a number, got 'x'") for flag in FLOAT_FLAGS],
    (["--lr", -1], "argument --lr: must be a finite number > 0 and <= 1, got -1"),
    (["--lr", 0], "argument --lr: must be a finite number > 0 and <= 1, got 0"),
    (["--lr", 5], "argument --lr: must be a finite number > 0 and <= 1, got 5"),
    (["--p_max", 1.5], "argument --p_max: must be a finite number >= 0 and <= 1, got 1.5"),
    (["--e_scale", -1], "argument --e_scale: must be a finite number >= 0 and <= 100, got -1"),
    (["--e_scale", 1e300], "argument --e_scale: must be a finite number >= 0 and <= 100"),
    (["--onpolicy_weight", -0.5], "argument --onpolicy_weight: must be a finite number >= 0"),
    # names
    (["--preset", "gigantic"], "argument --preset: invalid choice: 'gigantic'"),
    (["--curriculum", "random"], "argument --curriculum: invalid choice: 'random'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--no_such_flag", 1], "unrecognized arguments: --no_such_flag"),
    (["--device", "tpu"], "--device 'tpu' is not a device: use cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:99"], "--device cuda"),  # no GPU, or not 100 of them
    # flags that must agree
    (["--n_heads", 3], "--dim 32 is not divisible by --n_heads 3"),
    (["--dim", 36, "--n_heads", 4], "--dim 36 / --n_heads 4 = 9 channels per head: RoPE needs an even number"),
    (["--n_kv_heads", 3], "--n_heads 4 is not a multiple of --n_kv_heads 3"),
    (["--exit_always", 5], "--exit_always 5 is not an exit of this model: use 1..4"),
    (["--max_iters", 10, "--final_iters", 20], "--final_iters 20 is more than --max_iters 10"),
    (["--exit_always", 2, "--exit_always_weight", 1], "--exit_always_weight must be below 1"),
    (["--exit_always_weight", 0.5], "--exit_always_weight W is the share of one exit: name it with --exit_always E"),
    (["--onpolicy_weight", 2], "--onpolicy_weight weighs the loss on --onpolicy_data FILE: give the file too"),
    (["--onpolicy_data", SHAKESPEARE / "val.bin"], "--onpolicy_data trains the draft exit: name it with --exit_always"),
    (["--onpolicy_loss", "kl"], "--onpolicy_loss shapes the loss on --onpolicy_data FILE: give the file too"),
    (["--onpolicy_aligned"], "--onpolicy_aligned shapes the loss on --onpolicy_data FILE: give the file too"),
    (["--onpolicy_loss", "mse"], "argument --onpolicy_loss: invalid choice: 'mse'"),
    # the data and the machine
    (["--block_size", 500_000], "val.bin has 95942 tokens, fewer than one training window of 500001"),
    (["--vocab_size", 100], "--vocab_size 100 is smaller than the tokenizer's 4096"),
    (["--dim", 65536, "--n_layers", 1024], "this run needs about"),
]


@pytest.mark.parametrize("extra, match", BAD_VALUES, ids=[" ".join(map(str, a)) for a, _ in BAD_VALUES])
def test_bad_value_is_one_line_and_creates_nothing(tmp_path, capsys, extra, match):
    """Each bad value: exit 2, one line that names the flag (and the range, or the flag it clashes with), and no
    --out_dir left behind. --max_iters -1 blames --max_iters, not --final_iters."""
    out = tmp_path / "out"
    line = assert_one_line_error(train.main, TINY + extra + ["--out_dir", out], capsys, match)
    assert "--final_iters" not in line or "--final_iters" in map(str, extra)
    assert not out.exists()


def path_case(tmp, case):
    """(flags, expected text) of one bad path, made under tmp; tiny_checkpoint is filled in by the test."""
    data = tmp / "data"
    data.mkdir()
    for name in ("train.bin", "val.bin", "tokenizer.model", "meta.json"):
        (data / name).write_bytes((SHAKESPEARE / name).read_bytes())
    file = tmp / "file"
    file.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)))  # binary, like /bin/ls
    folder = tmp / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("no checkpoint here\n")
    few = tmp / "few.bin"
    np.arange(3, 13, dtype=np.uint16).tofile(few)
    past = tmp / "past.bin"
    np.full(1000, 65000, dtype=np.uint16).tofile(past)
    return {
        "out_dir is a file": (["--out_dir", file], f"--out_dir {file}: {file} is a file, not a folder"),
        "out_dir under a file": (["--out_dir", file / "sub"], f"--out_dir {file / 'sub'}: {file} is a file"),
        "data missing": (["--data", tmp / "none"], f"{tmp / 'none' / 'train.bin'} is missing: prepare the data"),
        "data is a file": (["--data", file], f"--data {file} is a file: give the folder"),
        "data lacks train.bin": (["--data", folder], f"{folder / 'train.bin'} is missing: prepare the data"),
        "empty train.bin": (["--data", data], "train.bin: not a file of uint16 tokens (ValueError)"),
        "odd-sized val.bin": (["--data", data], "val.bin: not a file of uint16 tokens (ValueError)"),
        "tokenizer not one": (["--data", data], "tokenizer.model: not a sentencepiece tokenizer"),
        "ids past the tokenizer": (["--data", data], "train.bin holds token ids past the tokenizer"),
        "val too short": (["--data", data], "val.bin has 10 tokens, fewer than one training window of 33"),
        "init_from missing": (["--init_from", tmp / "none.pt"], f"--init_from: {tmp / 'none.pt'}: no such file"),
        "init_from a folder without one": (["--init_from", folder], "not a model directory of a known layout"),
        "init_from binary": (["--init_from", file], f"--init_from: {file}: cannot be read as a checkpoint"),
        "init_from truncated": (["--init_from", "TRUNCATED"], "it may be truncated or corrupt"),
        "init_from another shape": (["--init_from", "TINY_CKPT", "--dim", 48], "dim: 48 here vs 64 in the checkpoint"),
        "init_from another tokenizer": (["--init_from", "TINY_CKPT", "--dim", 64], "uses another tokenizer than"),
        "onpolicy missing": (["--exit_always", 2, "--onpolicy_data", tmp / "none.bin"], "no such file"),
        "onpolicy one byte": (["--exit_always", 2, "--onpolicy_data", tmp / "one.bin"], "not a file of uint16 tokens"),
        "onpolicy a folder": (["--exit_always", 2, "--onpolicy_data", folder], "not a file of uint16 tokens"),
        "onpolicy too short": (["--exit_always", 2, "--onpolicy_data", few], "has 10 tokens, fewer than one training"),
        "onpolicy past vocab": (["--exit_always", 2, "--onpolicy_data", past], "holds token ids past the tokenizer"),
        "onpolicy aligned without starts": (["--exit_always", 2, "--onpolicy_data", SHAKESPEARE / "val.bin",
                                             "--onpolicy_aligned"], "needs " + str(SHAKESPEARE / "val.json")),
        "resume without a run": (["--resume"], f"cannot resume: {tmp / 'out' / 'ckpt.pt'}: no such file"),
    }[case]


CORRUPT = {"empty train.bin": ("train.bin", b""), "odd-sized val.bin": ("val.bin", b"\x01\x00\x02"),
           "tokenizer not one": ("tokenizer.model", b"not a tokenizer"),
           "ids past the tokenizer": ("train.bin", np.full(1000, 65000, dtype=np.uint16).tobytes()),
           "val too short": ("val.bin", np.arange(3, 13, dtype=np.uint16).tobytes())}
PATH_CASES = ["out_dir is a file", "out_dir under a file", "data missing", "data is a file", "data lacks train.bin",
              *CORRUPT, "init_from missing", "init_from a folder without one", "init_from binary",
              "init_from truncated", "init_from another shape", "init_from another tokenizer", "onpolicy missing",
              "onpolicy one byte", "onpolicy a folder", "onpolicy too short", "onpolicy past vocab",
              "onpolicy aligned without starts",
              "resume without a run"]


@pytest.mark.parametrize("case", PATH_CASES)
def test_bad_path_is_one_line_and_creates_nothing(tmp_path, capsys, tiny_checkpoint, case):
    """Paths that are missing, files instead of folders (or the reverse), binary or damaged: exit 2, one line that
    names the path, and nothing created or changed."""
    flags, match = path_case(tmp_path, case)
    (tmp_path / "truncated.pt").write_bytes(Path(tiny_checkpoint).read_bytes()[:5000])
    flags = [{"TINY_CKPT": tiny_checkpoint, "TRUNCATED": tmp_path / "truncated.pt"}.get(f, f) for f in flags]
    if case in CORRUPT:
        name, content = CORRUPT[case]
        (tmp_path / "data" / name).write_bytes(content)
    (tmp_path / "one.bin").write_bytes(b"\x01")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = ["--out_dir", tmp_path / "out"] if "--out_dir" not in flags else []
    assert_one_line_error(train.main, TINY + flags + out, capsys, match)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    """As a command: --batch_size 0 prints one line (no traceback, no usage block), exits 2, creates no folder."""
    proc = subprocess.run([sys.executable, "train.py", "--batch_size", "0", "--out_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "train.py: error: argument --batch_size: must be 1..65536, got 0 (see --help)\n"
    assert not (tmp_path / "out").exists()


def test_finished_run_is_kept_unless_forced(tmp_path, capsys):
    """A new run into the --out_dir of a finished one is refused and changes nothing; with --force it replaces the
    run: new weights, and a log.jsonl holding only the new run's evaluation; --resume may not be forced."""
    out = tmp_path / "run"
    train.main([str(a) for a in TINY + ["--out_dir", out]])
    files = {name: (out / name).read_bytes() for name in ("ckpt.pt", "model.pt", "log.jsonl")}
    assert_one_line_error(train.main, TINY + ["--out_dir", out], capsys,
                          f"--out_dir {out} already holds a run (ckpt.pt, model.pt): continue it with --resume")
    assert {name: (out / name).read_bytes() for name in files} == files
    assert_one_line_error(train.main, ["--resume", "--force", "--out_dir", out], capsys, "drop --force")
    (out / "ckpt.pt").unlink()  # model.pt alone is a finished run too
    assert_one_line_error(train.main, TINY + ["--out_dir", out], capsys, "already holds a run (model.pt)")
    train.main([str(a) for a in TINY + ["--out_dir", out, "--force", "--seed", 7]])
    first = torch.load(io.BytesIO(files["model.pt"]), weights_only=True)["model"]
    now = torch.load(out / "model.pt", weights_only=True)["model"]
    assert not torch.equal(first["tok_embeddings.weight"], now["tok_embeddings.weight"])
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["seed"] == 7


def test_a_run_writes_what_it_says(tmp_path, capsys):
    """The last line names ckpt.pt and model.pt, and both hold the last step; a run stopped early (--stop_after)
    says where to continue, writes ckpt.pt at the step reached, and no model.pt."""
    out = tmp_path / "run"
    train.main([str(a) for a in TINY + ["--max_iters", 2, "--out_dir", out]])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"done: {out / 'ckpt.pt'} (full state) and {out / 'model.pt'} (fp16 weights")
    assert [torch.load(out / n, weights_only=True)["step"] for n in ("ckpt.pt", "model.pt")] == [2, 2]
    stopped = tmp_path / "stopped"
    train.main([str(a) for a in TINY + ["--max_iters", 3, "--eval_interval", 10, "--stop_after", 2,
                                        "--out_dir", stopped]])
    assert "done:" not in capsys.readouterr().out
    assert torch.load(stopped / "ckpt.pt", weights_only=True)["step"] == 2
    assert not (stopped / "model.pt").exists()


BENCH_TRAIN_BAD = [
    (["--dim", 0], "argument --dim: must be 2..65536, got 0"),
    (["--n_layers", -1], "argument --n_layers: must be 1..1024, got -1"),
    (["--batch_size", 10**7], "argument --batch_size: must be 1..65536"),
    (["--block_size", "nan"], "argument --block_size: expected a whole number, got 'nan'"),
    (["--steps", 0], "argument --steps: must be 1..100000, got 0"),
    (["--threads", 0], "argument --threads: must be 1.."),
    (["--vocab_size", "1e3"], "argument --vocab_size: expected a whole number, got '1e3'"),
    (["--n_heads", 5], "--dim 192 / --n_heads 5 must be a whole, even number of channels per head"),
    (["--n_kv_heads", 4], "--n_heads 6 is not a multiple of --n_kv_heads 4"),
    (["--dim", 65536, "--n_heads", 4, "--n_kv_heads", 2, "--n_layers", 1024], "this shape needs about"),
]


@pytest.mark.parametrize("argv, match", BENCH_TRAIN_BAD, ids=[" ".join(map(str, a)) for a, _ in BENCH_TRAIN_BAD])
def test_bench_train_bad_input_is_one_line(capsys, argv, match):
    """bench_train.py: a bad shape, count or thread number is one line and exit 2, before any model is built."""
    assert_one_line_error(bench_train.main, argv, capsys, match)
