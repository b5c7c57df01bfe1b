"""How should the cost rule's draft cost grow with the batch? Chosen on the dev prompts, never on HumanEval.

    OMP_NUM_THREADS=1 python experiments/batch/batch_rule_dev.py > out/batch_rule_dev.md

At batch B, verification runs B (d + 1) positions, so each draft costs more than at batch 1. Three rules for the
draft cost r(B) given to the cost-model stop rule, from the stored r (tuned at batch 1) and the measured pieces of
a round (benchmarks.batches.batch_costs: cost_ratio = (a draft step + one more verified position per row) / a
verification without drafts):
  - scaled:   r(B) = r * cost_ratio(B) / cost_ratio(1)   (what bench.py --batch_sizes did)
  - measured: r(B) = cost_ratio(B)                        (the cost model's own definition, uncalibrated)
  - fixed d:  no stop rule, d = 3
Every rule is decoded at batch B on 32 dev prompts (64 new tokens, greedy), interleaved with autoregressive
decoding at batch B in rotating order, 3 passes; speedup = median over passes of the ratio within a pass.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import layerskip as ls  # noqa: E402
from benchmarks.batches import batch_costs  # noqa: E402
from common import crop_prompt, machine, prompt_set  # noqa: E402
from model_io import load_model  # noqa: E402

torch.set_num_threads(1)
model, tok = load_model("checkpoints/layerskip-python-deep.pt")
model.eval()
rec = model.metadata["recommended"]
N, NEW, REPEATS, SIZES = 32, 64, 3, (1, 4, 8, 16)
ids = [crop_prompt(model, tok.encode(p), NEW) for p in prompt_set("dev")[:N]]
ratio = {B: batch_costs(model, rec["exit_layer"], B)["cost_ratio"] for B in SIZES}
spec = dict(strategy="self_speculative", exit_layer=rec["exit_layer"], num_speculations=rec["num_speculations"],
            draft_gamma=rec["draft_gamma"])
rules = {"autoregressive": lambda B: {},
         "scaled": lambda B: dict(spec, draft_cost=round(min(1.0, rec["draft_cost"] * ratio[B] / ratio[1]), 3)),
         "measured": lambda B: dict(spec, draft_cost=round(min(1.0, ratio[B]), 3)),
         "fixed d 3": lambda B: dict(spec, num_speculations=3)}
names = list(rules)
secs = {(n, B): [] for n in names for B in SIZES}
for B in SIZES:
    for n in names:
        ls.generate(model, ids[:B], 8, eos_id=tok.stop_ids, batch_size=B, **rules[n](B))  # warm-up
for r in range(REPEATS):
    for B in SIZES:
        k = (r + B) % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            ls.generate(model, ids, NEW, eos_id=tok.stop_ids, batch_size=B, **rules[n](B))
            secs[(n, B)].append(time.perf_counter() - t0)
    print(f"pass {r + 1} done", file=sys.stderr, flush=True)
print(f"# {' '.join(sys.argv)}\n# machine: {machine()}\n")
print("| batch | cost_ratio | " + " | ".join(f"{n}: r, speedup" for n in names[1:]) + " |")
print("|---:|---:|" + "---:|" * (len(names) - 1))
for B in SIZES:
    ar = secs[("autoregressive", B)]
    cells = [f"{rules[n](B).get('draft_cost', '-')}, {statistics.median(a / s for a, s in zip(ar, secs[(n, B)])):.2f}x"
             for n in names[1:]]
    print(f"| {B} | {ratio[B]:.3f} | " + " | ".join(cells) + " |")
