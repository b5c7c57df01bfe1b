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

This file parses and checks every flag before the first measurement, then runs what was asked; the measurements
themselves live in benchmarks/, one purpose a file (benchmarks/__init__.py lists them).
"""

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.batches import plot_batches, print_batch_costs, print_batches, run_batches
from benchmarks.memory import measure_memory, print_memory
from benchmarks.peers import check_peers_installed, load_peer, peer_setting
from benchmarks.sweep import run_sweep, store_recommendation
from benchmarks.tables import run_tables
from common import MAX_THREADS, ArgumentParser, fail, int_range, machine, prompt_set, setting_flag
from model_io import load_model
from settings import Settings, recommended

# experiments/levers.py and experiments/compile.py import these from bench
from benchmarks.sweep import calibrate_gamma, draft_confidences  # noqa: F401, E402
from benchmarks.timing import round_costs  # noqa: F401, E402

LAYERSKIP, BASELINE = "checkpoints/layerskip-python-deep.pt", "checkpoints/baseline-python-deep.pt"
TWELVE_LAYERS = "checkpoints/layerskip-python.pt"  # the first reference model, a yardstick of absolute speed
SETTING_KEYS = ("exit_layer", "num_speculations", "draft_threshold", "draft_cost", "draft_gamma")


# ---------------------------------------------------------------------------------------------------------
# The command line: parse and check everything before the first measurement.


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
    p.add_argument("--exit", "--exit_layer", dest="exit", type=setting_flag("exit_layer"),
                   help="exit layer E (default: recommended or L/4)")
    p.add_argument("--num_speculations", type=setting_flag("num_speculations"),
                   help="draft length d (default: recommended or 4)")
    p.add_argument("--draft_threshold", type=setting_flag("draft_threshold"),
                   help="stop drafting below this confidence "
                   "(default: recommended or off; 0 = off)")
    p.add_argument("--draft_cost", type=setting_flag("draft_cost"),
                   help="stop drafting by the cost model instead, a draft step costing this fraction of a "
                        "verification (default: recommended or off)")
    p.add_argument("--draft_gamma", type=setting_flag("draft_gamma"),
                   help="the cost rule's calibration of the draft's confidences, c^gamma (default: recommended or 1)")
    p.add_argument("--no_repeat_ngram_size", type=setting_flag("no_repeat_ngram_size"), default=0,
                   help="with N > 0, a second table: every variant again, never repeating an n-gram of N tokens "
                        "(loops suppressed), interleaved with the plain greedy table")
    p.add_argument("--repetition_penalty", type=setting_flag("repetition_penalty"), default=1.0,
                   help="with R != 1, a second table likewise, with this repetition penalty (with "
                        "--no_repeat_ngram_size: both in one table)")
    p.add_argument("--repeats", type=int_range(1), default=3, help="timed passes over the prompts")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1,
                   help="torch CPU threads, fixed for the whole run (default 1: fastest for these small models, "
                        "and steady when other processes share the cores)")
    p.add_argument("--sweep", action="store_true", help="also sweep exit layer x num_speculations")
    p.add_argument("--sweep_exits", type=setting_flag("exit_layer"), nargs="+",
                   help="exit layers of the sweep (default 1..L/2)")
    p.add_argument("--sweep_specs", type=setting_flag("num_speculations"), nargs="+", default=[2, 3, 4, 6, 8],
                   help="d values of the sweep")
    p.add_argument("--sweep_thresholds", type=setting_flag("draft_threshold"), nargs="+", default=[0.3, 0.5, 0.7],
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
                   "at most B decode at once, a finished row's place going to the next prompt; a plot goes to "
                   "--out_dir")
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
    lengths (Settings), no room in a context window, unwritable outputs."""
    model = models["checkpoint"][0]
    L = model.params.n_layers
    for role, (m, _) in models.items():
        which = "" if role == "checkpoint" else f"--{role} {getattr(args, role)}: "
        try:
            Settings(**({} if role == "reference" else setting), **processors).check(m.params.n_layers)
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


# ---------------------------------------------------------------------------------------------------------
# What was asked: the batch sizes (a run of their own), or the sweep, the speed tables and peak memory; then the
# JSON report, and --auto's recommendation.


def report_batches(args, model, tok, setting, prompts, report, peer=None):
    """--batch_sizes: the batched run, its two tables and its plot."""
    report["batches"] = run_batches(args, model, tok, setting, prompts, peer)
    print_batches(report["batches"], len(prompts), args.max_new_tokens, args.repeats)
    print_batch_costs(report["batches"])
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    plot_batches(report["batches"], Path(args.out_dir) / "batch.png", f"{len(prompts)} {args.prompts} prompts, "
                 f"{args.max_new_tokens} new tokens, greedy; {report['machine']}")
    print(f"plot: {Path(args.out_dir) / 'batch.png'}")


def report_speed(args, models, setting, processors, prompts, report, peer=None):
    """The sweep (--sweep, --auto; --auto measures its winner), the speed tables (a second one with the logits
    processors), peak memory. Returns the sweep's best row (None without a sweep)."""
    model, tok = models["checkpoint"]
    best = None
    if args.sweep or args.auto:
        exits = args.sweep_exits or list(range(1, max(2, model.params.n_layers // 2) + 1))
        report["sweep"], best = run_sweep(args, model, tok, args.tune, exits)
        if args.auto:  # measure the winner below; store it only once every measurement has succeeded
            setting.update({k: best[k] for k in SETTING_KEYS})
            report.update({k: best[k] for k in SETTING_KEYS})
    tables = {"greedy": {}}
    if processors:
        tables["greedy, " + ", ".join(f"{k} {v}" for k, v in processors.items())] = processors
    run_tables(args, models, setting, tables, prompts, report, peer)
    if args.memory:
        report["peak_memory"] = measure_memory(args.checkpoint, {"autoregressive": {}, "self_speculative": setting},
                                               prompts[0], args.max_new_tokens, args.threads)
        print_memory(report["peak_memory"])
    return best


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models, prompts = load_inputs(args)
    model, tok = models["checkpoint"]
    setting = recommended(model, "self_speculative", args.exit, args.num_speculations, args.draft_threshold,
                                args.draft_cost, args.draft_gamma)
    processors = {}
    if args.repetition_penalty != 1.0:
        processors["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size:
        processors["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    check_settings(args, models, setting, processors, prompts)
    command = shlex.join(["python", "bench.py", *(sys.argv[1:] if argv is None else argv)])  # copy-pasteable
    report = {"command": command, "machine": machine(), **{k: setting[k] for k in SETTING_KEYS},
              "prompts": args.prompts, "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats}
    print(f"# bench: {report['command']}\n# machine: {report['machine']}")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:  # the export lives as long as its model
        peer = load_peer(args.checkpoint, folder) if args.peers else None  # first: a failed export times nothing
        if peer is not None:
            report["peer_setting"] = peer_setting(peer)
        if args.batch_sizes:
            report_batches(args, model, tok, setting, prompts, report, peer)
        else:
            best = report_speed(args, models, setting, processors, prompts, report, peer)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.auto and not args.store:
        print(f"not stored (add --store to write it into {args.checkpoint})")
    if args.store:
        store_recommendation(args.checkpoint, best, args.tune_prompts)
        print(f"stored exit {setting['exit_layer']}, d {setting['num_speculations']}, threshold "
              f"{setting['draft_threshold']}, draft cost {setting['draft_cost']} (gamma {setting['draft_gamma']}) "
              f"in {args.checkpoint} (tuned on --tune_prompts {args.tune_prompts})")


if __name__ == "__main__":
    main()
