"""Tests that need a CUDA GPU (skipped without; scripts/gpu_check.sh runs them): training, exact resume, decoding,
bench.py, the transformers export. The last test always runs: the GPU commands parse, gpu_check.sh lists its steps."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also run as a script: python tests/test_cuda.py bench ...

import pytest  # noqa: E402
import torch  # noqa: E402

import layerskip as ls  # noqa: E402
from model_io import load_model  # noqa: E402

pytestmark = pytest.mark.integration

DEEP, TWELVE = "checkpoints/layerskip-python-deep.pt", "checkpoints/layerskip-python.pt"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: run scripts/gpu_check.sh on a GPU")

# The tiny toy model of tests/test_train.py, on the GPU.
TINY = ["--preset", "toy", "--dim", "32", "--n_layers", "4", "--n_heads", "4", "--n_kv_heads", "2",
        "--block_size", "32", "--eval_iters", "2", "--log_interval", "1", "--device", "cuda"]
LAYERSKIP = TINY + ["--max_iters", "10", "--eval_interval", "10", "--p_max", "0.2", "--e_scale", "0.5"]
SIX = TINY + ["--max_iters", "6", "--eval_interval", "6", "--batch_size", "8", "--e_scale", "0.5"]
TRAIN = {  # name: train.py flags (each run adds --out_dir); "torchrun" ones run under torchrun, 1 process, NCCL
    "float32": LAYERSKIP,
    "bfloat16": LAYERSKIP + ["--dtype", "bfloat16"],
    "compile": LAYERSKIP + ["--compile"],
    "torchrun-ddp": SIX + ["--p_max", "0.5"],
    "torchrun-fsdp": SIX + ["--p_max", "0", "--grad_accum", "2", "--fsdp"],
    "resume": TINY + ["--max_iters", "8", "--eval_interval", "4", "--p_max", "0.3", "--e_scale", "0.5"],
}
COMPARE = ["--device", "cuda", "--dtype", "float32", "--compare", "--max_new_tokens", "64"]
GENERATE = {"32-layer": COMPARE, "12-layer": ["--checkpoint", TWELVE, *COMPARE]}  # name: generate.py flags
BENCH = ["--checkpoint", DEEP, "--baseline", "", "--reference", "", "--prompts", "humaneval", "--n_prompts", "2",
         "--max_new_tokens", "16", "--repeats", "1"]


def run(args, torchrun=False, env=None, timeout=300):
    """python (or torchrun with one process) ARGS in the repository root; output captured."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
                                   if torchrun else [])
    proc = subprocess.run(launcher + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def train(flags, out_dir, **kw):  # train.py's step losses
    out = run(["train.py", *flags, "--out_dir", out_dir], **kw).stdout
    return [float(m) for m in re.findall(r"^step +\d+/\d+ \| loss ([\d.]+)", out, re.M)]


@needs_cuda
def test_train_float32_bfloat16_and_compile_on_cuda(shakespeare, tmp_path):
    """float32 and bfloat16 runs' losses fall and agree at step 1 within 1%; --compile's are eager's within 2e-3."""
    fp32 = train(TRAIN["float32"], tmp_path / "fp32")
    bf16 = train(TRAIN["bfloat16"], tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 10
    assert bf16[0] == pytest.approx(fp32[0], rel=0.01)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]
    assert train(TRAIN["compile"], tmp_path / "compiled", timeout=400) == pytest.approx(fp32, abs=2e-3)


@needs_cuda
@pytest.mark.parametrize("name", ["torchrun-ddp", "torchrun-fsdp"])
def test_torchrun_nccl_equals_one_process(shakespeare, tmp_path, name):
    """torchrun over NCCL, DDP (layer dropout on) and FSDP2 (grad_accum 2), logs a plain run's losses."""
    distributed = train(TRAIN[name], tmp_path / "dist", torchrun=True)
    single = train([a for a in TRAIN[name] if a != "--fsdp"], tmp_path / "one")
    assert len(distributed) == len(single) == 6
    assert distributed == pytest.approx(single, abs=2e-3)
    assert (tmp_path / "dist/model.pt").exists()


DETERMINISTIC = """
import sys
sys.path.insert(0, {root!r})
import torch
torch.use_deterministic_algorithms(True, warn_only=True)  # a warning names any kernel that is not
for backend in ("flash", "mem_efficient", "cudnn"):  # the math attention kernel: no atomics in its backward
    getattr(torch.backends.cuda, f"enable_{{backend}}_sdp", lambda on: None)(False)
import train
train.main()
"""


@needs_cuda
def test_resume_is_exact_on_cuda(shakespeare, tmp_path):
    """N steps straight == N/2 steps, stop, --resume, bit for bit, with deterministic kernels (no atomics)."""
    wrapper = tmp_path / "deterministic_train.py"
    wrapper.write_text(DETERMINISTIC.format(root=str(ROOT)))
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    run([wrapper, *TRAIN["resume"], "--out_dir", tmp_path / "straight"], env=env)
    run([wrapper, *TRAIN["resume"], "--out_dir", tmp_path / "split", "--stop_after", "4"], env=env)
    proc = run([wrapper, "--resume", "--out_dir", tmp_path / "split"], env=env)
    assert "resumed" in proc.stdout
    a, b = (torch.load(tmp_path / f"{run}/ckpt.pt", weights_only=True)["model"] for run in ("straight", "split"))
    differ = {k: (a[k] - b[k]).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    warned = sorted(set(re.findall(r"UserWarning: (.{0,120})", proc.stderr)))
    assert a.keys() == b.keys() and not differ, (differ, warned)


@needs_cuda
def test_self_speculative_equals_autoregressive_on_cuda():
    """float32 greedy self-speculative == autoregressive: generate.py --compare, ls.generate at several E, d, th."""
    for flags in GENERATE.values():
        out = run(["generate.py", *flags]).stdout
        assert "outputs identical" in out, out[-1500:]
    from data.prepare import load_prompts
    model, tok = load_model(ROOT / DEEP, device="cuda", dtype=torch.float32)
    for prompt in load_prompts("humaneval")[:3]:
        ids = tok.encode(prompt)
        ar = ls.generate(model, ids, 48, eos_id=tok.stop_ids).tokens
        for E, d, th in ((1, 3, None), (4, 3, 0.3), (8, 6, None), (16, 2, None)):
            ss = ls.generate(model, ids, 48, strategy="self_speculative", exit_layer=E, num_speculations=d,
                             draft_threshold=th, eos_id=tok.stop_ids)
            assert ss.tokens == ar, (E, d, th)


def bench_on_cuda(argv):
    """bench.main(argv) with its models loaded on the GPU (bench.py has no --device), saying where."""
    import bench
    load = bench.load_model

    def load_on_cuda(path, **kw):
        model, tok = load(path, **{"device": "cuda", **kw})
        print(f"bench: {path} loaded on {model.tok_embeddings.weight.device}", flush=True)
        return model, tok
    bench.load_model = load_on_cuda
    bench.main(list(argv))


@needs_cuda
def test_bench_on_cuda(tmp_path):
    """bench.py decodes the 32-layer model on the GPU (2 prompts, 16 tokens) and its JSON report names the GPU."""
    out = run(["tests/test_cuda.py", "bench", *BENCH, "--json", tmp_path / "bench.json"]).stdout
    assert f"{DEEP} loaded on cuda" in out, out[-1500:]
    assert torch.cuda.get_device_name() in json.loads((tmp_path / "bench.json").read_text())["machine"]


@needs_cuda
def test_transformers_export_on_cuda(tmp_path):
    """The HF export on the GPU: our logits within 1e-4; assistant_early_exit=E gives our greedy tokens."""
    transformers = pytest.importorskip("transformers")
    import export
    out = export.export(ROOT / DEEP, tmp_path / "hf", "hf")
    model, tok = load_model(ROOT / DEEP, device="cuda", dtype=torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to("cuda").eval()
    ids = tok.encode('def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n')
    x = torch.tensor([ids], device="cuda")
    with torch.no_grad():
        assert (hf(x).logits[0] - model(x)[0]).abs().max().item() < 1e-4
        theirs = hf.generate(x, do_sample=False, max_new_tokens=32, pad_token_id=tok.eos_id,
                             assistant_early_exit=hf.config.layerskip["exit_layer"])
    assert theirs[0, len(ids):].tolist() == ls.generate(model, ids, 32, eos_id=tok.eos_id).tokens


def gpu_check(*args):  # scripts/gpu_check.sh ARGS
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_gpu_commands_parse_and_gpu_check_lists_its_steps():
    """Always run: every GPU command here parses; gpu_check.sh --list names its steps (<= 8 min), runs none."""
    import bench
    import generate
    import train
    for name, flags in TRAIN.items():  # a renamed flag: an argparse error here; float32 unless named
        assert train.parse_args(flags + ["--out_dir", "o"]).dtype == ("bfloat16" if name == "bfloat16" else "float32")
    for flags in GENERATE.values():
        generate.parse_args(flags)
    before = sorted(p.name for p in ROOT.iterdir())
    listed = gpu_check("--list")
    assert listed.returncode == 0 and sorted(p.name for p in ROOT.iterdir()) == before, listed.stderr
    for step in ("env", "deps", "tests", "bench"):
        assert re.search(rf"^\d+\. {step}: ", listed.stdout, re.M), listed.stdout
    assert "-m pytest -q -rs tests/test_cuda.py" in listed.stdout
    assert sum(int(s) for s in re.findall(r"\(at most (\d+) s\)", listed.stdout)) <= 480
    line = next(l for l in listed.stdout.splitlines() if "tests/test_cuda.py bench" in l)
    bench_step = shlex.split(line.split("tests/test_cuda.py bench", 1)[1].split("  (")[0].replace("OUT_FOLDER", "out"))
    for argv in (BENCH, bench_step):
        args = bench.parse_args(argv)
        assert args.checkpoint == DEEP and args.reference == "" and "--max_new_tokens" in argv
    usage = gpu_check()
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1 and "usage" in usage.stderr
    assert subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=ROOT).returncode == 0


if __name__ == "__main__":  # scripts/gpu_check.sh's bench step: python tests/test_cuda.py bench [bench.py flags]
    if sys.argv[1:2] != ["bench"]:
        sys.exit("usage: python tests/test_cuda.py bench [bench.py flags]")
    bench_on_cuda(sys.argv[2:])
