"""
Decoding speed: autoregressive vs early exit vs self-speculative decoding, batch 1, greedy (paper Tables 3-6, 11),
the speedup the cost of a round's pieces predicts, and how much of the generated text loops.

    python bench.py --prompts humaneval --json out.json      # the shipped model and its twin, the stored setting
    python bench.py --no_repeat_ngram_size 4                 # and a second table: the same with loops suppressed
    python bench.py --reference checkpoints/layerskip-python.pt   # and the 12-layer model's speed beside
    python bench.py --sweep                                  # exit layer x num_speculations heatmap + CSV in out/bench
    python bench.py --auto                                   # sweep, then measure the fastest setting found
    python bench.py --auto --store --checkpoint out/toy/model.pt   # ... and store it in that checkpoint
    python bench.py --memory                                 # peak memory of AR vs self-speculative decoding
    python bench.py --peers                                  # and transformers' decoding of the same weights

Speedup is the paper's: autoregressive time per token / method time per token, against the same model's
autoregressive decoding (and its baseline twin's). Every variant is timed by common.interleaved_runs: variants
interleaved prompt by prompt in rotating order, --repeats passes over the prompts; each pass's times are summed
per variant, and a speedup is the median over passes of the ratio measured within one pass. The thread count is
fixed for the whole run. --peers adds Hugging Face transformers' decoding of the same weights to the same run.
"""

import json
import math
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import torch

import layerskip as ls
from settings import Settings
from common import (MAX_THREADS, ArgumentParser, crop_prompt, decoding_settings, fail, float_range, int_range,
                    interleaved_runs, machine, prompt_set)
from model_io import CheckpointError, atomic_save, load_checkpoint, load_model

LAYERSKIP, BASELINE = "checkpoints/layerskip-python-deep.pt", "checkpoints/baseline-python-deep.pt"
TWELVE_LAYERS = "checkpoints/layerskip-python.pt"  # the first reference model, a yardstick of absolute speed


# ---------------------------------------------------------------------------------------------------------
# Loops. A small model's greedy text often falls into a loop (`flags.flags.flags`), which is easy to draft and so
# flatters the speedup; the report says how much of the text loops, and can measure again with loops suppressed.


def in_loops(tokens: list, max_period: int = 12, min_repeats: int = 2) -> list[bool]:
    """For each token, whether it sits in a periodic loop: a stretch of min_repeats * p tokens, p <= max_period,
    that is one block of p tokens said min_repeats times in a row, i.e. a stretch tokens[i .. i + min_repeats*p - 1]
    with tokens[j] == tokens[j + p] for every j in i .. i + (min_repeats - 1)*p - 1. (With the defaults, a token
    is in a loop if it belongs to some tokens[i .. i + 2p - 1] whose two halves are equal, p <= 12.)"""
    if min_repeats < 2:
        raise ValueError(f"a loop repeats at least twice, got min_repeats {min_repeats}")
    inside = [False] * len(tokens)
    for p in range(1, max_period + 1):
        need, run = (min_repeats - 1) * p, 0  # equal pairs (j, j + p) in a row that make a stretch; pairs so far
        for j in range(len(tokens) - p):
            run = run + 1 if tokens[j] == tokens[j + p] else 0
            if run >= need:  # the stretch from j - need + 1 to j + p
                for k in range(j - need + 1, j + p + 1):
                    inside[k] = True
    return inside


def loop_share(tokens: list, max_period: int = 12, min_repeats: int = 2) -> float:
    """The fraction of tokens that sit in a periodic loop (see in_loops); 0.0 for no tokens."""
    return sum(in_loops(tokens, max_period, min_repeats)) / len(tokens) if len(tokens) else 0.0


# ---------------------------------------------------------------------------------------------------------
# Costs of the pieces of a round, for the analytic speedup


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


# ---------------------------------------------------------------------------------------------------------
# Peers: Hugging Face transformers decoding the same weights, greedy, in the same interleaved run. export.py
# writes the Hugging Face folder (run as a program: a script does not import another); transformers loads it.

PEER_AR = "transformers autoregressive"
ASSISTANT_SETTINGS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def peer_early_exit_name(E: int) -> str:
    return f"transformers assistant_early_exit={E}"


def check_peers_installed():
    """transformers is optional: only --peers needs it, and 4.47 or newer for generate(assistant_early_exit=E)."""
    try:
        import transformers
    except ImportError:
        fail("--peers times Hugging Face transformers on the same weights, and it is not installed: "
             "pip install transformers")
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (4, 47):
        fail(f"--peers needs transformers 4.47 or newer for assistant_early_exit, found {transformers.__version__}: "
             f"pip install -U transformers")


def load_peer(checkpoint, folder):
    """transformers' LlamaForCausalLM on the checkpoint's weights, float32, exported into `folder` by export.py.
    A failed export is a one-line error, before anything is timed."""
    import transformers
    out = Path(folder) / "hf"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("export.py")), str(checkpoint), str(out),
                           "--format", "hf"], capture_output=True, text=True)
    if proc.returncode:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        fail(f"--peers converts --checkpoint {checkpoint} for transformers, and that failed: {why}")
    # transformers' own notices would break into the table: a progress bar while it loads, and a deprecation
    # warning that its assistant_early_exit path raises inside generate (from its own call, not ours)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dtype = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # 4.x's name
    return transformers.AutoModelForCausalLM.from_pretrained(out, **{dtype: torch.float32}).eval()


def peer_setting(hf) -> dict:
    """The draft length, its schedule and the confidence threshold generate(assistant_early_exit=E) will use: the
    export's generation_config.json (our stored d and threshold), else transformers' defaults, which transformers 5
    fills in at generate time (4.x has them in GenerationConfig itself)."""
    import transformers
    gc = hf.generation_config
    defaults = gc._get_default_generation_params() if hasattr(gc, "_get_default_generation_params") else {}
    unset = [key for key in ASSISTANT_SETTINGS if getattr(gc, key, None) is None]
    return {"transformers": transformers.__version__,
            **{key: defaults.get(key) if key in unset else getattr(gc, key) for key in ASSISTANT_SETTINGS},
            "transformers_defaults": unset}


def up_to_stop(tokens: list, stop_ids) -> list:
    """tokens up to and including the first stop id (transformers pads a finished row on after it)."""
    return tokens[:next((k + 1 for k, t in enumerate(tokens) if t in stop_ids), len(tokens))]


def peer_decode(hf, stop_ids, **generate_kwargs):
    """A decode function for common.interleaved_runs: transformers' greedy generate on our token ids, stopping at
    our stop ids, as an ls.Generation of the new tokens up to and including the first stop id. It reports no
    rounds or drafts, so its acceptance is unknown."""
    stops = sorted(stop_ids)

    def decode(ids, max_new_tokens):
        x = torch.tensor([ids])
        start = time.perf_counter()
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                          eos_token_id=stops, pad_token_id=stops[0], **generate_kwargs)
        seconds = time.perf_counter() - start
        return ls.Generation(tokens=up_to_stop(out[0, len(ids):].tolist(), stop_ids), seconds=seconds, rounds=0,
                             drafted=0, accepted=0)
    return decode


def peer_variants(hf, model, tok, exit_layer: int, processors: dict) -> dict:
    """transformers' autoregressive and early-exit self-speculative decoding, at our exit and with our logits
    processors (the same two, under the same names); encoded and cropped with our model and tokenizer."""
    return {PEER_AR: (model, tok, {"decode": peer_decode(hf, tok.stop_ids, **processors)}),
            peer_early_exit_name(exit_layer): (model, tok, {"decode": peer_decode(
                hf, tok.stop_ids, assistant_early_exit=exit_layer, **processors)})}


def peer_results(totals: dict, outputs: dict, setting: dict) -> dict:
    """Ours against transformers' on the same weights (medians over passes of ratios within a pass), and whether
    each of its greedy outputs equals our autoregressive output, token for token."""
    ee, ss = peer_early_exit_name(setting["exit_layer"]), self_speculative_name(setting)
    vs_their_ar, vs_their_ee = summarize(totals, PEER_AR), summarize(totals, ee)
    return {"identical": {n: outputs[n] == outputs["autoregressive"] for n in (PEER_AR, ee)},
            "self_speculative_over_theirs": vs_their_ee[ss]["speedup"],
            "autoregressive_over_theirs": vs_their_ar["autoregressive"]["speedup"],
            "their_speedup": vs_their_ar[ee]["speedup"]}


def print_peers(results: dict, setting: dict, peer: dict):
    """transformers' setting, the equality checks and the ratios of tokens/s, under a table with peer rows."""
    ee, r = peer_early_exit_name(setting["exit_layer"]), results["peers"]
    used = ", ".join(f"{k} {peer[k]}" + (" (transformers' default)" if k in peer["transformers_defaults"] else "")
                     for k in ASSISTANT_SETTINGS)
    print(f"transformers {peer['transformers']} on the same weights (export.py --format hf, float32); its "
          f"assistant_early_exit={setting['exit_layer']} drafts with {used}")
    print("greedy output identical to our autoregressive output, token for token: "
          + ", ".join(f"{n} {same}" for n, same in r["identical"].items()))
    print(f"our self-speculative tokens/s = {r['self_speculative_over_theirs']:.2f} x transformers "
          f"assistant_early_exit's; our autoregressive = {r['autoregressive_over_theirs']:.2f} x transformers "
          f"autoregressive; transformers' own speedup {r['their_speedup']:.2f}x, ours "
          f"{results['summary'][self_speculative_name(setting)]['speedup']:.2f}x")


# ---------------------------------------------------------------------------------------------------------
# The exit layer x draft length sweep, and --auto's stored recommendation


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
    """Write the fastest setting into the checkpoint's metadata (atomically), where decoding_settings finds it."""
    ckpt = load_checkpoint(path)
    ckpt.setdefault("metadata", {})["recommended"] = {
        "exit_layer": best["exit_layer"], "num_speculations": best["num_speculations"],
        "draft_threshold": best["draft_threshold"], "draft_cost": best.get("draft_cost"),
        "draft_gamma": best.get("draft_gamma", 1.0),
        "speedup": round(best["speedup"], 3), "prompts": prompts,
        "machine": machine()}
    atomic_save(ckpt, path)


# ---------------------------------------------------------------------------------------------------------
# Peak memory: each decoder in a fresh process, so that one's peak does not hide the other's. A spawned process
# starts with the resource usage (ru_maxrss) of the process that started it, so the peak is read from the fresh
# process's own memory map instead (/proc/self/status on Linux).


def resident_bytes(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, from /proc/self/status; elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory(checkpoint, prompt, max_new_tokens, kwargs, threads) -> dict:
    """Load the model, decode the prompt once, and return the process's peak memory (CUDA: peak allocation) and
    how far decoding rose above the memory held once the model was loaded. Meant for a fresh process."""
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(checkpoint, device=device)
    ids = crop_prompt(model, tok.encode(prompt), max_new_tokens)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        loaded = resident_bytes("VmRSS")
    ls.generate(model, ids, max_new_tokens, eos_id=tok.stop_ids, seed=0, **kwargs)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resident_bytes("VmHWM")
    return {"peak_bytes": peak, "above_loaded_bytes": peak - loaded}


def measure_memory(checkpoint, settings: dict, prompt, max_new_tokens, threads) -> dict:
    """{name: peak_memory(...)} for each name -> generate kwargs, each in its own fresh ('spawn') process."""
    out = {}
    for name, kwargs in settings.items():
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            out[name] = pool.submit(peak_memory, str(checkpoint), prompt, max_new_tokens, kwargs, threads).result()
    return out


# ---------------------------------------------------------------------------------------------------------
# The command line: parse and check everything before the first measurement, measure, then print and store.


# ---------------------------------------------------------------------------------------------------------
# Batches (--batch_sizes): throughput of autoregressive and self-speculative decoding at several batch sizes, in
# one interleaved run. Rows of a batch share each call, so while a call's fixed overhead dominates, a batch
# costs little more than one row. Self-speculative decoding adds positions to every call: verification runs
# B (d + 1) of them. Once that work dominates, each draft adds real cost to the verification. The cost rule
# (ls.worth_drafting_on) then drafts less: its draft cost at batch B is the stored one, scaled by how
# (draft step + one more verified position per row) / (a verification without drafts) grows with B.


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

    fns = {"ar_step": ar_step, "draft_step": draft_step, "verify_0": lambda: verify(0), f"verify_{k}": lambda: verify(k)}
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved: a slow moment of the machine hits every piece alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    ms["cost_ratio"] = (ms["draft_step"] + (ms[f"verify_{k}"] - ms["verify_0"]) / k) / ms["verify_0"]
    return ms


def peer_batch_decode(hf, stop_ids):
    """transformers' batched greedy generate (left-padded, with an attention mask) on our token ids: the new
    tokens of each row up to and including its first stop id."""
    stops = sorted(stop_ids)

    def decode(batch, max_new_tokens):
        T = max(map(len, batch))
        x = torch.tensor([[stops[0]] * (T - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids in batch])
        out = hf.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                          eos_token_id=stops, pad_token_id=stops[0])[:, T:].tolist()
        return [up_to_stop(row, stop_ids) for row in out]
    return decode


def run_batches(args, model, tok, setting: dict, prompts: list[str], peer=None) -> dict:
    """Decode the prompts with at most B at once for every B of --batch_sizes (a finished row's place goes to the
    next prompt), autoregressive and self-speculative, and transformers' batched autoregressive generate (B
    prompts a call) with --peers; variants interleaved in rotating order, --repeats passes. Per B: tokens/s of
    each, the speedup at that B and throughput over batch 1 (medians over passes of ratios within a pass),
    whether every row equals autoregressive decoding, rounds, and the draft cost used."""
    sizes = sorted(set(args.batch_sizes))
    ids = [crop_prompt(model, tok.encode(p), args.max_new_tokens) for p in prompts]
    base = setting.get("draft_cost")
    costs = {B: batch_costs(model, setting["exit_layer"], B) for B in sizes}
    ratio = {B: costs[B]["cost_ratio"] for B in sizes}
    settings = {B: dict(setting, draft_cost=round(min(1.0, base * ratio[B] / ratio[sizes[0]]), 3)) if base
                else setting for B in sizes}
    decoders = {"autoregressive": lambda prompts, B: ls.generate(
                    model, prompts, args.max_new_tokens, eos_id=tok.stop_ids, batch_size=B),
                "self_speculative": lambda prompts, B: ls.generate(
                    model, prompts, args.max_new_tokens, eos_id=tok.stop_ids, batch_size=B, **settings[B])}
    if peer is not None:
        peer_chunk = peer_batch_decode(peer, tok.stop_ids)
        decoders[PEER_AR] = lambda prompts, B: [ls.Generation(tokens, 0.0, 0, 0, 0) for i in range(0, len(prompts), B)
                                                for tokens in peer_chunk(prompts[i:i + B], args.max_new_tokens)]
    names = list(decoders)
    for name in names:
        for B in sizes:
            decoders[name](ids[:B], B)  # warm-up, every batch shape once
    seconds = {(name, B): [] for name in names for B in sizes}
    outputs, rounds = {}, {}
    total, start = args.repeats * len(sizes) * len(names), time.time()
    for r in range(args.repeats):
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
                print(f"\r  pass {r + 1}/{args.repeats}, batch {B}, {name}: ETA "
                      f"{(time.time() - start) / done * (total - done):.0f} s      ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    tps = {key: [sum(map(len, outputs[key])) / s for s in secs] for key, secs in seconds.items()}
    reference = outputs[("autoregressive", sizes[0])]
    results = {}
    for B in sizes:
        row = {"draft_cost": settings[B].get("draft_cost"), "costs_ms": costs[B],
               "tokens_per_round": sum(map(len, outputs[("self_speculative", B)])) / rounds[("self_speculative", B)],
               "identical": all(outputs[(name, B)] == reference for name in ("autoregressive", "self_speculative")),
               "speedup": statistics.median(s / a for s, a in zip(tps[("self_speculative", B)],
                                                                   tps[("autoregressive", B)]))}
        for name in names:
            row[f"{name}_tokens_per_s"] = statistics.median(tps[(name, B)])
            row[f"{name}_over_batch_{sizes[0]}"] = statistics.median(
                b / a for b, a in zip(tps[(name, B)], tps[(name, sizes[0])]))
        if peer is not None:
            row["transformers_identical"] = outputs[(PEER_AR, B)] == reference
        results[B] = row
    return results


def print_batches(results: dict, n_prompts: int, max_new_tokens: int, repeats: int):
    sizes = list(results)
    peers = f"{PEER_AR}_tokens_per_s" in results[sizes[0]]
    print(f"\nBatched decoding ({n_prompts} prompts, {max_new_tokens} new tokens, greedy, median of {repeats})")
    print(f"| batch | autoregressive tok/s | self-speculative tok/s | speedup | self-spec. over batch {sizes[0]} "
          f"| autoregressive over batch {sizes[0]} | draft cost | tokens per row-round | identical |"
          + (" transformers AR tok/s |" if peers else ""))
    print("|---:" * (9 + peers) + "|")
    for B, r in results.items():
        print(f"| {B} | {r['autoregressive_tokens_per_s']:.1f} | {r['self_speculative_tokens_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r[f'self_speculative_over_batch_{sizes[0]}']:.2f}x | "
              f"{r[f'autoregressive_over_batch_{sizes[0]}']:.2f}x | {r['draft_cost']} | {r['tokens_per_round']:.2f} | "
              f"{'yes' if r['identical'] else 'NO'} |"
              + (f" {r[f'{PEER_AR}_tokens_per_s']:.1f}{'' if r['transformers_identical'] else ' (differs)'} |"
                 if peers else ""))


def print_batch_costs(results: dict):
    """The pieces of a round at each batch size, in autoregressive steps of that batch size: what the speedup is
    made of (bench.batch_costs)."""
    print("\nThe pieces of a round, per batch size (rows at different lengths), in autoregressive steps of that batch:")
    print("| batch | autoregressive step | draft step | verification, no drafts | verification, 4 drafts | draft cost |")
    print("|---:|---:|---:|---:|---:|---:|")
    for B, r in results.items():
        c = r["costs_ms"]
        print(f"| {B} | {c['ar_step']:.1f} ms | {c['draft_step'] / c['ar_step']:.2f} | {c['verify_0'] / c['ar_step']:.2f} "
              f"| {c['verify_4'] / c['ar_step']:.2f} | {r['draft_cost']} |")


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


def parse_args(argv):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=LAYERSKIP, help="the LayerSkip model")
    p.add_argument("--baseline", default=BASELINE, help="its baseline twin ('' to skip)")
    p.add_argument("--reference", default="", help="another model whose autoregressive speed is reported beside, "
                   f"in characters/s (e.g. {TWELVE_LAYERS}; default: none)")
    p.add_argument("--prompts", default="humaneval", help="humaneval, shakespeare, or a text file: one prompt per "
                   "line (a newline is added)")
    p.add_argument("--n_prompts", type=int_range(1), default=20, help="how many prompts of the set")
    p.add_argument("--max_new_tokens", type=int_range(1), default=64, help="tokens generated per prompt")
    p.add_argument("--exit", "--exit_layer", dest="exit", type=int_range(1),
                   help="exit layer E (default: recommended or L/4)")
    p.add_argument("--num_speculations", type=int_range(1), help="draft length d (default: recommended or 4)")
    p.add_argument("--draft_threshold", type=float_range(0, 1), help="stop drafting below this confidence "
                   "(default: recommended or off; 0 = off)")
    p.add_argument("--draft_cost", type=float_range(0, 1, low_open=True),
                   help="stop drafting by the cost model instead, a draft step costing this fraction of a "
                        "verification (default: recommended or off)")
    p.add_argument("--draft_gamma", type=float_range(0, 10, low_open=True),
                   help="the cost rule's calibration of the draft's confidences, c^gamma (default: recommended or 1)")
    p.add_argument("--no_repeat_ngram_size", type=int_range(0), default=0,
                   help="with N > 0, a second table: every variant again, never repeating an n-gram of N tokens "
                        "(loops suppressed), interleaved with the plain greedy table")
    p.add_argument("--repetition_penalty", type=float_range(0, low_open=True), default=1.0,
                   help="with R != 1, a second table likewise, with this repetition penalty (with "
                        "--no_repeat_ngram_size: both in one table)")
    p.add_argument("--repeats", type=int_range(1), default=3, help="timed passes over the prompts")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1,
                   help="torch CPU threads, fixed for the whole run (default 1: fastest for these small models, "
                        "and steady when other processes share the cores)")
    p.add_argument("--sweep", action="store_true", help="also sweep exit layer x num_speculations")
    p.add_argument("--sweep_exits", type=int_range(1), nargs="+", help="exit layers of the sweep (default 1..L/2)")
    p.add_argument("--sweep_specs", type=int_range(1), nargs="+", default=[2, 3, 4, 6, 8],
                   help="d values of the sweep")
    p.add_argument("--sweep_thresholds", type=float_range(0, 1, low_open=True), nargs="+", default=[0.3, 0.5, 0.7],
                   help="adaptive draft thresholds tried on the best (E, d) with d and 2d")
    p.add_argument("--tune_prompts", default="dev", help="the prompts the sweep tunes on (default: dev, 40 function "
                   "headers of held-out corpus files; never the reported --prompts)")
    p.add_argument("--sweep_prompts", type=int_range(1), default=20, help="how many of them the sweep uses")
    p.add_argument("--auto", action="store_true", help="sweep, then measure the fastest (E, d, stop rule) found "
                   "(the sweep decodes plain greedy); stored only with --store")
    p.add_argument("--store", action="store_true", help="with --auto: write the fastest setting into --checkpoint's "
                   "metadata, where generate.py and the demo find it (rewrites that file)")
    p.add_argument("--batch_sizes", type=int_range(1), nargs="+", help="instead of the batch-1 tables: decode the "
                   "prompts B at a time for each B (e.g. 1 4 8 16), autoregressive and self-speculative, interleaved; "
                   "at most B decode at once, a finished row's place going to the next prompt; a plot goes to --out_dir")
    p.add_argument("--memory", action="store_true", help="measure peak memory of AR vs self-speculative")
    p.add_argument("--peers", action="store_true", help="add Hugging Face transformers' autoregressive and "
                   "assistant_early_exit decoding of the same weights (converted with export.py) to every table, "
                   "interleaved with ours, and check that their greedy output equals ours (needs transformers)")
    p.add_argument("--out_dir", default="out/bench", help="where the sweep heatmap and CSV, and the batch plot, go "
                   "(default out/bench; docs/results holds the committed ones)")
    p.add_argument("--json", help="write every number to this JSON file")
    return p.parse_args(argv)


def load_inputs(args) -> tuple[dict, list[str]]:
    """The models by role (checkpoint, and baseline / reference when given) and the prompts; one-line errors."""
    try:
        models = {"checkpoint": load_model(args.checkpoint)}
        if args.baseline:
            models["baseline"] = load_model(args.baseline)
        if args.reference:
            models["reference"] = load_model(args.reference)
        prompts = prompt_set(args.prompts)[:args.n_prompts]
        if args.sweep or args.auto:
            args.tune = prompt_set(args.tune_prompts, "--tune_prompts")
    except ValueError as e:  # CheckpointError is one
        fail(str(e))
    return models, prompts


def check_settings(args, models: dict, setting: dict, processors: dict, prompts=()):
    """Refuse, before anything is measured, every value that would fail later: out-of-range exits or draft
    lengths (generate_stream checks its arguments at the call), no room in a context window, unwritable outputs."""
    model = models["checkpoint"][0]
    L = model.params.n_layers
    for role, (m, _) in models.items():
        which = "" if role == "checkpoint" else f"--{role} {getattr(args, role)}: "
        try:
            ls.generate_stream(m, [0], 1, Settings(**({} if role == "reference" else setting), **processors))
        except ValueError as e:
            fail(f"{which}{e}")
        if args.max_new_tokens >= m.params.max_seq_len:
            fail(f"{which}--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in a context window of "
                 f"{m.params.max_seq_len} tokens: use at most {m.params.max_seq_len - 1}")
    window = model.params.max_seq_len
    if setting["num_speculations"] + 2 > window:
        fail(f"a round of {setting['num_speculations']} drafts does not fit the context window of {window} tokens: "
             f"use --num_speculations {window - 2} or less")
    if (args.sweep or args.auto) and 4 * max(args.sweep_specs) + 2 > window:
        fail(f"the sweep tries d, 2d and 4d, and a round of {4 * max(args.sweep_specs)} drafts does not fit the "
             f"context window of {window} tokens: use --sweep_specs of {(window - 2) // 4} or less")
    if (args.sweep or args.auto) and max(args.sweep_exits or [1]) > L:
        fail(f"--sweep_exits {max(args.sweep_exits)} is out of range: the model has {L} layers, use 1..{L}")
    if (args.sweep or args.auto) and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        fail(f"--out_dir {args.out_dir}: is a file; give a folder for the sweep's CSV and heatmap")
    if args.json and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        fail(f"--json {args.json}: give a file path in an existing folder")
    if args.batch_sizes and (args.sweep or args.auto or args.memory or processors):
        fail("--batch_sizes is a run of its own: leave out --sweep, --auto, --memory and the logits processors")
    if args.batch_sizes and max(args.batch_sizes) > len(prompts):
        fail(f"--batch_sizes {max(args.batch_sizes)} needs at least that many prompts, and --prompts {args.prompts} "
             f"--n_prompts {args.n_prompts} gives {len(prompts)}: use a smaller batch or more prompts")
    if args.batch_sizes and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        fail(f"--out_dir {args.out_dir}: is a file; give a folder for the batch plot")
    if args.store and not args.auto:
        fail("--store writes what --auto finds: give --auto too")
    if args.store and not (Path(args.checkpoint).is_file() and os.access(args.checkpoint, os.W_OK)):
        fail(f"--store writes the recommendation into --checkpoint {args.checkpoint}: give a writable checkpoint file")
    if args.peers:
        check_peers_installed()


def self_speculative_name(setting: dict) -> str:
    th, r = setting["draft_threshold"], setting.get("draft_cost")
    return (f"self_speculative E={setting['exit_layer']} d={setting['num_speculations']}"
            + (f" threshold {th}" if th else "") + (f" draft cost {r} gamma {setting.get('draft_gamma')}" if r else ""))


def table_variants(models: dict, setting: dict, processors: dict, reference_name: str, peer=None) -> dict:
    """One table's variants, name -> (model, tokenizer, generate kwargs), every one with the same processors; with
    a transformers model (peer), its two rows too."""
    model, tok = models["checkpoint"]
    E, ss = setting["exit_layer"], self_speculative_name(setting)
    variants = {"autoregressive": (model, tok, {}),
                f"early_exit E={E}": (model, tok, dict(strategy="early_exit", exit_layer=E)),
                ss: (model, tok, setting)}
    if "baseline" in models:
        variants["baseline autoregressive"] = (*models["baseline"], {})
        variants["baseline " + ss] = (*models["baseline"], setting)
    if "reference" in models:
        variants[reference_name] = (*models["reference"], {})
    variants = {name: (m, t, {**kw, **processors}) for name, (m, t, kw) in variants.items()}
    if peer is not None:
        variants |= peer_variants(peer, model, tok, E, processors)
    return variants


def table_results(totals, outputs, costs, setting) -> dict:
    """One table's summary and analysis: speedups vs its own autoregressive run (and the baseline's), the round
    prediction, loops, whether self-speculative greedy output equals autoregressive output, and (with peer rows)
    ours against transformers'."""
    summary = summarize(totals, "autoregressive", outputs)
    if "baseline autoregressive" in summary:
        vs_base = summarize(totals, "baseline autoregressive")
        for n in summary:
            summary[n]["speedup_vs_baseline"] = vs_base[n]["speedup"]
    ss = self_speculative_name(setting)
    ar_outputs = outputs["autoregressive"]
    return {"summary": summary,
            **round_analysis(totals[ss], costs, summary[ss]["speedup"], summary[ss]["alpha"],
                             setting["num_speculations"]),
            "loop_share": summary["autoregressive"]["in_loops"],
            "prompts_with_loops": sum(loop_share(tokens) > 0 for tokens in ar_outputs),
            "greedy_outputs_identical": outputs[ss] == ar_outputs,
            **({"peers": peer_results(totals, outputs, setting)} if PEER_AR in totals else {})}


def print_table(title: str, results: dict, reference_name: str):
    print(f"\n## {title}\n")
    print("| variant | ms/token | tokens/s | chars/s | acceptance | tokens/round | in loops | speedup vs AR | "
          "speedup vs baseline AR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, s in results["summary"].items():
        acc = f"{100 * s['acceptance']:.1f}%" if s["acceptance"] is not None else "-"
        per_round = f"{s['tokens_per_round']:.2f}" if s["tokens_per_round"] is not None else "-"
        same_tokenizer = n != reference_name  # tokens of another tokenizer: compare chars/s
        sp = f"{s['speedup']:.2f}x" if same_tokenizer else "-"
        vb = f"{s['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in s and same_tokenizer else "-"
        print(f"| {n} | {s['ms_per_token']:.2f} | {s['tokens_per_s']:.1f} | {s['chars_per_s']:.0f} | {acc} | "
              f"{per_round} | {100 * s['in_loops']:.1f}% | {sp} | {vb} |")


def print_analysis(results: dict, setting: dict, L: int, n_prompts: int):
    """The prediction against the measurement, where a round's time goes, early exit's target and the checks."""
    summary, E, d = results["summary"], setting["exit_layer"], setting["num_speculations"]
    ss = summary[self_speculative_name(setting)]
    predicted, rm = results["predicted_speedup"], results["round_ms"]
    print(f"predicted speedup from the costs and the run's rounds ({results['rounds']} rounds, {results['tokens']} "
          f"tokens): {predicted:.2f}x; measured {ss['speedup']:.2f}x = "
          f"{100 * (results['measured_over_predicted'] or 0):.0f}% of predicted")
    print(f"per-token acceptance alpha {ss['alpha'] or 0:.3f} (drafts accepted / drafts judged); for a fixed d = {d} "
          f"it predicts {results['predicted_fixed_d']:.2f}x")
    print(f"a round ({results['drafts_in_a_round']:.2f} drafts, {ss['tokens_per_round']:.2f} tokens) takes "
          f"{rm['total']:.2f} ms: drafting {100 * rm['drafting'] / rm['total']:.0f}%, verification "
          f"{100 * rm['verification'] / rm['total']:.0f}%, the rest (prefill, sampling, loop) "
          f"{100 * rm['other'] / rm['total']:.0f}%")
    ee = summary[f"early_exit E={E}"]
    print(f"early exit E={E}: {ee['tokens_per_s'] / summary['autoregressive']['tokens_per_s']:.2f}x AR tokens/s "
          f"(target 0.8 x L/E = {0.8 * L / E:.2f}x)")
    print(f"loops: {100 * results['loop_share']:.1f}% of the autoregressive tokens sit in a periodic loop (a period "
          f"of at most 12 tokens said twice in a row); {results['prompts_with_loops']} of {n_prompts} prompts loop")
    print(f"self-speculative greedy output identical to autoregressive: {results['greedy_outputs_identical']}")


def print_costs(costs: dict, d: int):
    print(f"\ncosts (median ms): autoregressive step {1000 * costs['ar_step']:.3f}, draft step "
          f"{1000 * costs['draft_step']:.3f}, verification of k drafts (k = 0..{d}) "
          + " ".join(f"{1000 * v:.3f}" for v in costs["verify_by_drafts"]))


def print_reference(results: dict, setting: dict, reference_name: str, n_layers: int) -> float:
    """Self-speculative decoding against the reference model's autoregressive decoding, in characters/s."""
    ss, ref = results["summary"][self_speculative_name(setting)], results["summary"][reference_name]
    print(f"\nagainst {reference_name} ({n_layers} layers, another tokenizer, so compare text): self-speculative "
          f"{ss['chars_per_s'] / ref['chars_per_s']:.2f}x its characters/s ({ss['chars_per_s']:.0f} vs "
          f"{ref['chars_per_s']:.0f}); tokens/s {ss['tokens_per_s']:.1f} vs {ref['tokens_per_s']:.1f}")
    return ss["chars_per_s"] / ref["chars_per_s"]


def print_memory(mem: dict):
    a, s = mem["autoregressive"], mem["self_speculative"]
    print(f"peak memory: autoregressive {a['peak_bytes'] / 2**20:.1f} MiB, self-speculative "
          f"{s['peak_bytes'] / 2**20:.1f} MiB ({100 * (s['peak_bytes'] / a['peak_bytes'] - 1):+.1f}%); decoding "
          f"above the loaded model: {a['above_loaded_bytes'] / 2**20:.1f} vs {s['above_loaded_bytes'] / 2**20:.1f} MiB")


def run_tables(args, models, setting, tables: dict, prompts, report: dict, peer=None):
    """Measure every table's variants in one interleaved run, then print each table with its analysis; the plain
    greedy table's numbers go to the top of the report, a table with logits processors under "with_processors".
    peer: transformers' model of the same weights, whose rows join every table."""
    model = models["checkpoint"][0]
    reference_name = f"{Path(args.reference).stem} autoregressive"
    variants = {(table, name): v for table, processors in tables.items()
                for name, v in table_variants(models, setting, processors, reference_name, peer).items()}
    totals, outputs = measure(variants, prompts, args.max_new_tokens, args.repeats)
    costs = round_costs(model, setting["exit_layer"], setting["num_speculations"])
    report["costs_ms"] = {k: (1000 * v if isinstance(v, float) else [1000 * x for x in v]) for k, v in costs.items()}
    for table, processors in tables.items():
        names = [name for t, name in variants if t == table]
        results = table_results({n: totals[(table, n)] for n in names}, {n: outputs[(table, n)] for n in names},
                                costs, setting)
        print_table(f"Decoding speed ({len(prompts)} {args.prompts} prompts, {args.max_new_tokens} new tokens, "
                    f"{table}, batch 1, median of {args.repeats})", results, reference_name)
        if "reference" in models:
            results["vs_reference_chars_per_s"] = print_reference(results, setting, reference_name,
                                                                  models["reference"][0].params.n_layers)
        if processors:
            print()
            report["with_processors"] = {"processors": processors, **results}
        else:
            print_costs(costs, setting["num_speculations"])
            report.update(results)
        print_analysis(results, setting, model.params.n_layers, len(prompts))
        if "peers" in results:
            print_peers(results, setting, report["peer_setting"])
    if "with_processors" in report:
        ss, processed = self_speculative_name(setting), report["with_processors"]
        print(f"\nself-speculative speedup: {report['summary'][ss]['speedup']:.2f}x plain greedy "
              f"({100 * report['loop_share']:.0f}% of autoregressive tokens in loops), "
              f"{processed['summary'][ss]['speedup']:.2f}x with "
              f"{', '.join(f'{k} {v}' for k, v in processed['processors'].items())} "
              f"({100 * processed['loop_share']:.0f}% in loops)")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models, prompts = load_inputs(args)
    model, tok = models["checkpoint"]
    setting = decoding_settings(model, "self_speculative", args.exit, args.num_speculations, args.draft_threshold,
                                args.draft_cost, args.draft_gamma)
    processors = {}
    if args.repetition_penalty != 1.0:
        processors["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size:
        processors["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    check_settings(args, models, setting, processors, prompts)
    command = shlex.join(["python", "bench.py", *(sys.argv[1:] if argv is None else argv)])  # copy-pasteable
    report = {"command": command, "machine": machine(), "exit_layer": setting["exit_layer"],
              "num_speculations": setting["num_speculations"], "draft_threshold": setting["draft_threshold"],
              "draft_cost": setting["draft_cost"], "draft_gamma": setting["draft_gamma"], "prompts": args.prompts, "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats}
    print(f"# bench: {report['command']}\n# machine: {report['machine']}")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:  # the export lives as long as its model
        peer = load_peer(args.checkpoint, folder) if args.peers else None  # first: a failed export times nothing
        if peer is not None:
            report["peer_setting"] = peer_setting(peer)
        measure_and_report(args, models, setting, processors, prompts, report, peer)


def measure_and_report(args, models, setting, processors, prompts, report, peer=None):
    """The sweep (--sweep, --auto), the speed tables, peak memory; then the JSON, and --auto's recommendation."""
    model, tok = models["checkpoint"]
    if args.batch_sizes:
        report["batches"] = run_batches(args, model, tok, setting, prompts, peer)
        print_batches(report["batches"], len(prompts), args.max_new_tokens, args.repeats)
        print_batch_costs(report["batches"])
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        plot_batches(report["batches"], Path(args.out_dir) / "batch.png", f"{len(prompts)} {args.prompts} prompts, "
                     f"{args.max_new_tokens} new tokens, greedy; {report['machine']}")
        print(f"plot: {Path(args.out_dir) / 'batch.png'}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json}")
        return
    if args.sweep or args.auto:
        exits = args.sweep_exits or list(range(1, max(2, model.params.n_layers // 2) + 1))
        report["sweep"], best = run_sweep(args, model, tok, args.tune, exits)
        if args.auto:  # measure the winner below; store it only once every measurement has succeeded
            keys = ("exit_layer", "num_speculations", "draft_threshold", "draft_cost", "draft_gamma")
            setting.update({k: best[k] for k in keys})
            report.update({k: best[k] for k in keys})
    tables = {"greedy": {}}
    if processors:
        tables["greedy, " + ", ".join(f"{k} {v}" for k, v in processors.items())] = processors
    run_tables(args, models, setting, tables, prompts, report, peer)

    if args.memory:
        report["peak_memory"] = measure_memory(args.checkpoint, {"autoregressive": {}, "self_speculative": setting},
                                               prompts[0], args.max_new_tokens, args.threads)
        print_memory(report["peak_memory"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.auto and not args.store:
        print(f"not stored (add --store to write it into {args.checkpoint})")
    if args.store:
        store_recommendation(args.checkpoint, best, args.tune_prompts)
        print(f"stored exit {setting['exit_layer']}, d {setting['num_speculations']}, threshold "
              f"{setting['draft_threshold']}, draft cost {setting['draft_cost']} (gamma {setting['draft_gamma']}) in "
              f"{args.checkpoint} (tuned on "
              f"--tune_prompts {args.tune_prompts})")


if __name__ == "__main__":
    main()
