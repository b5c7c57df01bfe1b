"""
Batches (--batch_sizes): throughput of autoregressive and self-speculative decoding at several batch sizes, in one
interleaved run. Rows of a batch share each call, so while a call's fixed overhead dominates, a batch costs little
more than one row. Self-speculative decoding adds positions to every call: verification runs B (d + 1) of them.
Once that work dominates, each draft adds real cost to the verification. The cost rule (settings.cost_rule) then
drafts less: its draft cost at batch B is the stored one, scaled by how (draft step + one more verified position
per row) / (a verification without drafts) grows with B.
"""

import statistics
import sys
import time

import torch

import layerskip as ls
from benchmarks.peers import PEER_AR, peer_batch_decode
from common import crop_prompt


@torch.inference_mode()
def batch_costs(model, E: int, B: int, context: int = 128, k: int = 4, repeats: int = 20) -> dict:
    """Median milliseconds, for B rows at different lengths (context - b cached positions for row b, as in a real
    batch): one autoregressive step, one draft step, and the verification of 0 and of k drafts (blocks 0..E-1 on
    the last draft, E..L-1 on every row's j + 1 positions). cost_ratio is what the cost rule's draft cost means at
    batch B: (a draft step + the verification of one more position per row) / a verification without drafts."""
    L = model.params.n_layers
    context = max(B + 1, min(context, model.params.max_seq_len - k - 1))
    pos = [context - b for b in range(B)] if B > 1 else context
    cache = ls.Cache(model, context + k + 1, batch=B)
    ids = torch.randint(model.params.vocab_size, (B, context), device=model.tok_embeddings.weight.device)
    model.run_blocks(model.tok_embeddings(ids), 0, L, 0, cache)
    one = ids[:, :1]
    at = (lambda j: [p + j for p in pos]) if B > 1 else (lambda j: pos + j)

    def ar_step():
        model.head(model.run_blocks(model.tok_embeddings(one), 0, L, pos, cache)[:, -1]).argmax(-1).tolist()

    def draft_step():
        h = model.run_blocks(model.tok_embeddings(one), 0, E, pos, cache, keep_exit=True)
        model.head(h[:, -1]).argmax(-1).tolist()

    def verify(j):
        model.run_blocks(model.tok_embeddings(one), 0, E, at(j), cache, keep_exit=True)
        model.head(model.run_blocks(cache.read_exit(pos, j + 1), E, L, pos, cache)).argmax(-1).tolist()

    fns = {"ar_step": ar_step, "draft_step": draft_step, "verify_0": lambda: verify(0),
           f"verify_{k}": lambda: verify(k)}
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved: a slow moment of the machine hits every piece alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    more = max(0.0, ms[f"verify_{k}"] - ms["verify_0"]) / k  # on a tiny model, noise can make it negative
    ms["cost_ratio"] = (ms["draft_step"] + more) / ms["verify_0"]
    return ms


def run_batches(args, model, tok, setting: dict, prompts: list[str], peer=None) -> dict:
    """Decode the prompts with at most B at once for every B of --batch_sizes (a finished row's place goes to the
    next prompt), autoregressive and self-speculative, and transformers' batched autoregressive generate (B
    prompts a call) with --peers; variants interleaved in rotating order, --repeats passes. Per B: tokens/s of
    each, the speedup at that B and throughput over batch 1 (medians over passes of ratios within a pass),
    whether every row equals autoregressive decoding, rounds, and the draft cost used. The prompts' prefill, the
    same work for both strategies, is timed in the same passes too: the speedup without it is the decoding's own."""
    sizes = sorted(set(args.batch_sizes))
    ids = [crop_prompt(model, tok.encode(p), args.max_new_tokens) for p in prompts]
    costs = {B: batch_costs(model, setting["exit_layer"], B) for B in sizes}
    base = setting.get("draft_cost")  # the cost rule's draft cost at batch sizes[0], rescaled for the others
    scaled = {B: base * costs[B]["cost_ratio"] / costs[sizes[0]]["cost_ratio"] if base else None for B in sizes}
    settings = {B: dict(setting, draft_cost=min(1.0, max(0.001, round(scaled[B], 3)))) if base else setting
                for B in sizes}
    decoders = batch_decoders(model, tok, settings, args.max_new_tokens, peer)
    seconds, outputs, rounds = time_batches(dict(decoders, prefill=prefill_only(model)), ids, sizes, args.repeats)
    tps = {key: [sum(map(len, outputs[key])) / s for s in secs] for key, secs in seconds.items() if key[0] != "prefill"}
    reference = outputs[("autoregressive", sizes[0])]
    results = {}
    for B in sizes:
        row = {"draft_cost": settings[B].get("draft_cost"), "costs_ms": costs[B],
               "tokens_per_round": sum(map(len, outputs[("self_speculative", B)])) / rounds[("self_speculative", B)],
               "identical": all(outputs[(name, B)] == reference for name in ("autoregressive", "self_speculative")),
               "speedup": statistics.median(s / a for s, a in zip(tps[("self_speculative", B)],
                                                                   tps[("autoregressive", B)])),
               "prefill_s": statistics.median(seconds[("prefill", B)]),
               "speedup_without_prefill": statistics.median(
                   (a - p) / (s - p) for a, s, p in zip(seconds[("autoregressive", B)],
                                                        seconds[("self_speculative", B)], seconds[("prefill", B)]))}
        for name in decoders:
            row[f"{name}_tokens_per_s"] = statistics.median(tps[(name, B)])
            row[f"{name}_over_batch_{sizes[0]}"] = statistics.median(
                b / a for b, a in zip(tps[(name, B)], tps[(name, sizes[0])]))
        if peer is not None:
            row["transformers_identical"] = outputs[(PEER_AR, B)] == reference
        results[B] = row
    return results


def batch_decoders(model, tok, settings: dict, max_new_tokens: int, peer=None) -> dict:
    """name -> decode(prompt ids, B) -> a Generation per prompt: ours autoregressive and self-speculative (with
    batch size B's setting), and transformers' batched generate, B prompts a call (no rounds: it reports none)."""
    decoders = {"autoregressive": lambda prompts, B: ls.generate(
                    model, prompts, max_new_tokens, eos_id=tok.stop_ids, batch_size=B),
                "self_speculative": lambda prompts, B: ls.generate(
                    model, prompts, max_new_tokens, eos_id=tok.stop_ids, batch_size=B, **settings[B])}
    if peer is not None:
        chunk = peer_batch_decode(peer, tok.stop_ids)
        decoders[PEER_AR] = lambda prompts, B: [ls.Generation(tokens, 0.0, 0, 0, 0) for i in range(0, len(prompts), B)
                                                for tokens in chunk(prompts[i:i + B], max_new_tokens)]
    return decoders


def prefill_only(model):
    """decode(prompt ids, B) that only prefills: every prompt but its last token through all blocks, alone, as
    layerskip's Rows.start does for both strategies. Returns no tokens."""
    @torch.inference_mode()
    def prefill(prompts, B):
        cache = ls.Cache(model, max(map(len, prompts)))  # one cache a call, as Rows allocates one a batch
        for p in prompts:
            if len(p) > 1:
                model.run_blocks(model.tok_embeddings(ls.token_tensor(p[:-1], model)), 0, model.params.n_layers, 0,
                                 cache.rows(0))
        return []
    return prefill


def time_batches(decoders: dict, ids: list, sizes: list, repeats: int):
    """Every decoder on every prompt at every batch size, interleaved in rotating order, after a warm-up of each
    batch shape: ({(name, B): seconds of each pass}, {(name, B): tokens of each prompt}, {(name, B): rounds}), the
    last two from the first pass."""
    names = list(decoders)
    for name in names:
        for B in sizes:
            decoders[name](ids[:B], B)  # warm-up, every batch shape once
    seconds = {(name, B): [] for name in names for B in sizes}
    outputs, rounds = {}, {}
    total, start = repeats * len(sizes) * len(names), time.time()
    for r in range(repeats):
        for c, B in enumerate(sizes):
            k = (r * len(sizes) + c) % len(names)
            for j, name in enumerate(names[k:] + names[:k]):
                t0 = time.perf_counter()
                out = decoders[name](ids, B)
                seconds[(name, B)].append(time.perf_counter() - t0)
                if r == 0:
                    outputs[(name, B)] = [g.tokens for g in out]
                    rounds[(name, B)] = sum(g.rounds for g in out)
                done = (r * len(sizes) + c) * len(names) + j + 1
                eta = (time.time() - start) / done * (total - done)
                print(f"\r  pass {r + 1}/{repeats}, batch {B}, {name}: ETA {eta:.0f} s      ", end="", file=sys.stderr,
                      flush=True)
    print(file=sys.stderr)
    return seconds, outputs, rounds


def print_batches(results: dict, n_prompts: int, max_new_tokens: int, repeats: int):
    sizes = list(results)
    peers = f"{PEER_AR}_tokens_per_s" in results[sizes[0]]
    print(f"\nBatched decoding ({n_prompts} prompts, {max_new_tokens} new tokens, greedy, median of {repeats})")
    print(f"| batch | autoregressive tok/s | self-speculative tok/s | speedup | speedup without prefill | prefill "
          f"| self-spec. over batch {sizes[0]} | autoregressive over batch {sizes[0]} | draft cost | tokens per "
          f"row-round | identical |" + (" transformers AR tok/s |" if peers else ""))
    print("|---:" * (11 + peers) + "|")
    for B, r in results.items():
        print(f"| {B} | {r['autoregressive_tokens_per_s']:.1f} | {r['self_speculative_tokens_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['speedup_without_prefill']:.2f}x | {r['prefill_s']:.2f} s | "
              f"{r[f'self_speculative_over_batch_{sizes[0]}']:.2f}x | "
              f"{r[f'autoregressive_over_batch_{sizes[0]}']:.2f}x | {r['draft_cost']} | {r['tokens_per_round']:.2f} | "
              f"{'yes' if r['identical'] else 'NO'} |"
              + (f" {r[f'{PEER_AR}_tokens_per_s']:.1f}{'' if r['transformers_identical'] else ' (differs)'} |"
                 if peers else ""))


def print_batch_costs(results: dict):
    """The pieces of a round at each batch size, in autoregressive steps of that batch size: what the speedup is
    made of (batch_costs)."""
    print("\nThe pieces of a round, per batch size (rows at different lengths), in autoregressive steps of that batch:")
    print("| batch | autoregressive step | draft step | verification, no drafts | verification, 4 drafts "
          "| draft cost |")
    print("|---:|---:|---:|---:|---:|---:|")
    for B, r in results.items():
        c = r["costs_ms"]
        print(f"| {B} | {c['ar_step']:.1f} ms | {c['draft_step'] / c['ar_step']:.2f} | "
              f"{c['verify_0'] / c['ar_step']:.2f} | {c['verify_4'] / c['ar_step']:.2f} | {r['draft_cost']} |")


def plot_batches(results: dict, path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = list(results)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (("autoregressive", "autoregressive"), ("self_speculative", "self-speculative"),
                        (PEER_AR, "transformers autoregressive")):
        if f"{name}_tokens_per_s" in results[sizes[0]]:
            ax.plot(sizes, [results[B][f"{name}_tokens_per_s"] for B in sizes], "o-", label=label)
    ax.set(xscale="log", xlabel="batch size", ylabel="tokens/s (all rows)", title="throughput")
    ax.set_xticks(sizes, sizes)
    ax.legend()
    ax2.plot(sizes, [results[B]["speedup"] for B in sizes], "o-", color="C1")
    ax2.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax2.set(xscale="log", xlabel="batch size", ylabel="self-speculative / autoregressive",
            title="speedup at the same batch size")
    ax2.set_xticks(sizes, sizes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
