"""
Decoding speed: autoregressive vs early exit vs self-speculative, batch 1, greedy (paper Tables 3-6, 11).

    python bench.py --prompts humaneval --json out.json      # the shipped models, the default exit and d
    python bench.py --sweep                                    # exit layer x num_speculations heatmap + CSV
    python bench.py --auto                                     # sweep, then store the fastest (E, d) in the checkpoint
    python bench.py --memory                                   # peak memory of AR vs self-speculative decoding

Speedup is the paper's: autoregressive time per token / method time per token, against the same model's
autoregressive decoding and against the baseline twin's. Variants are interleaved prompt by prompt, repeated,
and reported as medians; the thread count is fixed; ratios come from the same run.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import layerskip as ls
from data.prepare import load_prompts

LAYERSKIP, BASELINE = "checkpoints/layerskip-python-deep.pt", "checkpoints/baseline-python-deep.pt"
REFERENCE = "checkpoints/layerskip-python.pt"  # the first, 12-layer reference model: its AR speed is the yardstick


def fail(message):
    print(f"bench.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu}, {os.cpu_count()} cores"
    return f"{dev}; torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}"


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
# End-to-end timing


def encode(model, tok, prompt, max_new_tokens):
    """Prompt ids, cropped from the left where prompt + new tokens would not fit the context window."""
    ids = tok.encode(prompt)
    return ids[-max(1, model.params.max_seq_len - max_new_tokens - 1):]


def run_variants(variants, prompts, max_new_tokens, repeats, progress=True):
    """Time every variant on every prompt, interleaved (the variant order rotates prompt by prompt), `repeats`
    times. Returns {variant: [per-repeat dict(seconds, tokens, drafted, accepted, rounds)]}."""
    for name, (model, tok, kw) in variants.items():  # warm-up
        ls.generate(model, encode(model, tok, prompts[0], 8), 8, eos_id=tok.eos_id, **kw)
    names = list(variants)
    totals = {n: [dict(seconds=0.0, tokens=0, chars=0, drafted=0, accepted=0, rounds=0, rejections=0,
                       drafts_per_round={})
                  for _ in range(repeats)] for n in names}
    outputs = {n: [] for n in names}
    total_runs, done, t_start = repeats * len(prompts) * len(names), 0, time.time()
    for r in range(repeats):
        for i, prompt in enumerate(prompts):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                model, tok, kw = variants[n]
                g = ls.generate(model, encode(model, tok, prompt, max_new_tokens), max_new_tokens,
                                eos_id=tok.eos_id, **kw)
                t = totals[n][r]
                t["seconds"] += g.seconds
                t["tokens"] += len(g.tokens)
                t["chars"] += len(tok.decode(g.tokens))  # tokenizers differ between models; characters do not
                t["drafted"] += g.drafted
                t["accepted"] += g.accepted
                t["rounds"] += g.rounds
                for e in g.events:
                    t["rejections"] += e.accepted < len(e.drafted)
                    t["drafts_per_round"][len(e.drafted)] = t["drafts_per_round"].get(len(e.drafted), 0) + 1
                if r == 0:
                    outputs[n].append(g.tokens)
                done += 1
            if progress:
                eta = (time.time() - t_start) / done * (total_runs - done)
                print(f"\r  repeat {r + 1}/{repeats}, prompt {i + 1}/{len(prompts)}, ETA {eta:.0f} s   ",
                      end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return totals, outputs


def summarize(totals, reference):
    """Per variant: median time per token over repeats, and the median of per-repeat speedups vs reference."""
    out = {}
    for n, reps in totals.items():
        tpt = [t["seconds"] / max(t["tokens"], 1) for t in reps]
        ref = [t["seconds"] / max(t["tokens"], 1) for t in totals[reference]]
        drafted = reps[0]["drafted"]
        out[n] = {"ms_per_token": 1000 * statistics.median(tpt), "tokens_per_s": 1 / statistics.median(tpt),
                  "chars_per_s": statistics.median(t["chars"] / t["seconds"] for t in reps),
                  "speedup": statistics.median(r / t for r, t in zip(ref, tpt)),
                  "acceptance": reps[0]["accepted"] / drafted if drafted else None,
                  "alpha": per_token_acceptance(reps[0]["accepted"], reps[0]["rejections"]) if drafted else None,
                  "tokens_per_round": reps[0]["tokens"] / max(reps[0]["rounds"], 1),
                  "tokens": reps[0]["tokens"]}
    return out


def sweep(model, tok, prompts, max_new_tokens, grid, repeats):
    """Speedup over the same model's autoregressive decoding for every (exit layer, num_speculations,
    draft_threshold) of the grid."""
    variants = {"ar": (model, tok, {})}
    for E, d, th in grid:
        variants[(E, d, th)] = (model, tok, dict(strategy="self_speculative", exit_layer=E, num_speculations=d,
                                                  draft_threshold=th))
    totals, _ = run_variants(variants, prompts, max_new_tokens, repeats)
    summary = summarize(totals, "ar")
    return [{"exit_layer": E, "num_speculations": d, "draft_threshold": th, "speedup": summary[(E, d, th)]["speedup"],
             "acceptance": summary[(E, d, th)]["acceptance"], "ms_per_token": summary[(E, d, th)]["ms_per_token"]}
            for E, d, th in grid]


def plot_sweep(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["draft_threshold"] is None]
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
    """Write the fastest setting into the checkpoint's metadata (atomically), for generate.py and the demo."""
    from model_io import atomic_save, load_checkpoint
    ckpt = load_checkpoint(path)
    ckpt.setdefault("metadata", {})["recommended"] = {
        "exit_layer": best["exit_layer"], "num_speculations": best["num_speculations"],
        "draft_threshold": best["draft_threshold"], "speedup": round(best["speedup"], 3), "prompts": prompts,
        "machine": machine()}
    atomic_save(ckpt, path)


# ---------------------------------------------------------------------------------------------------------
# Peak memory: each decoder in a fresh process, so that one's peak does not hide the other's


def memory_probe(checkpoint, strategy, exit_layer, d, prompt, max_new_tokens):
    import resource
    model, tok = ls.load_model(checkpoint)
    ids = encode(model, tok, prompt, max_new_tokens)
    if torch.cuda.is_available():
        model = model.cuda()
        torch.cuda.reset_peak_memory_stats()
    ls.generate(model, ids, max_new_tokens, strategy=strategy, exit_layer=exit_layer, num_speculations=d)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(checkpoint, E, d, prompt, max_new_tokens):
    out = {}
    for strategy in ("autoregressive", "self_speculative"):
        args = [sys.executable, __file__, "--_memory_probe", strategy, "--checkpoint", checkpoint,
                "--exit", str(E), "--num_speculations", str(d), "--max_new_tokens", str(max_new_tokens)]
        proc = subprocess.run(args, input=prompt, capture_output=True, text=True, check=True)
        out[strategy] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    return out


# ---------------------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=LAYERSKIP, help="the LayerSkip model")
    p.add_argument("--baseline", default=BASELINE, help="its baseline twin ('' to skip)")
    p.add_argument("--reference", default=REFERENCE,
                   help="another model whose autoregressive speed is reported beside (default: the 12-layer model; "
                        "'' to skip)")
    p.add_argument("--prompts", default="humaneval", help="humaneval, shakespeare, or a text file: one prompt per line (a newline is added)")
    p.add_argument("--n_prompts", type=int, default=20, help="how many prompts of the set")
    p.add_argument("--max_new_tokens", type=int, default=64, help="tokens generated per prompt")
    p.add_argument("--exit", "--exit_layer", dest="exit", type=int, help="exit layer (default: recommended or L/4)")
    p.add_argument("--num_speculations", type=int, help="draft length d (default: recommended or 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, fixed for the whole run (default 1: "
                   "fastest for these small models, and steady when other processes share the cores)")
    p.add_argument("--sweep", action="store_true", help="also sweep exit layer x num_speculations")
    p.add_argument("--sweep_exits", type=int, nargs="+", help="exit layers of the sweep (default 1..L/2)")
    p.add_argument("--sweep_specs", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="d values of the sweep")
    p.add_argument("--sweep_thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                   help="adaptive draft thresholds tried on the best (E, d) with d and 2d")
    p.add_argument("--sweep_prompts", type=int, default=8, help="prompts used by the sweep")
    p.add_argument("--draft_threshold", type=float, help="stop drafting below this confidence (default: "
                   "recommended or off)")
    p.add_argument("--auto", action="store_true", help="sweep and store the fastest (E, d) in the checkpoint")
    p.add_argument("--memory", action="store_true", help="measure peak memory of AR vs self-speculative")
    p.add_argument("--out_dir", default="docs", help="where the sweep heatmap and CSV go")
    p.add_argument("--json", help="write every number to this JSON file")
    p.add_argument("--_memory_probe", help=argparse.SUPPRESS)
    p.error = fail
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from model_io import CheckpointError
    if args._memory_probe:
        return memory_probe(args.checkpoint, args._memory_probe, args.exit, args.num_speculations,
                            sys.stdin.read(), args.max_new_tokens)
    try:
        model, tok = ls.load_model(args.checkpoint)
        base = ls.load_model(args.baseline) if args.baseline else None
        use_reference = args.reference and (args.reference != REFERENCE or Path(REFERENCE).exists())
        reference = ls.load_model(args.reference) if use_reference else None  # the default only if shipped
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    try:
        prompts = load_prompts(args.prompts)
    except ValueError:
        if not Path(args.prompts).exists():
            fail(f"--prompts {args.prompts}: not humaneval, shakespeare or an existing file")
        prompts = [line + "\n" for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[:args.n_prompts]
    L = model.params.n_layers
    rec = getattr(model, "metadata", {}).get("recommended", {})
    chosen = ls.speculation_settings(rec, args.exit, args.num_speculations, args.draft_threshold, n_layers=L)
    E, d, th = chosen["exit_layer"], chosen["num_speculations"], chosen["draft_threshold"]
    if not 1 <= E <= L:
        fail(f"--exit {E} is out of range: the model has {L} layers, use 1..{L}")
    if d < 1 or args.max_new_tokens < 1 or min(args.sweep_specs) < 1:
        fail("--num_speculations, --sweep_specs and --max_new_tokens must be at least 1")
    if any(t is not None and not 0 < t <= 1 for t in [th] + args.sweep_thresholds):
        fail("draft thresholds are probabilities in (0, 1]")
    command = shlex.join(["python", "bench.py", *(sys.argv[1:] if argv is None else argv)])  # copy-pasteable
    report = {"command": command, "machine": machine(), "exit_layer": E, "num_speculations": d,
              "draft_threshold": th, "prompts": args.prompts, "n_prompts": len(prompts),
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats}
    print(f"# bench: {report['command']}\n# machine: {report['machine']}")

    if args.sweep or args.auto:
        exits = args.sweep_exits or list(range(1, max(2, L // 2) + 1))
        print(f"sweep: exits {exits} x d {args.sweep_specs} on {args.sweep_prompts} prompts", file=sys.stderr)
        sweep_prompts, reps = prompts[:args.sweep_prompts], max(1, args.repeats - 1)
        rows = sweep(model, tok, sweep_prompts, args.max_new_tokens,
                     [(E_, d_, None) for E_ in exits for d_ in args.sweep_specs], reps)
        best = max(rows, key=lambda r: r["speedup"])
        bE, bd = best["exit_layer"], best["num_speculations"]
        rows += sweep(model, tok, sweep_prompts, args.max_new_tokens,
                      [(bE, d_, th) for d_ in (bd, 2 * bd) for th in args.sweep_thresholds], reps)
        best = max(rows, key=lambda r: r["speedup"])
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "sweep.csv", "w") as f:
            f.write("exit_layer,num_speculations,draft_threshold,speedup,acceptance,ms_per_token\n")
            for r in rows:
                f.write(f"{r['exit_layer']},{r['num_speculations']},{r['draft_threshold'] or ''},{r['speedup']:.4f},"
                        f"{r['acceptance']:.4f},{r['ms_per_token']:.3f}\n")
        try:
            plot_sweep(rows, out / "sweep.png", f"{Path(args.checkpoint).name}: self-speculative speedup")
        except ImportError:
            print("matplotlib is not installed: no heatmap (pip install matplotlib)")
        print(f"\nsweep best: exit {best['exit_layer']}, d {best['num_speculations']}, draft threshold "
              f"{best['draft_threshold']}: {best['speedup']:.2f}x "
              f"(acceptance {best['acceptance']:.2f}); {out}/sweep.csv, {out}/sweep.png")
        report["sweep"] = rows
        if args.auto:  # measure the winner below; store it only once every measurement has succeeded
            E, d, th = best["exit_layer"], best["num_speculations"], best["draft_threshold"]
            report.update(exit_layer=E, num_speculations=d, draft_threshold=th)

    spec = dict(strategy="self_speculative", exit_layer=E, num_speculations=d, draft_threshold=th)
    ss_name = f"self_speculative E={E} d={d}" + (f" threshold {th}" if th else "")
    variants = {"autoregressive": (model, tok, {}),
                f"early_exit E={E}": (model, tok, dict(strategy="early_exit", exit_layer=E)),
                ss_name: (model, tok, spec)}
    if base is not None:
        variants["baseline autoregressive"] = (base[0], base[1], {})
        variants["baseline " + ss_name] = (base[0], base[1], spec)
    reference_name = f"{Path(args.reference).stem} autoregressive" if reference is not None else None
    if reference is not None:
        variants[reference_name] = (reference[0], reference[1], {})
    totals, outputs = run_variants(variants, prompts, args.max_new_tokens, args.repeats)
    summary = summarize(totals, "autoregressive")
    identical = outputs[ss_name] == outputs["autoregressive"]
    if base is not None:
        vs_base = summarize(totals, "baseline autoregressive")
        for n in summary:
            summary[n]["speedup_vs_baseline"] = vs_base[n]["speedup"]
    costs = round_costs(model, E, d)
    ss = summary[ss_name]
    reps = totals[ss_name]
    r = min(reps, key=lambda t: t["seconds"])  # the fastest repeat: the least disturbed by the machine
    predicted = predicted_from_rounds(costs, r["drafts_per_round"], r["tokens"])
    report.update(summary=summary, costs_ms={k: (1000 * v if isinstance(v, float) else [1000 * x for x in v])
                                             for k, v in costs.items()},
                  predicted_speedup=predicted, measured_over_predicted=ss["speedup"] / predicted,
                  predicted_fixed_d=predicted_speedup(costs, ss["alpha"], d), greedy_outputs_identical=identical)

    print(f"\n## Decoding speed ({len(prompts)} {args.prompts} prompts, {args.max_new_tokens} new tokens, greedy, "
          f"batch 1, median of {args.repeats})\n")
    print("| variant | ms/token | tokens/s | chars/s | acceptance | tokens/round | speedup vs AR | "
          "speedup vs baseline AR |")
    print("|---|---|---|---|---|---|---|---|")
    for n, s in summary.items():
        acc = f"{100 * s['acceptance']:.1f}%" if s["acceptance"] is not None else "-"
        vb = f"{s['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in s else "-"
        same_tokenizer = reference is None or n != reference_name  # tokens of another tokenizer: compare chars/s
        sp = f"{s['speedup']:.2f}x" if same_tokenizer else "-"
        vb = vb if same_tokenizer else "-"
        print(f"| {n} | {s['ms_per_token']:.2f} | {s['tokens_per_s']:.1f} | {s['chars_per_s']:.0f} | {acc} | "
              f"{s['tokens_per_round']:.2f} | {sp} | {vb} |")
    if reference is not None:
        ref = summary[reference_name]
        print(f"\nagainst {reference_name} ({reference[0].params.n_layers} layers, another tokenizer, so compare "
              f"text): self-speculative {ss['chars_per_s'] / ref['chars_per_s']:.2f}x its characters/s "
              f"({ss['chars_per_s']:.0f} vs {ref['chars_per_s']:.0f}); tokens/s {ss['tokens_per_s']:.1f} vs "
              f"{ref['tokens_per_s']:.1f}")
        report["vs_reference_chars_per_s"] = ss["chars_per_s"] / ref["chars_per_s"]
    ee = summary[f"early_exit E={E}"]
    print(f"\ncosts (median ms): autoregressive step {1000 * costs['ar_step']:.3f}, draft step "
          f"{1000 * costs['draft_step']:.3f}, verification of k drafts (k = 0..{d}) "
          + " ".join(f"{1000 * v:.3f}" for v in costs["verify_by_drafts"]))
    print(f"predicted speedup from these costs and the run's rounds ({r['rounds']} rounds, {r['tokens']} tokens): "
          f"{predicted:.2f}x; measured {ss['speedup']:.2f}x = {100 * ss['speedup'] / predicted:.0f}% of predicted")
    print(f"per-token acceptance alpha {ss['alpha']:.3f} (drafts accepted / drafts judged); for a fixed d = {d} it "
          f"predicts {report['predicted_fixed_d']:.2f}x")
    # Where the time of a round goes: its draft steps and its verification at their measured costs; the rest is
    # per-round overhead of the decoding loop (prefill included, sampling, bookkeeping).
    per_round = r["seconds"] / r["rounds"]
    drafting = r["drafted"] / r["rounds"] * costs["draft_step"]
    verifying = sum(n * costs["verify_by_drafts"][k] for k, n in r["drafts_per_round"].items()) / r["rounds"]
    other = per_round - drafting - verifying
    report["round_ms"] = {"total": 1000 * per_round, "drafting": 1000 * drafting,
                          "verification": 1000 * verifying, "other": 1000 * other}
    print(f"a round ({r['drafted'] / r['rounds']:.2f} drafts, {r['tokens'] / r['rounds']:.2f} tokens) takes "
          f"{1000 * per_round:.2f} ms: drafting {100 * drafting / per_round:.0f}%, verification "
          f"{100 * verifying / per_round:.0f}%, the rest (prefill, sampling, loop) {100 * other / per_round:.0f}%")
    print(f"early exit E={E}: {ee['tokens_per_s'] / summary['autoregressive']['tokens_per_s']:.2f}x AR tokens/s "
          f"(target 0.8 x L/E = {0.8 * L / E:.2f}x)")
    print(f"self-speculative greedy output identical to autoregressive: {identical}")
    if args.memory:
        mem = measure_memory(args.checkpoint, E, d, prompts[0], args.max_new_tokens)
        report["peak_memory_bytes"] = mem
        a, s = mem["autoregressive"], mem["self_speculative"]
        print(f"peak memory: autoregressive {a / 2**20:.1f} MiB, self-speculative {s / 2**20:.1f} MiB "
              f"({100 * (s / a - 1):+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.auto:
        store_recommendation(args.checkpoint, best, args.prompts)
        print(f"stored exit {E}, d {d}, threshold {th} in {args.checkpoint}")


if __name__ == "__main__":
    main()
