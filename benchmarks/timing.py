"""
Timing and the speedup a round's pieces predict.

End to end: common.interleaved_runs decodes every variant on every prompt, interleaved; here each pass is summed
per variant (pass_sums) and summarised (summarize): a speedup is the median over passes of the ratio measured
within one pass. Pieces: the median cost of an autoregressive step, a draft step and the verification of k drafts
(round_costs), and the speedup they predict for a fixed draft length or for the rounds a run really made.
"""

import statistics
import sys
import time
from typing import Optional

import torch

import layerskip as ls
from benchmarks.loops import loop_share
from common import interleaved_runs


def self_speculative_name(setting: dict) -> str:
    """The table's name of the self-speculative variant: E, d and the stop rule."""
    th, r = setting["draft_threshold"], setting.get("draft_cost")
    return (f"self_speculative E={setting['exit_layer']} d={setting['num_speculations']}"
            + (f" threshold {th}" if th else "") + (f" draft cost {r} gamma {setting.get('draft_gamma')}" if r else ""))


# ---------------------------------------------------------------------------------------------------------
# End-to-end timing: common.interleaved_runs decodes; here each pass is summed per variant and summarised.


def pass_sums(runs, tokenizer) -> dict:
    """Totals over a pass's runs (ls.Generation) of one variant, with the drafts-per-round histogram."""
    sums = dict(seconds=0.0, tokens=0, chars=0, drafted=0, accepted=0, rounds=0, rejections=0, drafts_per_round={})
    for g in runs:
        sums["seconds"] += g.seconds
        sums["tokens"] += len(g.tokens)
        sums["chars"] += len(tokenizer.decode(g.tokens))  # tokenizers differ between models; characters do not
        sums["drafted"] += g.drafted
        sums["accepted"] += g.accepted
        sums["rounds"] += g.rounds
        for e in g.events:
            sums["rejections"] += e.accepted < len(e.drafted)
            sums["drafts_per_round"][len(e.drafted)] = sums["drafts_per_round"].get(len(e.drafted), 0) + 1
    return sums


def measure(variants: dict, prompts: list[str], max_new_tokens: int, repeats: int, progress: bool = True):
    """Time every variant on every prompt (common.interleaved_runs), showing progress and an ETA on stderr.
    Returns ({variant: [one pass_sums per pass]}, {variant: [the tokens of each prompt, first pass]})."""
    runs = {name: [[] for _ in range(repeats)] for name in variants}
    total, done, start = repeats * len(prompts) * len(variants), 0, time.time()
    for r, i, name, g in interleaved_runs(variants, prompts, max_new_tokens, repeats):
        runs[name][r].append(g)
        done += 1
        if progress and done % len(variants) == 0:  # after every variant has decoded the prompt
            eta = (time.time() - start) / done * (total - done)
            print(f"\r  pass {r + 1}/{repeats}, prompt {i + 1}/{len(prompts)}, ETA {eta:.0f} s   ", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    totals = {name: [pass_sums(p, variants[name][1]) for p in passes] for name, passes in runs.items()}
    outputs = {name: [g.tokens for g in passes[0]] for name, passes in runs.items()}
    return totals, outputs


def summarize(totals: dict, reference, outputs: Optional[dict] = None) -> dict:
    """Per variant: the median over passes of time per token, and the median of per-pass speedups over the
    reference variant; acceptance, alpha, tokens per round and the share of tokens in loops from the first pass."""
    ref = [t["seconds"] / max(t["tokens"], 1) for t in totals[reference]]
    out = {}
    for name, passes in totals.items():
        tpt = [t["seconds"] / max(t["tokens"], 1) for t in passes]
        first = passes[0]
        drafted = first["drafted"]
        out[name] = {"ms_per_token": 1000 * statistics.median(tpt), "tokens_per_s": 1 / statistics.median(tpt),
                     "chars_per_s": statistics.median(t["chars"] / t["seconds"] for t in passes),
                     "speedup": statistics.median(r / t for r, t in zip(ref, tpt)),
                     "acceptance": first["accepted"] / drafted if drafted else None,
                     "alpha": per_token_acceptance(first["accepted"], first["rejections"]) if drafted else None,
                     "tokens_per_round": first["tokens"] / first["rounds"] if first["rounds"] else None,
                     "tokens": first["tokens"]}
        if outputs is not None:
            flat = [t for tokens in outputs[name] for t in tokens]
            out[name]["in_loops"] = loop_share(flat) if flat else 0.0
    return out


# ---------------------------------------------------------------------------------------------------------
# Costs of the pieces of a round, and the speedup they predict


@torch.inference_mode()
def round_costs(model, E, d, context=128, repeats=30):
    """Median seconds of: one autoregressive step, one draft step (blocks 0..E-1 + head), and the verification of
    k drafts for k = 0..d (blocks 0..E-1 on the last draft, E..L-1 on k+1 positions, head on k+1), after
    `context` cached positions (at most what the model's window leaves room for)."""
    L, window = model.params.n_layers, model.params.max_seq_len
    context = max(1, min(context, window - d - 1))
    if context + d + 1 > window:
        raise ValueError(f"a context window of {window} tokens has no room for a round of {d} drafts")
    cache = ls.Cache(model, context + d + 1)
    device = model.tok_embeddings.weight.device
    ids = torch.randint(model.params.vocab_size, (1, context), device=device)
    model.run_blocks(model.tok_embeddings(ids), 0, L, 0, cache)  # fill the cache
    one = ids[:, :1]

    def ar_step():
        model.head(model.run_blocks(model.tok_embeddings(one), 0, L, context, cache)[0, -1]).argmax()

    def draft_step():
        h = model.run_blocks(model.tok_embeddings(one), 0, E, context, cache)
        cache.exit_h[:, context:context + 1] = h
        model.head(h[0, -1]).argmax()

    def verify_pass(k):
        h = model.run_blocks(model.tok_embeddings(one), 0, E, context + k, cache)
        cache.exit_h[:, context + k:context + k + 1] = h
        h = model.run_blocks(cache.exit_h[:, context:context + k + 1], E, L, context, cache)
        model.head(h[0]).argmax(-1).tolist()

    fns = {"ar_step": ar_step, "draft_step": draft_step}
    fns.update({("verify", k): (lambda k=k: verify_pass(k)) for k in range(0, d + 1)})
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved, so that a slow moment of the machine hits every piece alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"ar_step": med["ar_step"], "draft_step": med["draft_step"], "verify_pass": med[("verify", d)],
            "verify_by_drafts": [med[("verify", k)] for k in range(d + 1)]}


def per_token_acceptance(accepted, rejections):
    """The per-draft acceptance probability alpha that best explains a run: every draft is a Bernoulli trial up to
    the first rejection, so alpha = accepted / (accepted + rejected), counting one rejected draft per round that
    had one (drafts after it were never judged)."""
    judged = accepted + rejections
    return accepted / judged if judged else 0.0


def predicted_speedup(costs, acceptance, d):
    """Speedup over autoregressive decoding if each draft is accepted independently with probability alpha, for a
    fixed draft length d: a round yields (1 - alpha^(d+1)) / (1 - alpha) tokens and costs d draft steps and one
    verification. (With a draft threshold or an EOS the draft length varies: see predicted_from_rounds.)"""
    a = min(acceptance, 1 - 1e-9)
    tokens_per_round = (1 - a ** (d + 1)) / (1 - a)
    return costs["ar_step"] * tokens_per_round / (d * costs["draft_step"] + costs["verify_pass"])


def predicted_from_rounds(costs, drafts_per_round: dict, tokens: int):
    """The speedup the measured round pieces predict for a run: each round of k drafts costs k draft steps and the
    verification of k drafts; the run's rounds (a histogram {k: rounds}) produced `tokens` tokens. Right for any d,
    any draft threshold and early EOS, because it counts the rounds that really happened."""
    rounds = sum(drafts_per_round.values())
    seconds = sum(n * (k * costs["draft_step"] + costs["verify_by_drafts"][k]) for k, n in drafts_per_round.items())
    return costs["ar_step"] * tokens / seconds if rounds else 0.0


def round_analysis(passes: list[dict], costs: dict, speedup: float, alpha: float, d: int) -> dict:
    """What the costs of a round's pieces predict for the fastest pass (the least disturbed by the machine), and
    where the time of a round goes: its draft steps and its verification at their measured costs; the rest is the
    decoding loop's own overhead (prefill included, sampling, bookkeeping)."""
    r = min(passes, key=lambda t: t["seconds"])
    predicted = predicted_from_rounds(costs, r["drafts_per_round"], r["tokens"])
    per_round = r["seconds"] / r["rounds"]
    drafting = r["drafted"] / r["rounds"] * costs["draft_step"]
    verifying = sum(n * costs["verify_by_drafts"][k] for k, n in r["drafts_per_round"].items()) / r["rounds"]
    return {"predicted_speedup": predicted, "measured_over_predicted": speedup / predicted if predicted else None,
            "predicted_fixed_d": predicted_speedup(costs, alpha or 0.0, d), "rounds": r["rounds"],
            "tokens": r["tokens"],
            "drafts_per_round": {str(k): n for k, n in sorted(r["drafts_per_round"].items())},
            "round_ms": {"total": 1000 * per_round, "drafting": 1000 * drafting, "verification": 1000 * verifying,
                         "other": 1000 * (per_round - drafting - verifying)},
            "drafts_in_a_round": r["drafted"] / r["rounds"]}
