"""
The paper's tables (Tables 3-6, 11): autoregressive, early exit and self-speculative decoding of the checkpoint
(and of its baseline twin, a reference model and transformers' peers when asked), batch 1, timed in one interleaved
run; under each table, what a round's pieces predict, where a round's time goes and whether greedy
self-speculative output equals autoregressive output.
"""

from pathlib import Path

from benchmarks.loops import loop_share
from benchmarks.peers import PEER_AR, peer_results, peer_variants, print_peers
from benchmarks.timing import measure, round_analysis, round_costs, self_speculative_name, summarize


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


def print_costs(costs: dict, d: int):
    print(f"\ncosts (median ms): autoregressive step {1000 * costs['ar_step']:.3f}, draft step "
          f"{1000 * costs['draft_step']:.3f}, verification of k drafts (k = 0..{d}) "
          + " ".join(f"{1000 * v:.3f}" for v in costs["verify_by_drafts"]))


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


def print_reference(results: dict, setting: dict, reference_name: str, n_layers: int) -> float:
    """Self-speculative decoding against the reference model's autoregressive decoding, in characters/s."""
    ss, ref = results["summary"][self_speculative_name(setting)], results["summary"][reference_name]
    print(f"\nagainst {reference_name} ({n_layers} layers, another tokenizer, so compare text): self-speculative "
          f"{ss['chars_per_s'] / ref['chars_per_s']:.2f}x its characters/s ({ss['chars_per_s']:.0f} vs "
          f"{ref['chars_per_s']:.0f}); tokens/s {ss['tokens_per_s']:.1f} vs {ref['tokens_per_s']:.1f}")
    return ss["chars_per_s"] / ref["chars_per_s"]
