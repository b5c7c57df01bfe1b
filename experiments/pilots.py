"""
Pilots for the deep reference model: which shape and which recipe make shallow exits agree with the last layer?

    python experiments/pilots.py     # trains the pilot runs two at a time (one thread each), then writes
                                     # experiments/pilots.md

Every pilot trains for the same number of steps on the same batches (equal tokens), from the python-deep preset,
with one thing changed. Pilots are short (300 steps of 8 x 128 tokens, a few minutes each on one core), so they
rank choices; they do not predict the final numbers. For each run the table gives the last layer's validation
loss and, at a few exits, the teacher-forced top-1 agreement with the last layer: the per-token acceptance rate
of greedy self-speculative decoding on held-out text. A draft step's cost relative to a full autoregressive step
(batch 1, one thread) is measured for each shape.

Like a user, the experiment runs the scripts' commands (train.py, then eval.py and bench.py with --json) and
reads their reports; it imports no script, and nothing imports it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: python experiments/pilots.py

from common import ArgumentParser, fail, int_range  # noqa: E402
from model_io import load_model  # noqa: E402

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
            cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "python-deep", *SHORT, *PILOTS[n][1],
                   "--out_dir", str(out_root / n)]
            print("$ train.py " + " ".join(cmd[2:]), flush=True)
            log = open(out_root / f"{n}.log", "w")
            running.append((n, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                            time.time()))
        time.sleep(2)
        for item in list(running):
            n, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode:
                    for _, other, _ in running:
                        other.terminate()
                    fail(f"pilot {n} failed: see {out_root / n}.log")
                print(f"  {n}: done in {time.time() - t0:.0f} s", flush=True)


def run(args: list, log: Path):
    """Run one of the scripts (one thread, in the repository root), its output to `log`; stop if it fails."""
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        fail(f"{args[0]} failed: see {log}")


def measure(names, out_root) -> tuple[list, dict]:
    """Per pilot (name, layers, eval.py's per-exit numbers on 64 held-out windows of 127 tokens), and per shape
    (layers, dim) bench.py's round costs at exits 2, 4 and 8 with d = 4, in ms."""
    paths = [out_root / n / "model.pt" for n in names]  # eval.py names each by its folder: the pilot's name
    run(["eval.py", "--checkpoints", *paths, "--windows", 64, "--block_size", 127, "--n_prompts", 1,
         "--max_new_tokens", 1, "--threads", 1, "--out_dir", out_root / "eval", "--json", out_root / "eval.json"],
        out_root / "eval.log")
    per_exit = json.loads((out_root / "eval.json").read_text())["per_exit"]
    rows, costs = [], {}
    for n, path in zip(names, paths):
        params = load_model(path)[0].params
        rows.append((n, params.n_layers, per_exit[n]))
        shape = (params.n_layers, params.dim)
        for E in (2, 4, 8):
            if shape in costs and E in costs[shape] or E >= shape[0]:
                continue
            report = out_root / f"costs_{n}_exit{E}.json"
            run(["bench.py", "--checkpoint", path, "--baseline", "", "--exit", E, "--num_speculations", 4,
                 "--n_prompts", 1, "--max_new_tokens", 1, "--repeats", 1, "--threads", 1, "--json", report],
                report.with_suffix(".log"))
            costs.setdefault(shape, {})[E] = json.loads(report.read_text())["costs_ms"]
    return rows, costs


def table(rows, costs) -> list[str]:
    """The markdown of experiments/pilots.md: per pilot, last-layer loss and agreement at EXITS; per shape, the
    relative cost of a draft step and of verifying 5 positions."""
    lines = ["# Pilots for the deep reference model\n", f"Command: `python experiments/pilots.py`. Each run: "
             f"`python train.py --preset python-deep {' '.join(SHORT)}` plus the flags below (300 steps x 1,024 "
             f"tokens, one thread; the preset's own e_scale is overridden to 0.2 for the control). Held-out "
             f"Python, {rows[0][2]['tokens']:,} tokens.\n",
             "| pilot | change | last-layer loss | " + " | ".join(f"agree@{E}" for E in EXITS) + " |",
             "|---|---|---|" + "---|" * len(EXITS)]
    for n, L, r in rows:
        cells = [f"{r['agreement'][E - 1]:.3f}" if E < L else "-" for E in EXITS]
        flags = f" (`{' '.join(PILOTS[n][1])}`)" if PILOTS[n][1] else ""
        lines.append(f"| {n} | {PILOTS[n][0]}{flags} | {r['loss'][-1]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Cost of a draft step and of verifying 5 positions, relative to one autoregressive step "
              "(the pilot models themselves, batch 1, one thread; bench.py's round costs):", "",
              "| shape | AR step ms | " + " | ".join(f"draft@{E} | verify@{E}" for E in (2, 4, 8)) + " |",
              "|---|---|" + "---|---|" * 3]
    for (L, dim), c in costs.items():
        ar = next(iter(c.values()))["ar_step"]
        cells = [f"{c[E]['draft_step'] / c[E]['ar_step']:.3f} | {c[E]['verify_pass'] / c[E]['ar_step']:.3f}"
                 if E in c else "- | -" for E in (2, 4, 8)]
        lines.append(f"| {L} x {dim} | {ar:.2f} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="+", choices=sorted(PILOTS), help="run only these pilots")
    p.add_argument("--out_root", default="out/pilots", help="where the pilot runs go")
    p.add_argument("--parallel", type=int_range(1), default=2, help="runs at a time (one thread each)")
    p.add_argument("--out", default=str(Path(__file__).parent / "pilots.md"), help="the table")
    args = p.parse_args(argv)
    names = args.only or list(PILOTS)
    out_root = Path(args.out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    train_all(names, out_root, args.parallel)
    lines = table(*measure(names, out_root))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
