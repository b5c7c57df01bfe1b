"""
Pilots for the deep reference model: which shape and which recipe make shallow exits agree with the last layer?

    python pilots.py            # trains the pilot runs two at a time (one thread each), then writes docs/pilots.md

Every pilot trains for the same number of steps on the same batches (equal tokens), from the python-deep preset,
with one thing changed. Pilots are short (300 steps of 8 x 128 tokens, a few minutes each on one core), so they
rank choices; they do not predict the final numbers. For each run the table gives the last layer's validation
loss and, at a few exits, the teacher-forced top-1 agreement with the last layer: the per-token acceptance rate
of greedy self-speculative decoding on held-out text. A draft step's cost relative to a full autoregressive step
(batch 1, one thread) is measured for each shape.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import layerskip as ls

SHORT = ["--max_iters", "300", "--batch_size", "8", "--block_size", "128", "--warmup_iters", "30",
         "--eval_interval", "300", "--log_interval", "50", "--e_scale", "0.2"]  # the control is e_scale 0.2
# name: (what changes, train.py flags on top of --preset python-deep and SHORT)
PILOTS = {
    "control": ("32 blocks of width 128, p_max 0.1, e_scale 0.2, rotational R=4", []),
    "exit4-always": ("early-exit loss at exit 4 on at every step", ["--exit_always", "4"]),
    "e_scale1": ("e_scale 1.0 instead of 0.2", ["--e_scale", "1.0"]),
    "final-phase": ("the last 25% of steps at e_scale 1.0", ["--final_iters", "75", "--final_e_scale", "1.0"]),
    "p_max0.2": ("p_max 0.2 instead of 0.1", ["--p_max", "0.2"]),
    "shape-16x192": ("16 blocks of width 192 (6 heads, 3 KV)",
                     ["--n_layers", "16", "--dim", "192", "--n_heads", "6", "--n_kv_heads", "3"]),
}
EXITS = (2, 4, 6, 8, 12, 16)


def train_all(names, out_root, parallel):
    """Run the pilots' train.py commands, `parallel` at a time, one thread each; skip finished ones."""
    todo = [n for n in names if not (out_root / n / "model.pt").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = []
    while todo or running:
        while todo and len(running) < parallel:
            n = todo.pop(0)
            cmd = [sys.executable, "train.py", "--preset", "python-deep", *SHORT, *PILOTS[n][1],
                   "--out_dir", str(out_root / n)]
            print("$ " + " ".join(cmd[1:]), flush=True)
            log = open(out_root / f"{n}.log", "w")
            running.append((n, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        time.sleep(2)
        for item in list(running):
            n, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode:
                    for _, other, _ in running:
                        other.terminate()
                    sys.exit(f"pilot {n} failed: see {out_root / n}.log")
                print(f"  {n}: done in {time.time() - t0:.0f} s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(PILOTS), help="run only these pilots")
    p.add_argument("--out_root", default="out/pilots", help="where the pilot runs go")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--out", default="docs/pilots.md", help="the table")
    args = p.parse_args(argv)
    from bench import round_costs
    from eval import per_exit_metrics, validation_documents
    names = args.only or list(PILOTS)
    out_root = Path(args.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    train_all(names, out_root, args.parallel)

    torch.set_num_threads(1)
    docs = validation_documents("python")
    rows, costs = [], {}
    for n in names:
        model, tok = ls.load_model(out_root / n / "model.pt")
        r = per_exit_metrics(model, tok, docs, 64, 127)
        rows.append((n, model.params.n_layers, r))
        shape = (model.params.n_layers, model.params.dim)
        if shape not in costs:
            costs[shape] = {E: round_costs(model, E, 4, repeats=20) for E in (2, 4, 8) if E < shape[0]}
    lines = [f"# Pilots for the deep reference model\n", f"Command: `python pilots.py`. Each run: `python train.py "
             f"--preset python-deep {' '.join(SHORT)}` plus the flags below (300 steps x 1,024 tokens, one thread; the preset's own e_scale is overridden to 0.2 for the control)."
             f" Held-out Python, {rows[0][2]['tokens']:,} tokens.\n",
             "| pilot | change | last-layer loss | " + " | ".join(f"agree@{E}" for E in EXITS) + " |",
             "|---|---|---|" + "---|" * len(EXITS)]
    for n, L, r in rows:
        cells = [f"{r['agreement'][E - 1]:.3f}" if E < L else "-" for E in EXITS]
        flags = f" (`{' '.join(PILOTS[n][1])}`)" if PILOTS[n][1] else ""
        lines.append(f"| {n} | {PILOTS[n][0]}{flags} | {r['loss'][-1]:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Cost of a draft step and of verifying 5 positions, relative to one autoregressive step "
              "(the pilot models themselves, batch 1, one thread; bench.round_costs):", "",
              "| shape | AR step ms | " + " | ".join(f"draft@{E} | verify@{E}" for E in (2, 4, 8)) + " |",
              "|---|---|" + "---|---|" * 3]
    for (L, dim), c in costs.items():
        ar = next(iter(c.values()))["ar_step"]
        cells = [f"{c[E]['draft_step'] / c[E]['ar_step']:.3f} | {c[E]['verify_pass'] / c[E]['ar_step']:.3f}"
                 if E in c else "- | -" for E in (2, 4, 8)]
        lines.append(f"| {L} x {dim} | {1000 * ar:.2f} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
