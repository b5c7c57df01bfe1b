"""
Train a Llama with the LayerSkip recipe: layer dropout (eq. 1-4) and the early-exit loss (eq. 5-6).

    python train.py --preset toy                           # a CPU toy: about a minute on one core
    python train.py --preset python --out_dir out/python   # the shipped reference model
    python train.py --preset python --p_max 0 --e_scale 0  # its baseline twin: an ordinary Llama
    torchrun --nproc_per_node=8 train.py --preset llama1.5b --data data/mytext
    python train.py --preset llama1.5b --dry_run           # parameter count and memory, nothing allocated
    python train.py ... --exit_always 4 --onpolicy_data data/python/onpolicy.bin   # + exit 4 on the model's own text

Every LayerSkip knob off (--p_max 0 --e_scale 0) is a plain Llama training step. From scratch the layer
dropout rates grow over training (S(t) of eq. 4); with --init_from they are constant (S = 1).
"""

import argparse
import json
import math
import hashlib
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import layerskip as ls
from model_io import CheckpointError, SentencePieceTokenizer, atomic_save, build_model, load_checkpoint
from model_io import save_checkpoint

PRESETS = {
    # A few minutes on a laptop CPU: shows the loss falling and the exits learning.
    "toy": dict(data="data/shakespeare", dim=64, n_layers=4, n_heads=4, n_kv_heads=2, block_size=64,
                batch_size=16, max_iters=300, lr=3e-3, warmup_iters=20, eval_interval=100, eval_iters=10,
                p_max=0.1, e_scale=0.2, curriculum="rotational", rotation=3),
    "shakespeare": dict(data="data/shakespeare", dim=256, n_layers=12, n_heads=8, n_kv_heads=4, block_size=256,
                        batch_size=16, max_iters=5000, lr=1e-3, warmup_iters=100, eval_interval=250,
                        p_max=0.1, e_scale=0.2, curriculum="rotational", rotation=4),
    # The first reference models (checkpoints/*-python.pt): 12 blocks, 5.7M parameters, the standard library alone
    # with a 4096-piece vocabulary. The baseline twin is the same command with --p_max 0 --e_scale 0.
    "python": dict(data="data/python-stdlib", dim=192, n_layers=12, n_heads=6, n_kv_heads=3, block_size=256,
                   batch_size=16, max_iters=1600, lr=2e-3, warmup_iters=100, eval_interval=200, eval_iters=10,
                   p_max=0.1, e_scale=0.5, curriculum="rotational", rotation=4, tie_embeddings=True),
    # The deep, narrow reference models (checkpoints/): 32 blocks of width 128, so that drafting with the first
    # 4 blocks costs about 0.15 of a full step. Stdlib + torch source, a 2048-piece vocabulary. The baseline twin
    # is the same command with --p_max 0 --e_scale 0. Shape and recipe: docs/pilots.md; the fine-tuning phases
    # that followed: README, Train.
    "python-deep": dict(data="data/python", dim=128, n_layers=32, n_heads=4, n_kv_heads=2, block_size=256,
                        vocab_size=2048, batch_size=16, max_iters=1000, lr=2e-3, warmup_iters=100, eval_interval=100,
                        eval_iters=10, p_max=0.1, e_scale=1.0, curriculum="rotational", rotation=4,
                        tie_embeddings=True),
    # The paper's from-scratch "Llama2 1.5B" (Table 8/10): dim 2048, 16 heads, 24 layers, context 4096;
    # FFN and vocabulary by Llama 2's rules. p_max 0.1, e_scale 0.2, rotational R = 23, LR 8e-4.
    "llama1.5b": dict(data="data/python", dim=2048, n_layers=24, n_heads=16, n_kv_heads=16, block_size=4096,
                      vocab_size=32000, multiple_of=256, batch_size=4, max_iters=50000, lr=8e-4,
                      warmup_iters=2000, eval_interval=1000, p_max=0.1, e_scale=0.2, curriculum="rotational",
                      rotation=23, device="cuda", dtype="bfloat16"),
}

DEFAULTS = dict(data="data/shakespeare", dim=256, n_layers=12, n_heads=8, n_kv_heads=None, vocab_size=None,
                multiple_of=32, block_size=256, tie_embeddings=False, batch_size=16, grad_accum=1,
                max_iters=1000, lr=1e-3, min_lr_ratio=0.1, warmup_iters=100, weight_decay=0.1, beta2=0.95,
                grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10, p_max=0.0, e_scale=0.0,
                curriculum="rotational", rotation=4, exit_always=None, exit_always_weight=0.0, final_iters=0,
                final_e_scale=1.0, onpolicy_data=None, onpolicy_weight=1.0,
                device="cpu", dtype="float32", seed=1337,
                preset=None, init_from=None, stop_after=None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="a named configuration; any flag below overrides it")
    a("--out_dir", default=None, help="where checkpoints and the log go (default out/<preset>)")
    a("--data", help="a folder written by a data/*/prepare.py script (train.bin, val.bin, tokenizer.model)")
    a("--init_from", help="continue training from this checkpoint (continual pretraining: S(t) = 1)")
    a("--resume", action="store_true", help="continue the run in --out_dir exactly where it stopped")
    a("--stop_after", type=int, help="stop (with a checkpoint) after this many iterations of this invocation")
    a("--dry_run", action="store_true", help="build the model on the meta device, print size and memory, exit")
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=int, help="model width")
    g.add_argument("--n_layers", type=int, help="number of transformer blocks L")
    g.add_argument("--n_heads", type=int, help="attention heads")
    g.add_argument("--n_kv_heads", type=int, help="key/value heads (grouped-query attention)")
    g.add_argument("--vocab_size", type=int, help="vocabulary size (default: the tokenizer's)")
    g.add_argument("--multiple_of", type=int, help="round the SwiGLU hidden size up to a multiple of this")
    g.add_argument("--block_size", type=int, help="training sequence length = the model's context window")
    g.add_argument("--tie_embeddings", action=argparse.BooleanOptionalAction, help="share embedding and head")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, help="sequences per micro-batch per process")
    g.add_argument("--grad_accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--max_iters", type=int, help="optimizer steps T of the whole run")
    g.add_argument("--lr", type=float, help="peak learning rate (the paper doubles it with layer dropout)")
    g.add_argument("--min_lr_ratio", type=float, help="final learning rate as a fraction of the peak")
    g.add_argument("--warmup_iters", type=int, help="linear warm-up steps before the cosine decay")
    g.add_argument("--weight_decay", type=float, help="AdamW weight decay on matrices")
    g.add_argument("--beta2", type=float, help="AdamW beta2")
    g.add_argument("--grad_clip", type=float, help="clip the gradient norm to this (0 = off)")
    g = p.add_argument_group("LayerSkip")
    g.add_argument("--p_max", type=float, help="layer dropout rate of the last block (0 = off)")
    g.add_argument("--e_scale", type=float, help="early-exit loss scale (0 = last layer only)")
    g.add_argument("--curriculum", choices=ls.CURRICULA, help="which exits are trained at each step")
    g.add_argument("--rotation", type=int, help="R of the rotational curriculum: every R-th block")
    g.add_argument("--exit_always", type=int, metavar="E",
                   help="train exit E (after E blocks) at every step, whatever the curriculum, with its eq. 6 weight")
    g.add_argument("--exit_always_weight", type=float, metavar="W",
                   help="...or with the fixed share W of the loss, the other exits scaled by 1 - W: the two-exit "
                        "loss of the LayerSkip fine-tuning scripts, (e CE_E + CE_L) / (1 + e), is W = e / (1 + e)")
    g.add_argument("--final_iters", type=int,
                   help="the last this many steps use --final_e_scale (the paper finetunes with e_scale 1.0)")
    g.add_argument("--final_e_scale", type=float, help="early-exit loss scale of the final phase (default 1.0)")
    g.add_argument("--onpolicy_data", metavar="FILE",
                   help="also fit exit --exit_always to the model's own greedy text in FILE (written by onpolicy.py): "
                        "each micro-batch adds a window of it, through the first E blocks only")
    g.add_argument("--onpolicy_weight", type=float, metavar="W", help="weight of that loss (default 1.0)")
    g = p.add_argument_group("run")
    g.add_argument("--eval_interval", type=int, help="evaluate and checkpoint every this many steps")
    g.add_argument("--eval_iters", type=int, help="validation batches per evaluation")
    g.add_argument("--log_interval", type=int, help="print a progress line every this many steps")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps ...")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], help="bfloat16 = autocast on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile each block (skip logic stays eager)")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    g.add_argument("--seed", type=int, help="seed of data order, initialisation and layer dropout")
    p.error = fail  # one line, not argparse's usage block
    args = p.parse_args(argv)
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS.get(args.preset, {}))
    cfg.update({k: v for k, v in vars(args).items() if v is not None})
    cfg["out_dir"] = cfg.get("out_dir") or f"out/{args.preset or 'run'}"
    cfg["cli"] = sorted(k for k, v in vars(args).items() if v is not None and v is not False)  # flags given
    return argparse.Namespace(**cfg)


def fail(message):
    """One line on stderr, exit code 2: what went wrong and what to do."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------------------
# Data: random windows of the token memmaps. The windows of step t are a pure function of (seed, t), so a
# resumed run sees exactly the batches it would have seen, and all ranks together see one global batch.


DATA_FILES = ("train.bin", "val.bin", "tokenizer.model", "meta.json")  # meta.json is written last
# Corpora built by another folder's script; any other folder with a prepare.py is built by that script.
BUILDERS = {"data/python-stdlib": ["data/python/prepare.py", "--stdlib_only", "--vocab_size", "4096"]}


def prepare_data(folder, master, barrier):
    """Build a corpus whose folder has a prepare.py (data/python, data/shakespeare) the first time it is used:
    rank 0 builds, the other ranks wait at the barrier. A folder without one must be prepared by hand."""
    folder = Path(folder)
    if all((folder / name).exists() for name in DATA_FILES):
        return
    root = Path(__file__).resolve().parent
    key = folder.resolve().relative_to(root).as_posix() if folder.resolve().is_relative_to(root) else None
    own = folder.resolve() / "prepare.py"
    command = BUILDERS.get(key) or ([str(own)] if own.exists() else None)
    if command is None:
        missing = next(name for name in DATA_FILES if not (folder / name).exists())
        fail(f"{folder / missing} is missing: prepare the data with data/prepare.py --input ... --out_dir {folder}")
    command = command + ["--out_dir", str(folder.resolve())]
    if master:
        print(f"{folder} is not prepared yet: building it with `python {' '.join(command)}` (once)", flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable] + command, env=env, cwd=root)
        if proc.returncode != 0:
            fail(f"`python {' '.join(command)}` failed (exit {proc.returncode}); see its output above")
    barrier()


def load_data(folder):
    folder = Path(folder)
    for name in DATA_FILES[:3]:
        if not (folder / name).exists():
            fail(f"{folder / name} is missing: prepare the data with data/prepare.py --input ... --out_dir {folder}")
    data = {s: np.memmap(folder / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val")}
    return data, SentencePieceTokenizer.from_file(folder / "tokenizer.model")


def get_batch(data, cfg, step, micro, rank, world, device):
    g = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + micro) % 2**63)
    T = cfg.block_size
    if len(data) <= T + 1:
        fail(f"the data has {len(data)} tokens, fewer than one training window of {T + 1}: use a smaller "
             f"--block_size or more text")
    starts = torch.randint(len(data) - T - 1, (cfg.batch_size * world,), generator=g)
    starts = starts[rank * cfg.batch_size:(rank + 1) * cfg.batch_size].tolist()
    x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in starts])
    return x.to(device), y.to(device)


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay that reaches min_lr_ratio * lr at step max_iters."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))


def layerskip_schedule(step, cfg, from_scratch):
    """This step's layer dropout rates (eq. 2-4) and early-exit weights (eq. 6 with the curriculum)."""
    L = cfg.n_layers
    rates = None
    if cfg.p_max > 0:
        rates = ls.layer_dropout_rates(L, cfg.p_max, step if from_scratch else None, cfg.max_iters)
    weights = None
    final_phase = step >= cfg.max_iters - cfg.final_iters
    e_scale = cfg.final_e_scale if final_phase else cfg.e_scale
    if e_scale > 0:
        exits = ls.early_exit_curriculum(L, step, cfg.curriculum, cfg.rotation, cfg.max_iters)
        if cfg.exit_always:
            exits = sorted(set(exits) | {cfg.exit_always - 1})  # exit E is the output of block E-1
        weights = ls.early_exit_weights(L, e_scale, exits)
    w = cfg.exit_always_weight
    if cfg.exit_always and w > 0:  # a fixed share for the draft exit, the rest as eq. 6 (or the last layer) says
        weights = {l: (1 - w) * v for l, v in (weights or {L - 1: 1.0}).items()}
        weights[cfg.exit_always - 1] = weights.get(cfg.exit_always - 1, 0.0) + w
    return rates, weights


def exit_loss(model, x, y, exit_layer):
    """Cross-entropy of exit E (the shared head after blocks 0..E-1) on x -> y: the blocks after E do not run."""
    h = model.run_blocks(model.tok_embeddings(x), 0, exit_layer)
    return torch.nn.functional.cross_entropy(model.head(h).flatten(0, 1), y.flatten(), ignore_index=-1)


@torch.no_grad()
def evaluate(model, data, cfg, device, autocast):
    """Mean validation loss at every exit layer (1..L), on fixed windows of the validation split."""
    model.eval()
    L = cfg.n_layers
    every_exit = {l: 1.0 / L for l in range(L)}
    totals = torch.zeros(L)
    for i in range(cfg.eval_iters):
        x, y = get_batch(data, cfg, step=-1 - i, micro=0, rank=0, world=1, device=device)
        with autocast:
            _, per_exit = model(x, y, exit_weights=every_exit)
        totals += torch.tensor([per_exit[l].item() for l in range(L)])
    model.train()
    return (totals / cfg.eval_iters).tolist()


def check_same_skips(digest, world, announce=False):
    """Every rank must draw the same layer-dropout pattern (the paper seeds every GPU alike): compare the ranks'
    digests of their draws, print them if announce, stop the run if they differ. The weights cannot show a mismatch:
    DDP averages gradients, so replicas agree even when each skipped other blocks."""
    import torch.distributed as dist
    skips = [None] * world
    dist.all_gather_object(skips, digest.hexdigest()[:16])
    same = len(set(skips)) == 1
    if announce or not same:
        print(f"layer-dropout digests by rank: {' '.join(skips)} ({'identical' if same else 'DIFFERENT'})",
              flush=True)
    if not same:
        fail("the ranks drew different layer-dropout patterns: layer_dropout_mask must depend only on "
             "(seed, step, layer)")


def memory_estimate(n_params, cfg, world, fsdp):
    """Bytes per GPU: fp32 weights, gradients and AdamW moments (sharded under FSDP) plus activations."""
    states = 16 * n_params / (world if fsdp else 1)
    act_bytes = 2 if cfg.dtype == "bfloat16" else 4
    tokens = cfg.batch_size * cfg.block_size
    activations = tokens * cfg.n_layers * cfg.dim * 17 * act_bytes  # ~34 half-words per token, layer and width
    exits = 1
    if cfg.e_scale > 0:
        exits += math.ceil(cfg.n_layers / cfg.rotation) if cfg.curriculum == "rotational" else cfg.n_layers
    logits = tokens * cfg.vocab_size * 4 * 2 * exits  # fp32 logits and their softmax, per trained exit
    return states, activations + logits


def fmt_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---------------------------------------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_args(argv)
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "ckpt.pt"

    resume_state = None
    if cfg.resume:
        try:
            resume_state = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            fail(f"cannot resume: {e}")
        extra = set(cfg.cli) - {"resume", "stop_after", "out_dir"}
        if extra:
            fail(f"--resume continues the run with its own configuration: drop --{', --'.join(sorted(extra))}")
        keep = {"resume": True, "stop_after": cfg.stop_after, "out_dir": cfg.out_dir, "cli": cfg.cli}
        cfg = argparse.Namespace(**{**DEFAULTS, **resume_state["config"], **keep})  # DEFAULTS: knobs added since

    if not 0 <= cfg.p_max <= 1:
        fail(f"--p_max {cfg.p_max}: a dropout rate must be in [0, 1]")
    if cfg.e_scale < 0 or cfg.rotation < 1 or cfg.final_e_scale < 0:
        fail("--e_scale and --final_e_scale must be >= 0 and --rotation >= 1")
    if cfg.exit_always is not None and not 1 <= cfg.exit_always <= cfg.n_layers:
        fail(f"--exit_always {cfg.exit_always} is not an exit of this model: use 1..{cfg.n_layers}")
    if not 0 <= cfg.exit_always_weight < 1 or (cfg.exit_always_weight > 0 and cfg.exit_always is None):
        fail(f"--exit_always_weight must be in [0, 1) and needs --exit_always E, got {cfg.exit_always_weight}")
    if cfg.onpolicy_data and cfg.exit_always is None:
        fail("--onpolicy_data trains the draft exit: name it with --exit_always E")
    if cfg.onpolicy_weight < 0:
        fail(f"--onpolicy_weight must be >= 0, got {cfg.onpolicy_weight}")
    if "onpolicy_weight" in cfg.cli and not cfg.onpolicy_data:
        fail("--onpolicy_weight weighs the loss on --onpolicy_data FILE: give the file too")
    if cfg.onpolicy_data and ddp:
        fail("--onpolicy_data runs in one process: drop torchrun, or train without it")
    if not 0 <= cfg.final_iters <= cfg.max_iters:
        fail(f"--final_iters must be in 0..--max_iters ({cfg.max_iters}), got {cfg.final_iters}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available() and not cfg.dry_run:
        fail("--device cuda but no CUDA GPU is visible: use --device cpu")
    if ddp:
        import torch.distributed as dist
        device = f"cuda:{os.environ['LOCAL_RANK']}" if cfg.device.startswith("cuda") else cfg.device
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        device = cfg.device

    if cfg.dry_run:
        tokenizer, data = None, None
        cfg.vocab_size = cfg.vocab_size or 32000
    else:
        prepare_data(cfg.data, master, barrier=dist.barrier if ddp else (lambda: None))
        data, tokenizer = load_data(cfg.data)
        if cfg.onpolicy_data:
            if not Path(cfg.onpolicy_data).exists():
                fail(f"--onpolicy_data {cfg.onpolicy_data}: no such file; write it with `python onpolicy.py --out "
                     f"{cfg.onpolicy_data}`")
            try:
                data["onpolicy"] = np.memmap(cfg.onpolicy_data, dtype=np.uint16, mode="r")
            except (OSError, ValueError) as e:  # empty, odd-sized, a folder
                fail(f"--onpolicy_data {cfg.onpolicy_data}: not a file of uint16 tokens ({type(e).__name__}): "
                     f"write it with `python onpolicy.py --out {cfg.onpolicy_data}`")
            if int(data["onpolicy"].max()) >= tokenizer.vocab_size:
                fail(f"--onpolicy_data {cfg.onpolicy_data}: holds token ids past the tokenizer of {cfg.data}: write it "
                     f"with a model trained on {cfg.data}")
        if cfg.vocab_size is None:
            cfg.vocab_size = tokenizer.vocab_size
        if cfg.vocab_size < tokenizer.vocab_size:
            fail(f"--vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} in {cfg.data}: "
                 f"pass a larger one, or rebuild the data (an older build?) with its prepare.py")

    init = None
    if cfg.init_from and not cfg.resume:  # ours, or a Meta / Hugging Face Llama: the model shape comes from it
        try:
            init, init_tokenizer = ls.load_model(cfg.init_from, dtype=torch.float32)
        except (CheckpointError, ValueError) as e:
            fail(f"--init_from: {e}")
        a = init.params
        theirs = dict(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads or a.n_heads,
                      vocab_size=a.vocab_size)
        clash = {k: (getattr(cfg, k), v) for k, v in theirs.items() if k in cfg.cli and getattr(cfg, k) != v}
        if clash:
            fail(f"--init_from {cfg.init_from} does not match the model asked for: "
                 + ", ".join(f"{k}: {a} here vs {b} in the checkpoint" for k, (a, b) in clash.items())
                 + "; drop those flags or pass matching ones")
        if getattr(init_tokenizer, "model_proto", None) != tokenizer.model_proto:
            fail(f"--init_from {cfg.init_from} uses another tokenizer than {cfg.data}: prepare the data with "
                 f"the checkpoint's tokenizer")
        for k, v in theirs.items():
            setattr(cfg, k, v)
        cfg.block_size = min(cfg.block_size, a.max_seq_len)  # train on windows that fit its context
        cfg.tie_embeddings = a.tie_word_embeddings

    args = ls.ModelArgs(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                        vocab_size=cfg.vocab_size, multiple_of=cfg.multiple_of, max_seq_len=cfg.block_size,
                        tie_word_embeddings=bool(cfg.tie_embeddings))
    torch.manual_seed(cfg.seed)
    if cfg.dry_run:
        with torch.device("meta"):
            model = ls.Transformer(args)
    elif init is not None:
        model = init.to(device).train()
    elif resume_state is not None:
        model = build_model(resume_state, device, torch.float32).train()
    else:
        model = ls.Transformer(args).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    states, activations = memory_estimate(n_params, cfg, world, cfg.fsdp)
    log(f"model: {n_params / 1e6:.2f}M parameters, dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads "
        f"({cfg.n_kv_heads or cfg.n_heads} kv), context {cfg.block_size}, vocab {cfg.vocab_size}")
    log(f"memory per GPU (estimate): weights+grads+AdamW {fmt_bytes(states)}, activations {fmt_bytes(activations)}"
        f", total {fmt_bytes(states + activations)}")
    if cfg.dry_run:
        print(json.dumps({"n_params": n_params, "dim": cfg.dim, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
                          "context": cfg.block_size, "vocab_size": cfg.vocab_size,
                          "ffn_hidden": model.layers[0].feed_forward.w1.out_features,
                          "memory_bytes": int(states + activations)}))
        return

    log("config: " + json.dumps({k: v for k, v in sorted(vars(cfg).items())}))
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.compile:
        for block in model.layers:
            block.compile()
    raw_model = model
    if ddp:
        if cfg.fsdp:
            from torch.distributed.fsdp import fully_shard
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP
            # A block that every sample skipped in a step has no gradient: DDP must look for unused parameters.
            model = DDP(model, find_unused_parameters=cfg.p_max > 0)

    decay = [p for p in raw_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))
    step = 0
    if resume_state is not None:
        if cfg.fsdp and ddp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(raw_model, optimizer, resume_state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(resume_state["optimizer"])
        step = resume_state["step"]
        torch.set_rng_state(resume_state["rng"])
        log(f"resumed {ckpt_path} at step {step}")
    from_scratch = cfg.init_from is None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.dtype == "bfloat16"
                and str(device).startswith("cuda") else nullcontext())

    def checkpoint(val_losses, write=True):
        """Write the full training state (rank 0 writes; under FSDP every rank first helps gather it) and
        return the model's full state dict."""
        model_state, optim_state = raw_model.state_dict(), optimizer.state_dict()
        if cfg.fsdp and ddp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)
            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(raw_model, options=full)
            optim_state = get_optimizer_state_dict(raw_model, optimizer, options=full)
        if master and write:
            save_checkpoint(ckpt_path, raw_model, tokenizer, state_dict=model_state, config=vars(cfg), step=step,
                            optimizer=optim_state, rng=torch.get_rng_state(),
                            metadata={"val_loss_per_exit": val_losses} if val_losses else {})
        return model_state

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size * world
    log(f"training steps {step}..{cfg.max_iters} | {tokens_per_step:,} tokens per step | layer dropout "
        f"p_max={cfg.p_max} ({'S(t) from scratch' if from_scratch else 'S=1'}) | early exit e_scale={cfg.e_scale}"
        f" curriculum={cfg.curriculum} R={cfg.rotation}")
    t_start, step_times, done_here, saved_at = time.time(), [], 0, step
    skips_digest = hashlib.sha256()  # every layer-dropout decision of this invocation: must agree across ranks
    val_losses = (resume_state or {}).get("metadata", {}).get("val_loss_per_exit")
    try:
        while step < cfg.max_iters:
            if cfg.stop_after is not None and done_here >= cfg.stop_after:
                break
            t0 = time.time()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rates, weights = layerskip_schedule(step, cfg, from_scratch)
            loss_sum = onpolicy_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(data["train"], cfg, step, micro, rank, world, device)
                last = micro == cfg.grad_accum - 1
                if ddp and cfg.fsdp:
                    model.set_requires_gradient_sync(last)  # reduce-scatter gradients once per step
                sync = model.no_sync() if (ddp and not cfg.fsdp and not last) else nullcontext()
                with sync, autocast:
                    loss, _ = model(x, y, exit_weights=weights, drop_rates=rates, seed=cfg.seed,
                                    step=step * cfg.grad_accum + micro)
                    total = loss
                    if cfg.onpolicy_data:  # other windows than the real data's: micro-batch ids past grad_accum
                        xo, yo = get_batch(data["onpolicy"], cfg, step, cfg.grad_accum + micro, rank, world, device)
                        onpolicy = exit_loss(raw_model, xo, yo, cfg.exit_always)
                        total = loss + cfg.onpolicy_weight * onpolicy
                        onpolicy_sum += onpolicy.item() / cfg.grad_accum
                    (total / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                skips_digest.update(raw_model.last_skips.numpy().tobytes())
            if ddp:  # log the global batch's loss, not this rank's share
                import torch.distributed as dist
                t = torch.tensor(loss_sum, device=device)  # NCCL reduces CUDA tensors only
                dist.all_reduce(t)
                loss_sum = t.item() / world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            done_here += 1
            step_times.append(time.time() - t0)
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                if ddp:  # checked as the run goes, not hours later
                    check_same_skips(skips_digest, world)
                dt = sorted(step_times[-50:])[len(step_times[-50:]) // 2]
                eta = dt * (cfg.max_iters - step)
                onpolicy_note = f" | exit {cfg.exit_always} on-policy {onpolicy_sum:.4f}" if cfg.onpolicy_data else ""
                log(f"step {step:>6}/{cfg.max_iters} | loss {loss_sum:.4f}{onpolicy_note} | lr {lr:.2e} | "
                    f"{tokens_per_step / dt:,.0f} tok/s | {1000 * dt:.0f} ms/step | ETA {fmt_time(eta)}", flush=True)
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                val_losses = evaluate(raw_model, data["val"], cfg, device, autocast)  # all ranks: FSDP gathers
                if master:
                    log("val loss by exit: " + " ".join(f"{l + 1}:{v:.3f}" for l, v in enumerate(val_losses)),
                        flush=True)
                    with open(out_dir / "log.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, "val_loss_per_exit": val_losses,
                                            "time": time.time() - t_start}) + "\n")
                checkpoint(val_losses)
                saved_at = step
    except KeyboardInterrupt:
        log(f"\ninterrupted at step {step}: writing {ckpt_path} (continue with --resume)")
    model_state = checkpoint(val_losses, write=saved_at != step)
    if master and step == cfg.max_iters:
        export = out_dir / "model.pt"  # weights only, fp16: the file to share or ship
        save_checkpoint(export, raw_model, tokenizer, state_dict=model_state, half=True, config=vars(cfg), step=step,
                        metadata={"val_loss_per_exit": val_losses} if val_losses else {})
        log(f"done: {ckpt_path} (full state) and {export} (fp16 weights, {export.stat().st_size / 2**20:.1f} MiB)"
            f" in {fmt_time(time.time() - t_start)}")
    if ddp:
        import torch.distributed as dist
        check_same_skips(skips_digest, world, announce=master)
        if not cfg.fsdp:  # every DDP replica must end with the same weights
            digest = hashlib.sha256()
            for p in raw_model.parameters():
                digest.update(p.detach().cpu().numpy().tobytes())
            digests = [None] * world
            dist.all_gather_object(digests, digest.hexdigest()[:16])
            log(f"parameter digests by rank: {' '.join(digests)} "
                f"({'identical' if len(set(digests)) == 1 else 'DIFFERENT: the ranks diverged'})")
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
