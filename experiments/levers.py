"""
Greedy self-speculative decoding, simulated from one teacher-forced pass: what a stop rule or a retrained draft
exit would give, without timing anything.

In greedy decoding the output is the autoregressive output, and a draft at position t is exit E's argmax after the
true prefix (as long as every earlier draft of its round was accepted, which is all that matters for what the round
yields). So one autoregressive decode plus one teacher-forced pass give, at every generated position, whether exit
E agrees with the last layer and how sure it is; a round under any stop rule then costs k draft steps and the
verification of k drafts (bench.round_costs) and yields its accepted drafts plus one. After a rejected draft the
simulator keeps reading the true prefix's confidences (the real decoder drafts after the wrong token): that only
moves the rare drafts made past a rejection.

    python experiments/levers.py --checkpoint checkpoints/layerskip-python-deep.pt     # dev prompts, exit 4
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import layerskip as ls  # noqa: E402
from settings import worth_drafting_on  # noqa: E402
from bench import calibrate_gamma, draft_confidences, round_costs  # noqa: E402
from common import prompt_set  # noqa: E402
from model_io import load_model  # noqa: E402


def simulate(trajs, costs, stop, d_max):
    """Predicted speedup over autoregressive decoding, and alpha, for a stop rule stop(confidences so far) -> bool
    (verify now), drafting at most d_max tokens a round. costs: bench.round_costs' dict."""
    tokens = seconds = accepted = judged = 0
    for agree, conf in trajs:
        t, n = 0, len(agree)
        while t < n:
            k = 0
            while k < min(d_max, n - t - 1):
                k += 1
                if stop(conf[t:t + k]):
                    break
            a = 0
            while a < k and agree[t + a]:
                a += 1
            accepted, judged = accepted + a, judged + a + (a < k)
            tokens += a + 1
            seconds += k * costs["draft_step"] + costs["verify_by_drafts"][k]
            t += a + 1
    return costs["ar_step"] * tokens / seconds, accepted / max(judged, 1)


def oracle(trajs, costs, d_max):
    """Draft exactly up to the first rejection (never a wasted draft): the ceiling of any stop rule."""
    tokens = seconds = 0
    for agree, _ in trajs:
        t, n = 0, len(agree)
        while t < n:
            a = 0
            while a < min(d_max, n - t - 1) and agree[t + a]:
                a += 1
            tokens += a + 1
            seconds += a * costs["draft_step"] + costs["verify_by_drafts"][a]
            t += a + 1
    return costs["ar_step"] * tokens / seconds


def threshold_rule(th):
    return lambda c: c[-1] < th


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/layerskip-python-deep.pt")
    p.add_argument("--prompts", default="dev")
    p.add_argument("--exit", type=int, default=4)
    p.add_argument("--d_max", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--costs", help="bench.round_costs' JSON: read if the file exists, else measured and written "
                   "there (one cost set for every lever, so that they differ only in what they accept)")
    p.add_argument("--trajectories", help="the teacher-forced pass's JSON: read if the file exists, else made and "
                   "written there")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.checkpoint)
    if args.costs and Path(args.costs).exists():
        costs = json.loads(Path(args.costs).read_text())
    else:
        costs = round_costs(model, args.exit, args.d_max, repeats=100)
        if args.costs:
            Path(args.costs).write_text(json.dumps(costs, indent=1))
    if args.trajectories and Path(args.trajectories).exists():
        trajs = json.loads(Path(args.trajectories).read_text())
    else:
        trajs = draft_confidences(model, tok, prompt_set(args.prompts), args.exit, 64)
        if args.trajectories:
            Path(args.trajectories).write_text(json.dumps(trajs))
    agree = [a for t, _ in trajs for a in t]
    print(f"{args.checkpoint}, exit {args.exit}, --prompts {args.prompts}: per-position agreement "
          f"{sum(agree) / len(agree):.3f}; costs / AR step: draft {costs['draft_step'] / costs['ar_step']:.3f}, "
          f"verify k=0..{args.d_max}: " + " ".join(f"{v / costs['ar_step']:.2f}" for v in costs["verify_by_drafts"]))
    pairs = [(c, a) for agree_, conf in trajs for a, c in zip(agree_, conf)]
    bins = [(0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01)]
    print("calibration (draft confidence -> share accepted): " + ", ".join(
        f"[{lo:.1f}, {min(hi, 1):.1f}): {sum(a for c, a in pairs if lo <= c < hi) / max(1, sum(lo <= c < hi for c, _ in pairs)):.2f}"
        f" of {sum(lo <= c < hi for c, _ in pairs)}" for lo, hi in bins))
    rows = {"oracle": (oracle(trajs, costs, args.d_max), None)}
    for d in (2, 3, 4, 6):
        rows[f"fixed d={d}"] = simulate(trajs, costs, lambda c: False, d)
    for d in (3, 6):
        for th in (0.2, 0.3, 0.5):
            rows[f"threshold {th}, d={d}"] = simulate(trajs, costs, threshold_rule(th), d)
    gamma = calibrate_gamma([(a, c) for c, a in pairs])
    r = round(costs["draft_step"] / costs["verify_pass"], 3)
    print(f"the library's cost rule: draft cost r = {r} verifications, gamma calibrated on these drafts = {gamma}")
    for g in (1.0, gamma):
        for d in (6, args.d_max):
            rows[f"draft_cost {r} gamma {g}, d={d}"] = simulate(
                trajs, costs, lambda c, g=g: not worth_drafting_on(c, r, g), d)
    for name, (s, a) in rows.items():
        print(f"{name:32s} {s:.3f}x" + (f"  alpha {a:.3f}" if a is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "agreement": sum(agree) / len(agree),
                                               "rows": {k: list(v) for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
