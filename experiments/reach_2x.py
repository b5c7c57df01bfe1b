"""
What would 2x take? The cost model's speedup of greedy self-speculative decoding over per-draft acceptance alpha
and the cost of a draft step, for the best fixed draft length d, with the verification costing v autoregressive
steps; and the same for a perfect stop rule (draft exactly up to the first rejection). Our measured points are
marked.

    python experiments/reach_2x.py --out experiments/levers/reach_2x.png

A round of fixed length d yields (1 - alpha^(d+1)) / (1 - alpha) tokens for d draft steps and one verification
(alpha i.i.d. per draft). A perfect stop rule never drafts a rejected token: a round drafts a run of accepted
tokens (geometric, mean alpha / (1 - alpha)) and then verifies, so it yields 1 / (1 - alpha) tokens for
alpha / (1 - alpha) draft steps and one verification.
"""

import argparse
import json

import numpy as np


def fixed_d(alpha, c_draft, v, d):
    return (1 - alpha ** (d + 1)) / (1 - alpha) / (d * c_draft + v)


def best_fixed_d(alpha, c_draft, v, d_max=16):
    return max(fixed_d(alpha, c_draft, v, d) for d in range(1, d_max + 1))


def perfect_stop(alpha, c_draft, v):
    return (1 / (1 - alpha)) / (alpha / (1 - alpha) * c_draft + v)


def alpha_for(target, c_draft, v, rule):
    """The smallest alpha (to 0.001) at which the rule reaches the target speedup."""
    for a in np.arange(0.5, 0.999, 0.001):
        if rule(a, c_draft, v) >= target:
            return round(float(a), 3)
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/levers/reach_2x.png")
    p.add_argument("--points", default="experiments/levers/points.json",
                   help="measured (name, alpha, draft cost, verification cost) to mark, if the file exists")
    args = p.parse_args()
    rows = []
    for c in (0.14, 0.10, 0.07):
        for v in (1.10, 1.0):
            rows.append((c, v, alpha_for(2.0, c, v, best_fixed_d), alpha_for(2.0, c, v, perfect_stop)))
    print("| draft step / AR step | verification / AR step | alpha for 2.0x, best fixed d | alpha for 2.0x, "
          "perfect stop rule |\n|---|---|---|---|")
    for c, v, a1, a2 in rows:
        print(f"| {c:.2f} | {v:.2f} | {a1} | {a2} |")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    alphas = np.linspace(0.6, 0.95, 141)
    costs = np.linspace(0.03, 0.25, 89)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    grid = np.array([[best_fixed_d(a, c, 1.10) for a in alphas] for c in costs])
    cs = ax.contourf(alphas, costs, grid, levels=np.arange(1.0, 3.01, 0.1), cmap="viridis", extend="max")
    ax.clabel(ax.contour(alphas, costs, grid, levels=[1.5, 2.0, 2.5], colors="white", linewidths=[1, 2.5, 1]),
              fmt="%.1fx", fontsize=9)
    ax.set(title="Predicted speedup, best fixed d, verification 1.10 AR steps", xlabel="per-draft acceptance alpha",
           ylabel="draft step / autoregressive step")
    try:
        with open(args.points) as f:
            for i, (name, a, c, _) in enumerate(json.load(f)):
                ax.plot(a, c, "o", color="red")
                ax.annotate(name, (a, c), textcoords="offset points", xytext=(0, -14 if i % 2 == 0 else 8),
                            color="white", fontsize=8, ha="center")
    except FileNotFoundError:
        pass
    fig.colorbar(cs, ax=ax, label="predicted speedup")
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
