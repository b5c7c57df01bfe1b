"""
What do the LayerSkip training knobs cost per step? Times forward + backward + AdamW step of the same model for:
no LayerSkip, layer dropout alone, the early-exit loss on every exit vs the rotational curriculum, and the full
recipe. Variants are interleaved step by step and reported as medians, with ratios to the plain step.

    python bench_train.py                 # the shipped models' shape (python preset), batch 8 x 256
    python bench_train.py --steps 40 --batch_size 16 --threads 2
"""

import os
import statistics
import sys
import time

import torch

import layerskip as ls
from common import ArgumentParser, checked, device_memory, fail, fmt_bytes, int_range, machine


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int_range(2, 65536), default=192, help="model width")
    p.add_argument("--n_layers", type=int_range(1, 1024), default=12, help="blocks")
    p.add_argument("--n_heads", type=int_range(1, 1024), default=6, help="attention heads (must divide --dim)")
    p.add_argument("--n_kv_heads", type=int_range(1, 1024), default=3, help="key/value heads (must divide --n_heads)")
    p.add_argument("--vocab_size", type=int_range(1, 2**20), default=4096, help="vocabulary")
    p.add_argument("--batch_size", type=int_range(1, 65536), default=8, help="sequences per step")
    p.add_argument("--block_size", type=int_range(1, 2**20), default=256, help="tokens per sequence")
    p.add_argument("--steps", type=int_range(1, 100_000), default=20, help="timed steps per variant")
    p.add_argument("--threads", type=int_range(1, os.cpu_count() or 1), default=min(2, os.cpu_count() or 1),
                   help="torch CPU threads")
    args = p.parse_args(argv)
    checked(ls.ModelArgs, dim=args.dim, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads)  # a shape attention can use
    # weights, gradients and AdamW (16 bytes a parameter), and the activations of a step (~68 bytes per token,
    # layer and width) plus fp32 logits at every exit: more than the machine has is an error, not a swap storm
    params = args.n_layers * 12 * args.dim ** 2 + 2 * args.vocab_size * args.dim
    tokens = args.batch_size * args.block_size
    need = 16 * params + tokens * (args.n_layers * args.dim * 68 + 8 * args.vocab_size * (args.n_layers + 1))
    have = device_memory("cpu")
    if have and need > have:
        fail(f"this shape needs about {fmt_bytes(need)}, more than this machine's {fmt_bytes(have)}: use a "
             f"smaller model, --batch_size or --block_size")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    margs = ls.ModelArgs(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                         vocab_size=args.vocab_size, max_seq_len=args.block_size, tie_word_embeddings=True)
    model = ls.Transformer(margs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    L = args.n_layers
    x = torch.randint(args.vocab_size, (args.batch_size, args.block_size))
    y = torch.randint(args.vocab_size, (args.batch_size, args.block_size))

    def plain(step):
        return {}

    def dropout(p_max):
        return lambda step: {"drop_rates": ls.layer_dropout_rates(L, p_max)}

    def exits(curriculum, rotation=4):
        return lambda step: {"exit_weights": ls.early_exit_weights(
            L, 0.5, ls.early_exit_curriculum(L, step, curriculum, rotation, args.steps))}

    def recipe(step):
        return {**dropout(0.1)(step), **exits("rotational")(step)}

    variants = {"plain Llama step": plain, "layer dropout p_max=0.1": dropout(0.1),
                "layer dropout p_max=0.2": dropout(0.2), "early-exit loss, all exits": exits("none"),
                "early-exit loss, rotational R=4": exits("rotational"),
                "LayerSkip recipe (p_max 0.1, rotational R=4)": recipe}
    times = {n: [] for n in variants}
    for step in range(args.steps + 2):
        for n, kw in variants.items():
            t0 = time.perf_counter()
            loss, _ = model(x, y, seed=0, step=step, **kw(step))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= 2:  # two warm-up steps
                times[n].append(time.perf_counter() - t0)
        print(f"\r  step {step + 1}/{args.steps + 2}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    base = times["plain Llama step"]
    print(f"# bench_train: python {' '.join(sys.argv)}\n# machine: {machine()}\n")
    print(f"## Training step cost ({L} layers, dim {args.dim}, batch {args.batch_size} x {args.block_size}, "
          f"median of {args.steps} interleaved steps)\n")
    print("| variant | ms/step | vs plain step |")
    print("|---|---|---|")
    for n, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"| {n} | {1000 * statistics.median(t):.0f} | {ratio:.2f}x |")
    mean_p = sum(ls.layer_dropout_rates(L, 0.1)) / L
    print(f"\n(mean layer dropout rate at p_max=0.1: {mean_p:.3f}, i.e. {100 * mean_p:.1f}% of block-samples skipped; "
          f"exits per step: all = {L}, rotational R=4 = {len(ls.early_exit_curriculum(L, 0, 'rotational', 4))})")


if __name__ == "__main__":
    main()
