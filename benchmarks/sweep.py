"""
The sweep (--sweep, --auto): self-speculative speedup for exit layer x draft length on the tuning prompts, then the
stop rules at the best exit (draft thresholds; the cost rule, its draft cost measured and its gamma calibrated);
a CSV and a heatmap; and --store's recommendation, written into the checkpoint where decoding finds it.
"""

import math
import sys
from pathlib import Path

import torch

import layerskip as ls
from benchmarks.timing import measure, round_costs, summarize
from common import crop_prompt, machine
from model_io import atomic_save, load_checkpoint


def sweep(model, tok, prompts, max_new_tokens, grid, repeats):
    """Speedup over the same model's autoregressive decoding for every (exit layer, num_speculations,
    draft_threshold, draft_cost, draft_gamma) of the grid."""
    keys = ("exit_layer", "num_speculations", "draft_threshold", "draft_cost", "draft_gamma")
    variants = {"ar": (model, tok, {})}
    for setting in grid:
        variants[setting] = (model, tok, dict(strategy="self_speculative", **dict(zip(keys, setting))))
    totals, _ = measure(variants, prompts, max_new_tokens, repeats)
    summary = summarize(totals, "ar")
    return [{**dict(zip(keys, setting)), **{k: summary[setting][k] for k in ("speedup", "acceptance", "ms_per_token")}}
            for setting in grid]


def run_sweep(args, model, tok, prompts, exits) -> tuple[list[dict], dict]:
    """Sweep exits x d, then the stop rules at the best exit: the draft thresholds with its d and 2d, and the cost
    model's rule (its draft cost measured, its gamma calibrated on these prompts) with 2d and 4d as the most a round
    drafts; write the CSV and the heatmap. Returns (rows, the fastest row). `prompts` are the tuning prompts
    (--tune_prompts), never the reported ones."""
    print(f"sweep: exits {exits} x d {args.sweep_specs} on {args.sweep_prompts} prompts of --tune_prompts "
          f"{args.tune_prompts}", file=sys.stderr)
    prompts, repeats = prompts[:args.sweep_prompts], max(1, args.repeats - 1)
    rows = sweep(model, tok, prompts, args.max_new_tokens,
                 [(E, d, None, None, 1.0) for E in exits for d in args.sweep_specs], repeats)
    best = max(rows, key=lambda r: r["speedup"])
    E, d = best["exit_layer"], best["num_speculations"]
    costs = round_costs(model, E, d)
    r = round(costs["draft_step"] / costs["verify_pass"], 3)
    gamma = calibrate_gamma([pair for agree, conf in draft_confidences(model, tok, prompts, E, args.max_new_tokens)
                             for pair in zip(agree, conf)])
    print(f"cost rule at exit {E}: a draft step costs {r} verifications; confidences calibrated by gamma {gamma}",
          file=sys.stderr)
    grid = [(E, d_, th, None, 1.0) for d_ in (d, 2 * d) for th in args.sweep_thresholds]
    grid += [(E, d_, None, r, gamma) for d_ in (2 * d, 4 * d)]
    rows += sweep(model, tok, prompts, args.max_new_tokens, grid, repeats)
    best = max(rows, key=lambda r: r["speedup"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w") as f:
        f.write("exit_layer,num_speculations,draft_threshold,draft_cost,draft_gamma,speedup,acceptance,ms_per_token\n")
        for r in rows:
            f.write(f"{r['exit_layer']},{r['num_speculations']},{r['draft_threshold'] or ''},{r['draft_cost'] or ''},"
                    f"{r['draft_gamma'] if r['draft_cost'] else ''},{r['speedup']:.4f},"
                    f"{r['acceptance']:.4f},{r['ms_per_token']:.3f}\n")
    try:
        plot_sweep(rows, out / "sweep.png", f"{Path(args.checkpoint).name}: self-speculative speedup")
    except ImportError:
        print("matplotlib is not installed: no heatmap (pip install matplotlib)")
    print(f"\nsweep best: exit {best['exit_layer']}, d {best['num_speculations']}, draft threshold "
          f"{best['draft_threshold']}, draft cost {best['draft_cost']} (gamma {best['draft_gamma']}): "
          f"{best['speedup']:.2f}x (acceptance {best['acceptance']:.2f}); "
          f"{out}/sweep.csv, {out}/sweep.png")
    return rows, best


@torch.inference_mode()
def draft_confidences(model, tok, prompts, E, max_new_tokens):
    """Per prompt, over its greedy continuation: (does exit E's argmax after the true prefix equal the token greedy
    decoding wrote, exit E's probability of its own argmax). In greedy decoding these are exactly the drafts a round
    makes until its first rejection."""
    out = []
    for prompt in prompts:
        ids = crop_prompt(model, tok.encode(prompt), max_new_tokens)
        new = ls.generate(model, ids, max_new_tokens, eos_id=tok.stop_ids).tokens
        h = model.run_blocks(model.tok_embeddings(ls.token_tensor(ids + new[:-1], model)), 0, E)
        conf, top = torch.softmax(model.head(h[0, len(ids) - 1:]).float(), -1).max(-1)
        out.append(((top == torch.tensor(new, device=top.device)).tolist(), conf.tolist()))
    return out


def calibrate_gamma(pairs) -> float:
    """The gamma (0.1..2, in steps of 0.05) under which c^gamma best predicts, by likelihood, whether a draft of
    confidence c is accepted: pairs of (accepted, c), e.g. from draft_confidences."""
    def log_likelihood(g):
        return sum(math.log(min(max(c ** g if a else 1 - c ** g, 1e-9), 1.0)) for a, c in pairs)
    return max((round(0.1 + 0.05 * i, 2) for i in range(39)), key=log_likelihood)


def plot_sweep(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["draft_threshold"] is None and r["draft_cost"] is None]
    exits = sorted({r["exit_layer"] for r in rows})
    specs = sorted({r["num_speculations"] for r in rows})
    grid = [[next(r["speedup"] for r in rows if r["exit_layer"] == E and r["num_speculations"] == d)
             for E in exits] for d in specs]
    fig, ax = plt.subplots(figsize=(1 + 0.75 * len(exits), 1 + 0.5 * len(specs)))
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for i, d in enumerate(specs):
        for j, E in enumerate(exits):
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(exits)), exits)
    ax.set_yticks(range(len(specs)), specs)
    ax.set(xlabel="exit layer E", ylabel="num_speculations d", title=title)
    fig.colorbar(im, label="speedup vs autoregressive")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def store_recommendation(path, best, prompts):
    """Write the fastest setting into the checkpoint's metadata (atomically), where settings.recommended finds it."""
    ckpt = load_checkpoint(path)
    ckpt.setdefault("metadata", {})["recommended"] = {
        "exit_layer": best["exit_layer"], "num_speculations": best["num_speculations"],
        "draft_threshold": best["draft_threshold"], "draft_cost": best.get("draft_cost"),
        "draft_gamma": best.get("draft_gamma", 1.0),
        "speedup": round(best["speedup"], 3), "prompts": prompts,
        "machine": machine()}
    atomic_save(ckpt, path)
