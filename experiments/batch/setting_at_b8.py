"""Which self-speculative setting is fastest at batch 8? Tuned on the dev prompts only (never HumanEval).

    OMP_NUM_THREADS=1 python experiments/batch/setting_at_b8.py > out/batch_b8_dev.md

Every setting is decoded at batch 8 on 32 dev prompts, 64 new tokens, greedy, interleaved with autoregressive
decoding at batch 8 in rotating order; speedup = median over passes of the ratio within a pass. Also reports the
share of the time spent in prefill (the prompts going through the blocks), which both decoders pay alike.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import layerskip as ls  # noqa: E402
from common import crop_prompt, machine, prompt_set  # noqa: E402
from model_io import load_model  # noqa: E402

torch.set_num_threads(1)
ckpt = "checkpoints/layerskip-python-deep.pt"
model, tok = load_model(ckpt)
model.eval()
B, N, NEW, REPEATS = 8, 32, 64, 3
ids = [crop_prompt(model, tok.encode(p), NEW) for p in prompt_set("dev")[:N]]
settings = {"autoregressive": {}}
for E in (3, 4, 5):
    for d in (2, 3, 4):
        settings[f"E{E} d{d}"] = dict(strategy="self_speculative", exit_layer=E, num_speculations=d)
    for cost in (0.18, 0.3, 0.45):
        settings[f"E{E} d24 cost {cost}"] = dict(strategy="self_speculative", exit_layer=E, num_speculations=24,
                                                 draft_cost=cost, draft_gamma=0.5)
        settings[f"E{E} d6 cost {cost}"] = dict(strategy="self_speculative", exit_layer=E, num_speculations=6,
                                                draft_cost=cost, draft_gamma=0.5)


def run(kw):
    return ls.generate(model, ids, NEW, eos_id=tok.stop_ids, batch_size=B, **kw)


with torch.inference_mode():  # prefill alone: every prompt through every block, one at a time (as Rows.start does)
    t0 = time.perf_counter()
    for p in ids:
        model.run_blocks(model.tok_embeddings(torch.tensor([p[:-1]])), 0, model.params.n_layers, 0,
                         ls.Cache(model, len(p) + 1))
    prefill = time.perf_counter() - t0
names = list(settings)
for name in names:
    run(settings[name])
secs = {n: [] for n in names}
ntok = {}
for r in range(REPEATS):
    k = r * 7 % len(names)
    for name in names[k:] + names[:k]:
        t0 = time.perf_counter()
        out = run(settings[name])
        secs[name].append(time.perf_counter() - t0)
        ntok[name] = sum(len(g.tokens) for g in out)
    print(f"pass {r + 1} done", file=sys.stderr, flush=True)
print(f"# {' '.join(sys.argv)}\n# machine: {machine()}\n")
ar = secs["autoregressive"]
print(f"prefill of the {N} prompts alone: {prefill:.2f} s; autoregressive batch {B}: {statistics.median(ar):.2f} s "
      f"({prefill / statistics.median(ar):.0%} prefill)\n")
print("| setting | tok/s | speedup over AR at batch 8 |\n|---|---:|---:|")
for name in names:
    tps = ntok[name] / statistics.median(secs[name])
    print(f"| {name} | {tps:.1f} | {statistics.median(a / s for a, s in zip(ar, secs[name])):.2f}x |")
