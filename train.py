"""
Train a Llama with the LayerSkip recipe: layer dropout (eq. 1-4) and the early-exit loss (eq. 5-6).

    python train.py --preset toy                           # a CPU toy: about a minute on one core
    python train.py --preset python --out_dir out/python   # the first, 12-layer shipped model's shape
    python train.py --preset python --p_max 0 --e_scale 0  # its baseline twin: an ordinary Llama
    torchrun --nproc_per_node=8 train.py --preset llama1.5b --data data/mytext
    python train.py --preset llama1.5b --dry_run           # parameter count and memory, nothing allocated
    python train.py ... --exit_always 4 --onpolicy_data data/python/onpolicy.bin   # + exit 4 on the model's own text

Every LayerSkip knob off (--p_max 0 --e_scale 0) is a plain Llama training step. From scratch the layer
dropout rates grow over training (S(t) of eq. 4); with --init_from they are constant (S = 1).

Two numberings of the exits meet here: eq. 6 weighs the output of block l (0-based, l = 0..L-1), and decoding
counts the exit E = the number of blocks run (1..L). --exit_always and the printed losses use E; the loss
weights use l; ls.block_of_exit / ls.exit_of_block convert.
"""

import argparse
import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import common
import layerskip as ls
import onpolicy
from common import ArgumentParser, checked, device_memory, fail, float_range, fmt_bytes, fmt_time, int_range
from data import prepare as corpus
from distributed import Ranks
from model_io import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint, tokenizer_fingerprint

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
    # 4 blocks costs about 0.15 of a full step. Stdlib + torch source, a 2048-piece vocabulary. Shape and recipe:
    # experiments/pilots.md; the fine-tuning phases that followed: recipes/python-deep.sh.
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

# Every setting of a run. Those without a flag (multiple_of, min_lr_ratio, weight_decay, beta2, grad_clip) are
# Llama 2's and the paper's choices; a preset may change them.
DEFAULTS = dict(data="data/shakespeare", dim=256, n_layers=12, n_heads=8, n_kv_heads=None, vocab_size=None,
                multiple_of=32, block_size=256, tie_embeddings=False, batch_size=16, grad_accum=1,
                max_iters=1000, lr=1e-3, min_lr_ratio=0.1, warmup_iters=100, weight_decay=0.1, beta2=0.95,
                grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10, p_max=0.0, e_scale=0.0,
                curriculum="rotational", rotation=4, exit_always=None, exit_always_weight=0.0, final_iters=0,
                final_e_scale=1.0, **onpolicy.DEFAULTS, device="cpu", dtype="float32", compile=False, fsdp=False,
                seed=1337, threads=None, preset=None, init_from=None, resume=False, stop_after=None, force=False,
                dry_run=False)

DEFAULT_THREADS = max(1, (os.cpu_count() or 2) // 2)  # torch's default (every core) starves a shared machine
STEPS = 10**9  # more optimizer steps than any run takes: a larger count is a typo
RUN_FILES = ("ckpt.pt", "model.pt", "log.jsonl")  # what a run writes into --out_dir


# ---------------------------------------------------------------------------------------------------------
# 1. Configure: flags -> a checked configuration. argparse checks each value's range; the checks below it those
#    that depend on other flags, on files or on the machine. Nothing is created until all have passed.


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="a named configuration; any flag below overrides it")
    a("--out_dir", default=None, help="where checkpoints and the log go (default out/<preset>)")
    a("--force", action="store_true", help="start over in an --out_dir that holds a run, replacing its files")
    a("--data", help="a folder written by a data/*/prepare.py script (train.bin, val.bin, tokenizer.model; or "
                     "tokenizer.pt, from data/prepare.py --tokenizer CHECKPOINT)")
    a("--init_from", help="continue training from this checkpoint (continual pretraining: S(t) = 1)")
    a("--resume", action="store_true", help="continue the run in --out_dir exactly where it stopped")
    a("--stop_after", type=int_range(1), help="stop (with a checkpoint) after this many steps of this invocation")
    a("--dry_run", action="store_true", help="build the model on the meta device, print size and memory, exit")
    a("--threads", type=int_range(1, os.cpu_count() or 1),
      help=f"torch CPU threads (default {DEFAULT_THREADS}: half the cores, so a shared machine keeps the rest)")
    g = p.add_argument_group("model").add_argument
    g("--dim", type=int_range(1, 65536), help="model width")
    g("--n_layers", type=int_range(1, 1024), help="number of transformer blocks L")
    g("--n_heads", type=int_range(1, 1024), help="attention heads (must divide --dim)")
    g("--n_kv_heads", type=int_range(1, 1024), help="key/value heads (grouped-query attention)")
    g("--vocab_size", type=int_range(1, 2**20), help="vocabulary size (default: the tokenizer's)")
    g("--block_size", type=int_range(1, 2**20), help="training sequence length = the context window")
    g("--tie_embeddings", action=argparse.BooleanOptionalAction, help="share embedding and head")
    g = p.add_argument_group("optimisation (AdamW, linear warm-up, cosine decay to 10%)").add_argument
    g("--batch_size", type=int_range(1, 65536), help="sequences per micro-batch per process")
    g("--grad_accum", type=int_range(1, 65536), help="micro-batches per optimizer step")
    g("--max_iters", type=int_range(1, STEPS), help="optimizer steps T of the whole run")
    g("--lr", type=float_range(0, 1, low_open=True), help="peak learning rate (the paper doubles it with dropout)")
    g("--warmup_iters", type=int_range(0, STEPS), help="linear warm-up steps before the cosine decay")
    g = p.add_argument_group("LayerSkip").add_argument
    g("--p_max", type=float_range(0, 1), help="layer dropout rate of the last block (0 = off)")
    g("--e_scale", type=float_range(0, 100), help="early-exit loss scale (0 = last layer only)")
    g("--curriculum", choices=ls.CURRICULA, help="which exits are trained at each step")
    g("--rotation", type=int_range(1), help="R of the rotational curriculum: every R-th block")
    g("--exit_always", type=int_range(1), metavar="E",
      help="train exit E (after E blocks) at every step, whatever the curriculum, with its eq. 6 weight")
    g("--exit_always_weight", type=float_range(0, 1), metavar="W",
      help="...or with the fixed share W < 1 of the loss, the other exits scaled by 1 - W: the two-exit loss of the "
           "LayerSkip fine-tuning scripts, (e CE_E + CE_L) / (1 + e), is W = e / (1 + e)")
    g("--final_iters", type=int_range(0, STEPS),
      help="the last this many steps use --final_e_scale (the paper finetunes with e_scale 1.0)")
    g("--final_e_scale", type=float_range(0, 100), help="early-exit loss scale of the final phase (default 1.0)")
    onpolicy.add_train_flags(p.add_argument_group("the draft exit on the model's own text (onpolicy.py)"))
    g = p.add_argument_group("run").add_argument
    g("--eval_interval", type=int_range(1), help="evaluate and checkpoint every this many steps")
    g("--eval_iters", type=int_range(1, 100_000), help="validation batches per evaluation")
    g("--log_interval", type=int_range(1), help="print a progress line every this many steps")
    g("--device", help="cpu, cuda, cuda:1, mps ...")
    g("--dtype", choices=["float32", "bfloat16"], help="bfloat16 = autocast on CUDA")
    g("--compile", action="store_true", help="torch.compile each block (skip logic stays eager)")
    g("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    g("--seed", type=int_range(0, 2**63 - 1), help="seed of data order, initialisation and layer dropout")
    args = p.parse_args(argv)
    cfg = {**DEFAULTS, **PRESETS.get(args.preset, {}), **{k: v for k, v in vars(args).items() if v is not None}}
    cfg["out_dir"] = cfg.get("out_dir") or f"out/{args.preset or 'run'}"
    cfg["cli"] = sorted(k for k, v in vars(args).items() if v is not None and v is not False)  # flags given
    return argparse.Namespace(**cfg)


def resume_config(cfg):
    """--resume: the stopped run's checkpoint and its own configuration (this invocation may only say where the
    run is, when to stop and how many threads to use)."""
    try:
        state = load_checkpoint(Path(cfg.out_dir) / "ckpt.pt")
    except CheckpointError as e:
        fail(f"cannot resume: {e}")
    extra = set(cfg.cli) - {"resume", "stop_after", "out_dir", "threads"}
    if extra:
        fail(f"--resume continues the run with its own configuration: drop --{', --'.join(sorted(extra))}")
    keep = {"resume": True, "stop_after": cfg.stop_after, "out_dir": cfg.out_dir, "cli": cfg.cli,
            "threads": cfg.threads, "force": False}
    return argparse.Namespace(**{**DEFAULTS, **state["config"], **keep}), state  # DEFAULTS: knobs added since


def check_flags(cfg, ranks):
    """The checks that join two flags, or a flag and the processes or the machine."""
    if cfg.final_iters > cfg.max_iters:
        fail(f"--final_iters {cfg.final_iters} is more than --max_iters {cfg.max_iters}: the final phase is the "
             f"last part of the run")
    if cfg.exit_always_weight >= 1:
        fail(f"--exit_always_weight must be below 1 (the other exits keep 1 - W), got {cfg.exit_always_weight}")
    if cfg.exit_always_weight > 0 and cfg.exit_always is None:
        fail("--exit_always_weight W is the share of one exit: name it with --exit_always E")
    onpolicy.check_train_flags(cfg, ranks.distributed)
    if cfg.dry_run:  # it allocates nothing, so it may name a device this machine lacks (cuda on a laptop)
        return
    checked(common.check_device, cfg.device)
    if torch.device(cfg.device).type not in ("cpu", "cuda", "mps"):
        fail(f"--device {cfg.device}: train on cpu, cuda or mps")


def check_model(cfg):
    """The model's shape (from the flags and preset, or from --init_from) and the exit trained at every step."""
    checked(model_args, cfg)  # ModelArgs refuses a shape no attention can use
    if cfg.exit_always is not None and cfg.exit_always > cfg.n_layers:
        fail(f"--exit_always {cfg.exit_always} is not an exit of this model: use 1..{cfg.n_layers}")


def check_paths(cfg):
    """--data can be read or built, --out_dir can hold this run."""
    checked(corpus.check_corpus, cfg.data)
    corpus.check_out_dir(cfg.out_dir)
    out = Path(cfg.out_dir)
    held = [name for name in RUN_FILES[:2] if (out / name).exists()]
    if held and not (cfg.resume or cfg.force):
        fail(f"--out_dir {out} already holds a run ({', '.join(held)}): continue it with --resume, replace it with "
             f"--force, or give another --out_dir")


def configure(argv, ranks):
    """The run's configuration, every value checked, and the stopped run's state on --resume (else None)."""
    cfg = parse_args(argv)
    cfg, state = resume_config(cfg) if cfg.resume else (cfg, None)
    torch.set_num_threads(cfg.threads or DEFAULT_THREADS)  # before anything runs: loading uses the threads too
    check_flags(cfg, ranks)
    if not cfg.dry_run:
        check_paths(cfg)
    return cfg, state


# ---------------------------------------------------------------------------------------------------------
# 2. Data: random windows of the token memmaps. The windows of step t are a pure function of (seed, t), so a
#    resumed run sees exactly the batches it would have seen, and all ranks together see one global batch.


def load_data(cfg, ranks, init_tokenizer=None):
    """The token splits and the tokenizer, checked against the model to be trained: same tokenizer as
    --init_from, ids inside the vocabulary, at least one window of block_size + 1 tokens; and the on-policy text."""
    if ranks.master and not corpus.data_ready(cfg.data):  # built on first use: rank 0 builds, the others wait
        checked(corpus.build_folder, cfg.data)
    ranks.barrier()
    data, tokenizer = checked(corpus.open_corpus, cfg.data, cfg.block_size)
    if init_tokenizer is not None:
        if tokenizer_fingerprint(init_tokenizer) != tokenizer_fingerprint(tokenizer):
            fail(f"--init_from {cfg.init_from} uses another tokenizer than {cfg.data}: prepare the data with the "
                 f"checkpoint's tokenizer: python data/prepare.py --tokenizer {cfg.init_from} --input ... "
                 f"--out_dir {cfg.data}")
        tokenizer = init_tokenizer  # the checkpoint's: with its BOS rule and chat template, into every checkpoint
    cfg.vocab_size = cfg.vocab_size or tokenizer.vocab_size
    if cfg.vocab_size < tokenizer.vocab_size:
        fail(f"--vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} in {cfg.data}: "
             f"pass a larger one, or rebuild the data (an older build?) with its prepare.py")
    return data, tokenizer, checked(onpolicy.open_text, cfg, tokenizer.vocab_size)


def batch_generator(cfg, step, micro) -> torch.Generator:
    """The generator of one micro-batch's windows: a function of (seed, step, micro-batch) alone, so a resumed run
    draws the same windows. (The on-policy text takes micro-batch ids past grad_accum: other windows.)"""
    return torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + micro) % 2**63)


def get_batch(data, cfg, step, micro, rank, world, device):
    """This rank's share of the micro-batch's windows: x [batch_size, block_size] and y, x shifted by one."""
    T, g = cfg.block_size, batch_generator(cfg, step, micro)
    starts = torch.randint(len(data) - T - 1, (cfg.batch_size * world,), generator=g)
    starts = starts[rank * cfg.batch_size:(rank + 1) * cfg.batch_size].tolist()
    x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in starts])
    return x.to(device), y.to(device)


# ---------------------------------------------------------------------------------------------------------
# 3. The model: new, from --init_from (whose shape wins), or the stopped run's; sized before it is allocated.


def load_init(cfg):
    """--init_from (ours, Meta's, Hugging Face's or a GGUF file): the model and its tokenizer, or (None, None). Its
    shape, context and head replace the configuration's; a shape flag given on the command line must agree."""
    if not cfg.init_from or cfg.resume:
        return None, None
    try:
        init, init_tokenizer = load_model(cfg.init_from, dtype=torch.float32)
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError
        fail(f"--init_from: {e}")
    a = init.params
    theirs = dict(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads or a.n_heads,
                  vocab_size=a.vocab_size)
    clash = {k: (getattr(cfg, k), v) for k, v in theirs.items() if k in cfg.cli and getattr(cfg, k) != v}
    if clash:
        fail(f"--init_from {cfg.init_from} does not match the model asked for: "
             + ", ".join(f"{k}: {a} here vs {b} in the checkpoint" for k, (a, b) in clash.items())
             + "; drop those flags or pass matching ones")
    vars(cfg).update(theirs)
    cfg.block_size = min(cfg.block_size, a.max_seq_len)  # train on windows that fit its context
    cfg.tie_embeddings = a.tie_word_embeddings
    return init, init_tokenizer


def model_args(cfg) -> ls.ModelArgs:
    return ls.ModelArgs(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                        vocab_size=cfg.vocab_size, multiple_of=cfg.multiple_of, max_seq_len=cfg.block_size,
                        tie_word_embeddings=bool(cfg.tie_embeddings))


def size_model(cfg, ranks, device=None) -> dict:
    """The parameters (from one block built on the meta device: nothing allocated) and the memory per GPU: fp32
    weights, gradients and AdamW moments (sharded under FSDP), activations, and every trained exit's logits. Prints
    both and stops if they pass what the device has. Returns the sizes."""
    with torch.device("meta"):
        block = ls.TransformerBlock(model_args(cfg))  # the model: L blocks, the embedding, the head, a norm
    heads = 1 if cfg.tie_embeddings else 2
    n_params = cfg.n_layers * sum(p.numel() for p in block.parameters()) + heads * cfg.vocab_size * cfg.dim + cfg.dim
    states = 16 * n_params / (ranks.world if cfg.fsdp else 1)
    tokens = cfg.batch_size * cfg.block_size
    activations = tokens * cfg.n_layers * cfg.dim * 17 * (2 if cfg.dtype == "bfloat16" else 4)  # ~34 half-words
    exits = 1 + (0 if cfg.e_scale == 0 else math.ceil(cfg.n_layers / cfg.rotation) if cfg.curriculum == "rotational"
                 else cfg.n_layers)
    activations += tokens * cfg.vocab_size * 4 * 2 * exits  # fp32 logits and their softmax, per trained exit
    need = states + activations
    ranks.log(f"model: {n_params / 1e6:.2f}M parameters, dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads "
              f"({cfg.n_kv_heads or cfg.n_heads} kv), context {cfg.block_size}, vocab {cfg.vocab_size}")
    ranks.log(f"memory per GPU (estimate): weights+grads+AdamW {fmt_bytes(states)}, activations "
              f"{fmt_bytes(activations)}, total {fmt_bytes(need)}")
    have = device_memory(device) if device else None
    shared = ranks.local if torch.device(device or "cpu").type == "cpu" else 1  # the ranks on one CPU share its RAM
    if have and need * shared > have:
        fail(f"this run needs about {fmt_bytes(need * shared)} (estimate), more than the {fmt_bytes(have)} of "
             f"{device}: use a smaller --batch_size or --block_size (--grad_accum keeps the tokens per step), or a "
             f"smaller model")
    return dict(n_params=n_params, dim=cfg.dim, n_heads=cfg.n_heads, n_layers=cfg.n_layers, context=cfg.block_size,
                vocab_size=cfg.vocab_size, ffn_hidden=block.feed_forward.w1.out_features, memory_bytes=int(need))


def new_model(cfg, init, resume_state, device):
    """The model to train, in fp32 on this rank's device: --init_from's, the stopped run's, or a new one."""
    torch.manual_seed(cfg.seed)
    if init is not None:
        return init.to(device).train()
    if resume_state is not None:
        return build_model(resume_state, device, torch.float32).train()
    return ls.Transformer(model_args(cfg)).to(device)


# ---------------------------------------------------------------------------------------------------------
# 4. The optimizer and the schedules: learning rate, layer dropout rates and early-exit weights of step t.


def make_optimizer(model, cfg, resume_state, ranks):
    """AdamW, weight decay on matrices only; on --resume with the stopped run's state and RNG. Returns it and the
    step to start from."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))
    if resume_state is None:
        return optimizer, 0
    ranks.load_optimizer(model, optimizer, resume_state["optimizer"], cfg.fsdp)
    torch.set_rng_state(resume_state["rng"])
    ranks.log(f"resumed {Path(cfg.out_dir) / 'ckpt.pt'} at step {resume_state['step']}")
    return optimizer, resume_state["step"]


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay that reaches min_lr_ratio * lr at step max_iters."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))


def layerskip_schedule(step, cfg, from_scratch):
    """This step's layer dropout rates (eq. 2-4; zeros when off) and early-exit weights (eq. 6 with the
    curriculum), keyed by block l."""
    L = cfg.n_layers
    rates = [0.0] * L
    if cfg.p_max > 0:
        rates = ls.layer_dropout_rates(L, cfg.p_max, step if from_scratch else None, cfg.max_iters)
    weights = None
    e_scale = cfg.final_e_scale if step >= cfg.max_iters - cfg.final_iters else cfg.e_scale
    always = ls.block_of_exit(cfg.exit_always) if cfg.exit_always else None  # the block that exit E reads
    if e_scale > 0:
        exits = ls.early_exit_curriculum(L, step, cfg.curriculum, cfg.rotation, cfg.max_iters)
        weights = ls.early_exit_weights(L, e_scale, sorted(set(exits) | {always}) if always is not None else exits)
    w = cfg.exit_always_weight
    if always is not None and w > 0:  # a fixed share for the draft exit, the rest as eq. 6 (or the last layer) says
        weights = {l: (1 - w) * v for l, v in (weights or {L - 1: 1.0}).items()}
        weights[always] = weights.get(always, 0.0) + w
    return rates, weights


# ---------------------------------------------------------------------------------------------------------
# 5. Training: steps, progress lines, evaluation at every exit, checkpoints.


@dataclass
class Run:
    """What the training steps share."""
    cfg: argparse.Namespace
    ranks: Ranks
    device: str
    data: dict  # "train", "val": token memmaps
    tokenizer: object
    model: torch.nn.Module  # as this rank trains it (DDP / FSDP under torchrun)
    raw: ls.Transformer  # the model itself
    optimizer: torch.optim.Optimizer
    autocast: object
    onpolicy: Optional[onpolicy.OnPolicyText]  # --onpolicy_data: the model's own text, or None


def train_step(run, step, skips):
    """One optimizer step of grad_accum micro-batches. Returns the learning rate, the loss (mean over the global
    batch) and the on-policy loss (this rank's mean). Every layer-dropout draw goes into the digest `skips`."""
    cfg = run.cfg
    lr = lr_at(step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    rates, weights = layerskip_schedule(step, cfg, from_scratch=cfg.init_from is None)
    loss_sum = onpolicy_sum = 0.0
    for micro in range(cfg.grad_accum):
        x, y = get_batch(run.data["train"], cfg, step, micro, run.ranks.rank, run.ranks.world, run.device)
        seed, draw = cfg.seed, step * cfg.grad_accum + micro  # one layer-dropout draw per micro-batch
        with run.ranks.accumulate(run.model, cfg.fsdp, last=micro == cfg.grad_accum - 1), run.autocast:
            loss, _ = run.model(x, y, exit_weights=weights, drop_rates=rates, seed=seed, step=draw)
            total = loss
            if run.onpolicy is not None:  # exit --exit_always on the model's own text (onpolicy.py)
                g = batch_generator(cfg, step, cfg.grad_accum + micro)  # other windows than the real data's
                extra = run.onpolicy.loss(run.raw, g, run.device)
                total = loss + cfg.onpolicy_weight * extra
                onpolicy_sum += extra.item() / cfg.grad_accum
            (total / cfg.grad_accum).backward()
        loss_sum += loss.item() / cfg.grad_accum
        # what every sample skipped, [L, batch] booleans: the very masks the forward pass drew
        skipped = torch.stack([ls.layer_dropout_mask(len(x), p, seed, draw, l) for l, p in enumerate(rates)])
        skips.update(skipped.numpy().tobytes())
    loss_sum = run.ranks.mean(loss_sum, run.device)  # the global batch's loss, not this rank's share
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.raw.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr, loss_sum, onpolicy_sum


@torch.no_grad()
def evaluate(model, data, cfg, device, autocast):
    """Mean validation loss at every block l's output (exit E = l + 1), on fixed windows of the validation split."""
    model.eval()
    L = cfg.n_layers
    totals = torch.zeros(L)
    for i in range(cfg.eval_iters):
        x, y = get_batch(data, cfg, step=-1 - i, micro=0, rank=0, world=1, device=device)
        with autocast:
            _, per_exit = model(x, y, exit_weights={l: 1.0 / L for l in range(L)})
        totals += torch.tensor([per_exit[l].item() for l in range(L)])
    model.train()
    return (totals / cfg.eval_iters).tolist()


def check_same_skips(digest, ranks, announce=False):
    """Every rank must draw the same layer-dropout pattern (the paper seeds every GPU alike). Only the digests of the
    draws can show it: DDP averages gradients, so replicas agree even when each skipped other blocks."""
    if not ranks.agree("layer-dropout", digest, announce):
        fail("the ranks drew different layer-dropout patterns: layer_dropout_mask must depend only on "
             "(seed, step, layer)")


def save(run, step, val_losses, write=True):
    """Write the full training state to ckpt.pt, atomically (rank 0 writes; under FSDP every rank first helps
    gather it). Returns the model's full state dict."""
    model_state, optim_state = run.ranks.full_state(run.raw, run.optimizer, run.cfg.fsdp)
    if run.ranks.master and write:
        save_checkpoint(Path(run.cfg.out_dir) / "ckpt.pt", run.raw, run.tokenizer, state_dict=model_state,
                        config=vars(run.cfg), step=step, optimizer=optim_state, rng=torch.get_rng_state(),
                        metadata={"val_loss_per_exit": val_losses} if val_losses else {})
    return model_state


def evaluate_and_save(run, step, t_start):
    """Validation loss at every exit, printed and appended to log.jsonl; then a checkpoint. Returns the losses."""
    val_losses = evaluate(run.raw, run.data["val"], run.cfg, run.device, run.autocast)  # all ranks: FSDP gathers
    if run.ranks.master:
        print("val loss by exit E: " + " ".join(f"{ls.exit_of_block(l)}:{v:.3f}" for l, v in enumerate(val_losses)),
              flush=True)
        with open(Path(run.cfg.out_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "val_loss_per_exit": val_losses, "time": time.time() - t_start}) + "\n")
    save(run, step, val_losses)
    return val_losses


def train(run, step, val_losses, t_start):
    """Train from `step` to max_iters (or --stop_after steps, or Ctrl-C), with progress lines, evaluations and
    checkpoints. Returns the step reached, the step last saved, the last validation losses and the digest of every
    layer-dropout draw."""
    cfg, ranks = run.cfg, run.ranks
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size * ranks.world
    ranks.log(f"training steps {step}..{cfg.max_iters} | {tokens_per_step:,} tokens per step | layer dropout "
              f"p_max={cfg.p_max} ({'S(t) from scratch' if cfg.init_from is None else 'S=1'}) | early exit "
              f"e_scale={cfg.e_scale} curriculum={cfg.curriculum} R={cfg.rotation}")
    step_times, first, saved_at = [], step, step
    skips = hashlib.sha256()  # every layer-dropout decision of this invocation: must agree across ranks
    try:
        while step < cfg.max_iters and (cfg.stop_after is None or step - first < cfg.stop_after):
            t0 = time.time()
            lr, loss, onpolicy_loss = train_step(run, step, skips)
            step += 1
            step_times.append(time.time() - t0)
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                if ranks.distributed:  # checked as the run goes, not hours later
                    check_same_skips(skips, ranks)
                dt = sorted(step_times[-50:])[len(step_times[-50:]) // 2]
                note = f" | exit {cfg.exit_always} on-policy {onpolicy_loss:.4f}" if run.onpolicy is not None else ""
                ranks.log(f"step {step:>6}/{cfg.max_iters} | loss {loss:.4f}{note} | lr {lr:.2e} | "
                          f"{tokens_per_step / dt:,.0f} tok/s | {1000 * dt:.0f} ms/step | ETA "
                          f"{fmt_time(dt * (cfg.max_iters - step))}", flush=True)
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                val_losses = evaluate_and_save(run, step, t_start)
                saved_at = step
    except KeyboardInterrupt:
        ranks.log(f"\ninterrupted at step {step}: writing {Path(cfg.out_dir) / 'ckpt.pt'} (continue with --resume)")
    return step, saved_at, val_losses, skips


def finish(run, step, saved_at, val_losses, skips, t_start):
    """The last checkpoint (if the last step has none yet) and, at max_iters, model.pt; under torchrun, the check
    that every rank drew the same layer dropout and (DDP) holds the same weights."""
    cfg, ranks = run.cfg, run.ranks
    model_state = save(run, step, val_losses, write=saved_at != step)
    if ranks.master and step == cfg.max_iters:
        export = Path(cfg.out_dir) / "model.pt"  # weights only, fp16: the file to share or ship
        save_checkpoint(export, run.raw, run.tokenizer, state_dict=model_state, half=True, config=vars(cfg),
                        step=step, metadata={"val_loss_per_exit": val_losses} if val_losses else {})
        print(f"done: {Path(cfg.out_dir) / 'ckpt.pt'} (full state) and {export} (fp16 weights, "
              f"{export.stat().st_size / 2**20:.1f} MiB) in {fmt_time(time.time() - t_start)}")
    if ranks.distributed:
        check_same_skips(skips, ranks, announce=ranks.master)
    ranks.close(run.raw, cfg.fsdp)  # DDP: every replica must end with the same weights


def open_out_dir(cfg, ranks):
    """Create --out_dir (rank 0); --force clears the run it held, so that its files never mix with this one's."""
    if ranks.master:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES if cfg.force else ():
            (Path(cfg.out_dir) / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The recipe: configure -> processes -> data -> model -> optimizer -> train -> finish. Every value is checked
# before anything is created; the output folder is the first thing made.


def main(argv=None):
    ranks = Ranks()  # this process among torchrun's (or alone)
    cfg, resume_state = configure(argv, ranks)  # 1. flags (or the stopped run's config), every value checked
    init, init_tokenizer = load_init(cfg)  # --init_from: the checkpoint's shape wins
    check_model(cfg)
    if cfg.dry_run:
        cfg.vocab_size = cfg.vocab_size or 32000
        ranks.log(json.dumps(size_model(cfg, ranks)))
        return
    device = ranks.start(cfg.device)  # processes: one, or torchrun's ranks (distributed.py)
    data, tokenizer, onpolicy_text = load_data(cfg, ranks, init_tokenizer)  # 2. data, built on first use
    size_model(cfg, ranks, device)  # 3. the model: does it fit?
    model = new_model(cfg, init, resume_state, device)
    ranks.log("config: " + json.dumps({k: v for k, v in sorted(vars(cfg).items())}))
    open_out_dir(cfg, ranks)  # the first thing created
    if cfg.compile:
        for block in model.layers:
            block.compile()
    wrapped = ranks.wrap(model, cfg.fsdp, find_unused=cfg.p_max > 0)
    optimizer, step = make_optimizer(model, cfg, resume_state, ranks)  # 4. optimizer (resumed)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.dtype == "bfloat16"
                and str(device).startswith("cuda") else nullcontext())
    run = Run(cfg, ranks, device, data, tokenizer, wrapped, model, optimizer, autocast, onpolicy_text)
    val_losses = (resume_state or {}).get("metadata", {}).get("val_loss_per_exit")
    t_start = time.time()
    step, saved_at, val_losses, skips = train(run, step, val_losses, t_start)  # 5. train
    finish(run, step, saved_at, val_losses, skips, t_start)  # the last checkpoint, model.pt


if __name__ == "__main__":
    main()
