"""
Does torch.compile (inductor, on CPU) make the pieces of decoding cheaper? Eager vs compiled transformer blocks
of the same model: one autoregressive step, one draft step and the verification of k drafts (bench.round_costs),
then whole greedy decodes (autoregressive and self-speculative) on dev prompts, the variants interleaved.

    python experiments/compile.py --threads 1 > experiments/levers/compile.md

Each block is compiled with dynamic shapes (one graph serves all 32 blocks, every position and every length),
so the compile time is paid once per kind of call: one token without a mask, several with one. It is reported
apart, with the first calls that trigger it.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import layerskip as ls  # noqa: E402
from bench import round_costs  # noqa: E402
from common import interleaved_runs, machine, prompt_set  # noqa: E402
from model_io import load_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/layerskip-python-deep.pt")
    p.add_argument("--exit", type=int, default=4)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--n_prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# `python experiments/compile.py {' '.join(sys.argv[1:])}`\n# machine: {machine()}, torch "
          f"{torch.__version__}\n")
    eager, tok = load_model(args.checkpoint)
    compiled = copy.deepcopy(eager)
    for block in compiled.layers:
        block.compile(dynamic=True)
    t0 = time.perf_counter()
    prompts = prompt_set("dev")[:args.n_prompts]
    for kw in ({}, dict(strategy="self_speculative", exit_layer=args.exit, num_speculations=args.d)):
        ls.generate(compiled, tok.encode(prompts[0]), 16, **kw)  # every kind of call, compiled once
    print(f"compile time (first decodes, every kind of call): {time.perf_counter() - t0:.0f} s\n")

    pieces = {name: [] for name in ("eager", "compiled")}
    for _ in range(args.repeats):  # interleaved
        for name, model in (("eager", eager), ("compiled", compiled)):
            pieces[name].append(round_costs(model, args.exit, args.d))
    print("| piece (ms, median of repeats) | eager | compiled | compiled / eager |\n|---|---|---|---|")
    rows = [("autoregressive step", "ar_step", None), ("draft step", "draft_step", None)]
    rows += [(f"verify {k} drafts", "verify_by_drafts", k) for k in range(args.d + 1)]
    ratios = {}
    for label, key, k in rows:
        e, c = (statistics.median(r[key] if k is None else r[key][k] for r in pieces[n]) for n in pieces)
        print(f"| {label} | {1e3 * e:.2f} | {1e3 * c:.2f} | {c / e:.2f} |")
        ratios[label] = (e, c)
    for n, i in (("eager", 0), ("compiled", 1)):
        ar = ratios["autoregressive step"][i]
        print(f"\n{n}: draft step / AR step {ratios['draft step'][i] / ar:.3f}, verify {args.d} drafts / AR step "
              f"{ratios[f'verify {args.d} drafts'][i] / ar:.3f}", end="")
    print("\n")

    ss = dict(strategy="self_speculative", exit_layer=args.exit, num_speculations=args.d)
    variants = {"eager AR": (eager, tok, {}), "compiled AR": (compiled, tok, {}),
                "eager self-spec": (eager, tok, ss), "compiled self-spec": (compiled, tok, ss)}
    runs = {name: [[] for _ in range(args.repeats)] for name in variants}  # name -> pass -> Generations
    for r, _, name, gen in interleaved_runs(variants, prompts, 64, args.repeats):
        runs[name][r].append(gen)
    seconds = {name: statistics.median(sum(g.seconds for g in rep) for rep in passes)
               for name, passes in runs.items()}
    tokens = {name: sum(len(g.tokens) for g in passes[0]) for name, passes in runs.items()}
    print(f"| decode ({len(prompts)} dev prompts, 64 tokens, median of {args.repeats}) | tokens/s | vs eager AR |\n"
          "|---|---|---|")
    for name in variants:
        print(f"| {name} | {tokens[name] / seconds[name]:.1f} | "
              f"{tokens[name] / seconds[name] / (tokens['eager AR'] / seconds['eager AR']):.2f}x |")
    same = all(a.tokens == b.tokens for n1, n2 in (("eager AR", "compiled AR"), ("eager self-spec", "compiled self-spec"))
               for a, b in zip(runs[n1][0], runs[n2][0]))
    print(f"\ncompiled output identical to eager: {same}")


if __name__ == "__main__":
    main()
