"""
The demo's view: decoding rounds, statistics, the model panel, Compare, the logit lens and the exit-layer sweep as
HTML, filled into the templates of demo/templates.html (styled by demo/style.css). Plain functions of plain values:
demo_app.py's events call them; nothing here reads a control or decides what runs.
"""
import html
import itertools
import re
import statistics
from pathlib import Path
from string import Template

import layerskip as ls
from common import plural, round_pieces, unfinished_tail
from model_io import token_texts
from settings import Settings

ROOT = Path(__file__).resolve().parent
CSS = (ROOT / "demo/style.css").read_text()
_sections = re.split(r"^<!-- (\w+) -->\n", (ROOT / "demo/templates.html").read_text(), flags=re.M)[1:]
TEMPLATES = {name: Template(" ".join(text.strip("\n").rstrip().split("\n")))  # each template on one line
             for name, text in zip(_sections[::2], _sections[1::2])}
# Rejected drafts show as a red count per round (their text on hover), struck through (at most REJECTED_SHOWN a
# round, then "+k"), or not at all: a class on the output, switched without decoding again.
REJECTED_VIEWS, REJECTED_SHOWN = {"count": "count", "text": "struck through", "hidden": "hidden"}, 4
LENS_COLUMNS = 48  # the logit lens shows the last this-many positions


class Raw(str):
    """HTML made from the templates: filled into another as it is, where any other value is escaped."""


def fill(section: str, /, **values) -> Raw:
    return Raw(TEMPLATES[section].substitute({k: v if isinstance(v, Raw) else html.escape(str(v))
                                              for k, v in values.items()}))


def join(parts) -> Raw:
    return Raw("".join(parts))


def cards(pairs) -> Raw:
    """A row of statistics cards from (key, value) pairs."""
    return join(fill("card", key=k, value=v) for k, v in pairs)


def rule_text(s: Settings) -> str:
    """A self-speculative setting's d and stop rule, in words."""
    if s.draft_cost:
        return f"d ≤ {s.num_speculations}, cost-model stop (draft cost {s.draft_cost:g}, γ {s.draft_gamma:g})"
    if s.draft_threshold:
        return f"d ≤ {s.num_speculations}, stop below confidence {s.draft_threshold:g}"
    return f"d = {s.num_speculations}, fixed"


def processors_text(s: Settings) -> str:
    """The logits processors that are on, in words ("" if none)."""
    return ", ".join(([f"repetition penalty {s.repetition_penalty:g}"] if s.repetition_penalty != 1 else []) +
                     ([f"no repeated {s.no_repeat_ngram_size}-grams"] if s.no_repeat_ngram_size else []))


# ---------------------------------------------------------------------------------------------------------
# Generation: the rounds as coloured pieces of text, and the statistics cards.


def rounds_as_pieces(stream, tokenizer, prompt_ids, end: int, token_kind: str):
    """After every (round, seconds decoding so far) of `stream` (batcher.timed, or a Batcher's): (pieces so far, the
    decoded continuation, the Generation so far, whether it ended at an EOS). Pieces are (text, kind, round) in
    reading order (common.round_pieces; a round without drafts as token_kind): the non-rejected ones join to the
    text once decoding ends. The time is the model's, not the drawing's: a round that waited while the page drew
    it counts when it was decoded."""
    context, pieces, events, start = list(prompt_ids), [], [], len(tokenizer.decode(prompt_ids))
    for event, seconds in stream:
        events.append(event)
        pieces += [(text, token_kind if kind == "token" else kind, len(events))
                   for text, kind in round_pieces(tokenizer, event, context)]
        context += event.tokens
        eos = bool(tokenizer.stop_ids & set(event.tokens))
        held = unfinished_tail(tokenizer, context, start)
        if held and (eos or len(context) >= end):  # the last round: nothing will complete the character
            i = max(i for i, (_, kind, _) in enumerate(pieces) if kind != "rejected")
            pieces[i] = (pieces[i][0] + held, *pieces[i][1:])
        yield list(pieces), tokenizer.decode(context)[start:], ls.Generation.from_events(list(events), seconds), eos


def render_text(prompt_text, pieces, strategy, rejected="count") -> Raw:
    """The prompt (grey), then the pieces (text, kind, round) coloured by kind, under the strategy's legend. A
    round's rejected drafts sit together where they stood: their count, at most REJECTED_SHOWN struck through and
    "+k", all their text on hover; the view (REJECTED_VIEWS) shows one of these, by CSS alone."""
    def span(text, kind, r):  # a kind is a class: its colour is in demo/style.css
        return fill("token", kind=kind, title=f"round {r}: {kind.replace('_', ' ')}", text=text)

    spans = []
    for (r, rejected_run), run in itertools.groupby(pieces, key=lambda p: (p[2], p[1] == "rejected")):
        run = list(run)
        spans += [fill("rejected", n=len(run), tokens=join(span(*p) for p in run[:REJECTED_SHOWN]),
                       title=f"round {r}: {plural(len(run), 'rejected draft')}: {''.join(p[0] for p in run)!r}",
                       more=fill("more", n=len(run) - REJECTED_SHOWN) if len(run) > REJECTED_SHOWN else "")
                  ] if rejected_run else [span(*p) for p in run]
    return fill("output", view=rejected, legend=fill(f"legend_{strategy}"), prompt=prompt_text, spans=join(spans))


def render_stats(g: ls.Generation, strategy, status="") -> Raw:
    """Live statistics as a row of cards, read from the Generation so far."""
    shown = [("tokens", len(g.tokens)), ("tokens/s", f"{g.tokens_per_s:.1f}" if g.tokens and g.seconds else "–"),
             ("ms/token", f"{1000 * g.time_per_token:.1f}" if g.tokens else "–")]
    if strategy == "self_speculative":
        shown += [("acceptance rate", f"{g.acceptance_rate:.0%}" if g.drafted else "–"),
                  ("tokens/round", f"{g.tokens_per_round:.2f}" if g.rounds else "–"), ("rounds", g.rounds)]
    return fill("stats", cards=cards(shown), status=status)


def ending(why: str, s: Settings, pieces) -> str:
    """The line under the cards once decoding ends: why, the setting that ran, and how its rounds ended."""
    kinds = [kind for _, kind, _ in pieces]
    ran = (f"; exit {s.exit_layer}, {rule_text(s)}; {plural(kinds.count('correction'), 'correction')}, "
           f"{plural(kinds.count('bonus'), 'bonus token')}" if s.strategy == "self_speculative" else
           f"; exit {s.exit_layer}" if s.strategy == "early_exit" else "")
    return why + ran + (f"; {processors_text(s)}" if processors_text(s) else "")


# ---------------------------------------------------------------------------------------------------------
# The model panel, Compare, the logit lens.


def describe(name: str, model, tok, stored: Settings) -> Raw:
    """The checkpoint in two lines, its size and stored setting; folded away, its shape and every exit's validation
    loss as a small plot (exit 1 left, exit L right, the stored exit orange)."""
    p, meta = model.params, getattr(model, "metadata", None) or {}
    rec, losses = meta.get("recommended") or {}, meta.get("val_loss_per_exit")
    shape, E = f"dim {p.dim}, vocabulary {tok.vocab_size}, context {p.max_seq_len}", rec.get("exit_layer")
    if losses:
        lo, hi = min(losses), max(losses)
        xy = [(34 + 260 * i / max(len(losses) - 1, 1), 4 + 62 * (hi - v) / ((hi - lo) or 1)) for i, v in
              enumerate(losses)]
        dots = join(fill("loss_dot", x=f"{x:.1f}", y=f"{y:.1f}", r=3.5 if e == E else 1.8, E=e, loss=f"{v:.3f}",
                         fill="#e8590c" if e == E else "#4c6ef5") for e, ((x, y), v) in enumerate(zip(xy, losses), 1))
        plot = fill("loss_plot", line=" ".join(f"{x:.1f},{y:.1f}" for x, y in xy), dots=dots, hi=f"{hi:.2f}",
                    lo=f"{lo:.2f}", L=len(losses))
    return fill("model", name=name, layers=p.n_layers, params=f"{sum(t.numel() for t in model.parameters()) / 1e6:.1f}",
                recommended=fill("recommended", exit=E, rule=rule_text(stored)) if E else "",
                shape=fill("losses", shape=shape, plot=plot) if losses else Raw(f"<br>{html.escape(shape)}"))


def compare_table(runs: dict, s: Settings, passes: int) -> Raw:
    """Compare's table from its Generations, runs["AR"] and runs["SS"] (one per pass): ms/token of the median pass,
    the speedup (the median of the per-pass ratios) and whether the greedy outputs match."""
    ratios = [a.time_per_token / b.time_per_token for a, b in zip(runs["AR"], runs["SS"])]
    ar, ss = (min(runs[k], key=lambda g: g.time_per_token) for k in ("AR", "SS"))
    ms = [statistics.median(g.time_per_token for g in runs[k]) for k in ("AR", "SS")]
    first = next((i for i, (a, b) in enumerate(zip(ar.tokens, ss.tokens)) if a != b), None)
    match = (f"✓ identical ({len(ar.tokens)} tokens)" if ar.tokens == ss.tokens else
             f"✗ they differ from token {min(len(ar.tokens), len(ss.tokens)) if first is None else first} on")
    rows = [("autoregressive", ar, "–", "1.00"), (f"self-speculative (E={s.exit_layer}, {rule_text(s)})", ss,
                                                  f"{ss.acceptance_rate:.0%}", f"{ss.tokens_per_round:.2f}")]
    rows = join(fill("compare_row", name=name, tokens=len(g.tokens), ms=f"{1000 * t:.2f}", per_s=f"{1 / t:.1f}",
                     acceptance=acc, per_round=per_round) for (name, g, acc, per_round), t in zip(rows, ms))
    speedup = ("speedup (AR ms/token ÷ self-speculative ms/token)", f"{statistics.median(ratios):.2f}×")
    return fill("compare", rows=rows, passes=passes, spread=f"{min(ratios):.2f}–{max(ratios):.2f}×",
                both=f"; both with {processors_text(s)}" if processors_text(s) else "",
                cards=cards([speedup, ("greedy outputs", match)]))


def visible(text: str) -> str:
    """Whitespace made visible for a lens cell."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥") or "∅"


def lens_table(lens, tok, ids, n_prompt: int, E: int) -> Raw:
    """The logit lens (ls.logit_lens of ids; n_prompt of them the prompt's): every exit's top-1 next token at the
    last LENS_COLUMNS positions, green where it is already the last layer's; exit E outlined."""
    L, T = lens.top1.shape
    cols, inputs = range(max(0, T - LENS_COLUMNS), T), token_texts(tok, ids, context=[])

    def cell(exit_, t):  # the text top-1 token adds after token t (sentencepiece's leading space kept)
        l = ls.block_of_exit(exit_)
        top, p = int(lens.top1[l, t]), float(lens.prob[l, t])
        s = visible(token_texts(tok, [top], context=[ids[t]])[0])
        bg = (f"rgba(47, 158, 68, {0.15 + 0.75 * p:.2f})" if top == int(lens.top1[-1, t]) else
              f"rgba(134, 142, 150, {0.08 + 0.4 * p:.2f})")
        return fill("lens_cell", background=bg, title=f"exit {exit_}: {s!r} p={p:.2f}", text=s[:8])

    rows = join(fill("lens_row", kind="exit" if e == E else "", cells=join(cell(e, t) for t in cols),
                     label=f"exit {e}" + (" ◀ E" if e == E else "") + (" (last)" if e == L else ""))
                for e in range(1, L + 1))
    agree = (lens.top1[ls.block_of_exit(E)] == lens.top1[-1]).float().mean().item()
    head = join(fill("lens_head", kind="gen" if t >= n_prompt else "", t=t, text=visible(inputs[t])[:8]) for t in cols)
    return fill("lens", head=head, rows=rows, L=L, needed=join(fill("lens_needed", n=int(lens.layers_needed[t]))
                                                                for t in cols),
                cards=cards([("average layers needed (every position)", f"{lens.mean_layers_needed:.2f} / {L}"),
                             (f"positions where exit {E} already predicts the last layer's token", f"{agree:.0%}")]))


# ---------------------------------------------------------------------------------------------------------
# The exit-layer sweep: two plots and a note.


def sweep_setting(s: Settings) -> str:
    """The setting every exit of the sweep ran, in words: the draft cost is given at exit E0 and priced x E / E0."""
    setting = f"at every exit {rule_text(s)}"
    if s.draft_cost:
        setting = setting.replace(f"draft cost {s.draft_cost:g}", f"draft cost {s.draft_cost:g} at exit "
                                  f"{s.exit_layer}, × E/{s.exit_layer} at exit E")
    return ", ".join(w for w in (setting, processors_text(s)) if w)


def sweep_results(times, acceptance, L, n, setting, status, passes, progress=None):
    """The sweep's two plots (acceptance and speedup by exit, measured exits only, x from 1 to L) and note, from
    the time per token so far (run -> pass -> seconds, run "AR" or an exit) and each exit's acceptance; an exit's
    speedup is the median over passes of AR's time / its time in the same pass. progress: (runs done, in all)."""
    import gradio as gr
    import pandas as pd
    ratios = {E: [times["AR"][r] / t for r, t in times[E].items() if r in times["AR"]] for E in times if E != "AR"}
    speedup = {E: statistics.median(r) for E, r in ratios.items() if r}
    acc = pd.DataFrame({"exit_layer": sorted(acceptance), "acceptance": [acceptance[E] for E in sorted(acceptance)]},
                       columns=["exit_layer", "acceptance"]).astype({"exit_layer": int})
    fast = pd.DataFrame({"exit_layer": list(speedup), "speedup": list(speedup.values())},
                        columns=["exit_layer", "speedup"]).astype({"exit_layer": int})

    def spread(E):
        return f"{min(ratios[E]):.2f}–{max(ratios[E]):.2f}×"

    verdict = ""
    if speedup and progress is None:  # done: the fastest exit (exit L is no candidate), and the noise check
        best = max([E for E in speedup if E != L] or speedup, key=speedup.get)
        verdict = fill("verdict", best=fill("fastest" if speedup[best] > 1 else "none_faster", E=best,
                                            speedup=f"{speedup[best]:.2f}×", spread=spread(best)),
                       sanity=fill("sanity", L=L, speedup=f"{speedup[L]:.2f}×", spread=spread(L),
                                   far="" if 0.8 <= speedup[L] <= 1.1 else fill("far")) if L in speedup else "")
    rows = join(fill("sweep_row", E=E, acceptance=f"{acceptance[E]:.0%}", speedup=f"{v:.2f}×", spread=spread(E),
                     passes=len(ratios[E])) for E, v in speedup.items())
    note = fill("sweep", progress=Raw(f'<progress value="{progress[0]}" max="{progress[1]}"></progress> ')
                if progress else "", status=status, n=n, setting=setting, passes=passes,
                verdict=verdict, table=fill("sweep_table", rows=rows) if speedup else "")
    x_lim = [0, L + 0.5]  # the axis ends at the last exit, measured or not (+ 0.5: its dot is not cut in half)
    return (gr.update(value=acc, x_lim=x_lim),
            gr.update(value=fast, x_lim=x_lim, y_lim=[0, 1.1 * max([1.5, *speedup.values()])]), note)
