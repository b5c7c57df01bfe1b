"""
Watch self-speculative decoding happen: a Gradio app over layerskip.generate_stream.

    python demo_app.py                                   # http://127.0.0.1:7860, the shipped LayerSkip model
    python demo_app.py --checkpoint out/toy/model.pt     # serve this checkpoint too (repeat for several)
    python demo_app.py --host 0.0.0.0 --port 8080        # serve on the network (--share: a gradio.live link)

Every round of decoding is drawn as it happens: the drafts the early exit got right (green), the verifier's own
token, a correction (blue) or a bonus token (violet), and the drafts it rejected (a red count, or struck through).
Beside it: live statistics, a timed comparison with plain autoregressive decoding, the logit lens of the paper's
Fig. 2a, and acceptance rate and speedup against the exit layer. The exit, d and stop rule (fixed d, a confidence
threshold, or the cost model) start at the checkpoint's stored setting (settings.recommended): what Generate,
Compare and the sweep run, and the API's defaults. A repetition penalty and no-repeat n-grams curb the loops a small
model falls into. The page's style and HTML live in demo/ (style.css, templates.html), read at start-up.

The app serves the shipped checkpoints (checkpoints/*.pt) and the ones given with --checkpoint, nothing else: its
page and API are public, and a path typed there must not probe the server's files or fill its memory
(--allow_any_checkpoint lifts this on a trusted machine). At most MAX_MODELS models stay loaded.

The events are methods of Demo, plain functions of plain values, so that tests and scripts call them directly;
Demo.build() only wires them to widgets. They take the widgets' values as sent (Gradio's range checks are off: they
clamp, or fail with a traceback in the server log) and make a settings.Settings of them, whose ValueError (the
setting and its range, settings.RANGES) is said in one line of plain text in the event's error box; nothing runs.
The generation event is an API endpoint: gradio_client.Client(url).submit(prompt="def f(x):",
api_name="/generate").result(); every argument left out takes the control's initial value.
"""

import html
import os
import itertools
import re
import statistics
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Optional

import layerskip as ls
from batcher import Batcher, Busy
from common import ArgumentParser, int_range, interleaved_runs, plural, round_pieces, unfinished_tail
from model_io import INSTALLED_MODELS, chat_prompt, installed_model, load_model, token_texts
from settings import RANGES, STRATEGIES, Range, Settings, recommended

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # selected at start; the menu lists every checkpoints/*.pt
MAX_MODELS = 2  # models kept loaded, the least recently used dropped first
MAX_NEW_TOKENS = Range(1, 512, whole=True, meaning="the context window may allow fewer")  # per generation
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused before tokenizing; the context window decides the rest
SWEEP_TOKENS, SWEEP_REPEATS = 32, 5  # the sweep decodes at most 32 tokens a run, every exit timed 5 times
COMPARE_REPEATS = 3  # Compare times both decodings this many times, interleaved
LENS_COLUMNS = 48  # the logit lens shows the last this-many positions
# How a round stops drafting (settings.Settings.stop_rule), the radio's keys (the API takes them) and labels; a
# rule's boxes start at RULE_DEFAULTS where the model stores no value for them.
STOP_RULES = {"fixed": "fixed d", "threshold": "confidence threshold", "cost": "cost model"}
RULE_DEFAULTS = dict(draft_threshold=0.5, draft_cost=0.15, draft_gamma=1.0)
# Rejected drafts are drawn as a red count per round (their text on hover), as struck-through text (at most
# REJECTED_SHOWN per round, then "+k"), or not at all: a class on the output, switched without decoding again.
REJECTED_VIEWS = {"count": "count", "text": "struck through", "hidden": "hidden"}
REJECTED_SHOWN = 4
RUN_BUTTONS = ("go", "compare", "lens", "sweep")  # disabled until the model panel has loaded (switch_model)
REFUSED = ("this checkpoint is not served here: choose a model from the menu (whoever runs the demo can add "
           "others with --checkpoint, or allow any path with --allow_any_checkpoint)")
# Token kinds: their colour and what the legend says; the kinds each strategy draws; a round without drafts
# (common.round_pieces' "token") drawn as what it is under each strategy (self-speculative: a bonus after 0 drafts).
KINDS = {
    "accepted": ("#b7ebb9", "the first E layers' guess, confirmed"),
    "correction": ("#b9d3fb", "the full model's token for the first rejected draft"),
    "bonus": ("#dcc7f7", "the full model's next token, every draft accepted"),
    "rejected": ("#f9c4c4", "not in the text, counted per round (hover for them)"),
    "early_exit": ("#fde2a3", "the first E layers alone, never verified"),
    "full": ("#b9d3fb", "all layers, one per round"),
}
LEGEND = {"self_speculative": ["accepted", "correction", "bonus", "rejected"], "early_exit": ["early_exit"],
          "autoregressive": ["full"]}
TOKEN_KIND = {"autoregressive": "full", "early_exit": "early_exit", "self_speculative": "bonus"}
CSS = (ROOT / "demo/style.css").read_text()
_sections = re.split(r"^<!-- (\w+) -->\n", (ROOT / "demo/templates.html").read_text(), flags=re.M)[1:]
TEMPLATES = {name: Template(" ".join(text.strip("\n").rstrip().split("\n")))  # a template's lines, one line
             for name, text in zip(_sections[::2], _sections[1::2])}


class Raw(str):
    """HTML built from the templates: filled into another as it is, where any other value is escaped."""


def fill(section: str, /, **values) -> Raw:
    return Raw(TEMPLATES[section].substitute({k: v if isinstance(v, Raw) else html.escape(str(v))
                                           for k, v in values.items()}))


def join(parts) -> Raw:
    return Raw("".join(parts))


@dataclass
class Config:
    """The demo's flags (main): what it serves, where, and how many requests it decodes together."""
    checkpoint: list = field(default_factory=lambda: [DEFAULT_CHECKPOINT])  # served too; the first is selected
    allow_any_checkpoint: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "cpu"
    threads: Optional[int] = None
    batch_size: int = 8  # 1: one request at a time
    max_queue: int = 64


# ---------------------------------------------------------------------------------------------------------
# Models: only the served checkpoints, at most MAX_MODELS loaded at once.


def resolve(path) -> Path:
    """A checkpoint path as typed, or relative to the repository if it is not found from here; a short name of an
    installed model (model_io.INSTALLED_MODELS, e.g. smollm2) is its file."""
    if str(path).strip() in INSTALLED_MODELS:
        return installed_model(str(path).strip())
    p = Path(str(path).strip()).expanduser()
    return ROOT / p if not p.is_absolute() and not p.exists() and (ROOT / p).exists() else p


def shipped() -> list[Path]:
    return sorted((ROOT / "checkpoints").glob("*.pt"))


class Models:
    """The checkpoints the app may load (shipped, launch-given, or any with allow_any) and those loaded."""

    def __init__(self, config: Config):
        self.config, self.served, self.loaded, self.lock = config, set(), OrderedDict(), threading.Lock()
        self.serve(*config.checkpoint)

    def serve(self, *paths):
        """Serve these checkpoints too (they need not exist yet)."""
        self.served.update(str(resolve(p).resolve()) for p in paths)

    def is_served(self, path) -> bool:
        try:
            key = str(resolve(path).resolve())
            return self.config.allow_any_checkpoint or key in self.served | {str(p.resolve()) for p in shipped()}
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not a served path either
            return False

    def cached(self, path):
        """(model, tokenizer) if this served path is loaded already, else None."""
        return self.loaded.get(str(resolve(path).resolve())) if path and self.is_served(path) else None

    def get(self, path):
        """(model, tokenizer), loaded on first use; ValueError if not served or not loadable (CheckpointError is one)."""
        if not path or not str(path).strip():
            raise ValueError("no checkpoint chosen: pick a model from the menu")
        if not self.is_served(path):  # before looking at the file: the answer must not tell whether it exists
            raise ValueError(REFUSED)
        p = resolve(path)
        if not p.exists():
            hint = (" The shipped models are committed with the repository; train your own with `python train.py "
                    "--preset toy` and serve out/toy/model.pt." if str(path) == DEFAULT_CHECKPOINT else "")
            raise ValueError(f"{path}: no such file or directory.{hint}")
        key = str(p.resolve())
        with self.lock:  # two sessions asking at once load it once
            if key not in self.loaded:
                loaded = load_model(p, device=self.config.device)  # first: a file that fails evicts nothing
                while len(self.loaded) >= MAX_MODELS:
                    self.loaded.popitem(last=False)
                self.loaded[key] = loaded
            self.loaded.move_to_end(key)
            return self.loaded[key]


# ---------------------------------------------------------------------------------------------------------
# The controls' values as a Settings; Settings checks them against settings.RANGES.


def check_prompt(prompt):
    """The checks the library cannot make (it sees token ids, not text)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text or pick an example")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the demo takes at most {MAX_PROMPT_CHARS:,}")


def given(name: str, value, bound: Range):
    """A box's value, which must not be empty (an API caller may send null), in its range."""
    if value is None:
        raise ValueError(f"{name} is empty: give {bound.span()}")
    return bound.check(name, value)


def read_settings(model, strategy="self_speculative", exit_layer=None, num_speculations=None, stop_rule=None,
                  draft_threshold=None, draft_cost=None, draft_gamma=None, **sampling) -> Settings:
    """The controls' values as a Settings: strategy, exit, d and stop rule by settings.recommended (none given: the
    stored setting), then the values given, and sampling (temperature, top_p, seed, the logits processors, eos_id).
    stop_rule, a key of STOP_RULES, says which rule's boxes are read; None reads them all (a direct call)."""
    if stop_rule is not None and stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule must be one of {', '.join(STOP_RULES)}, got {stop_rule!r}")
    rule = dict(fixed=dict(draft_threshold=0, draft_cost=0), threshold=dict(draft_threshold=draft_threshold),
                cost=dict(draft_cost=draft_cost, draft_gamma=draft_gamma)).get(stop_rule, dict(
        draft_threshold=draft_threshold, draft_cost=draft_cost, draft_gamma=draft_gamma))
    if stop_rule in ("threshold", "cost") and not rule[f"draft_{stop_rule}"]:  # 0 or None would turn the rule off
        raise ValueError(f"the {stop_rule} stop rule needs draft_{stop_rule} above 0, got "
                         f"{rule[f'draft_{stop_rule}']!r}")
    mine = dict(exit_layer=exit_layer, num_speculations=num_speculations, **rule)
    s = recommended(model, strategy, **{k: mine.get(k) for k in ("exit_layer", "num_speculations", "draft_threshold",
                                                                 "draft_cost", "draft_gamma")})
    s.update({k: v for k, v in mine.items() if v is not None})  # as given: recommended reads 0 as "use the default"
    s.update({k: v if k == "eos_id" else given(k, v, RANGES[k]) for k, v in sampling.items()})
    # Settings checks every value against RANGES; check() also coerces 2.0 to 2 where a whole number is due
    s = {k: RANGES[k].check(k, v) if k in RANGES else v for k, v in s.items()}
    return Settings(**s).check(model.params.n_layers)


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


def control_values(model, exit_layer=None) -> dict:
    """The exit, d and stop-rule controls for a model: its stored setting (settings.recommended), or at another exit
    recommended's defaults there (the stored d and rule were tuned at the stored exit); RULE_DEFAULTS in the boxes
    of the rules not chosen."""
    stored = recommended(model, "self_speculative")
    s = stored if exit_layer in (None, stored["exit_layer"]) else recommended(model, "self_speculative", exit_layer)
    rule = "cost" if s.get("draft_cost") else "threshold" if s.get("draft_threshold") else "fixed"
    return dict(exit_layer=s["exit_layer"], num_speculations=s["num_speculations"], stop_rule=rule,
                **{k: s.get(k) or v for k, v in RULE_DEFAULTS.items()})


def generate_kwargs(s: Settings) -> dict:
    """A Settings as common.interleaved_runs' keyword arguments (it gives the EOS and seed 0 itself)."""
    return {k: v for k, v in s.as_dict().items() if k not in ("eos_id", "seed")}


def error_text(message) -> str:
    """An error for an error box: one line of plain text (the API's callers read it as it is)."""
    return " ".join(str(message).split())


def unchanged():
    """An output left as it is on screen."""
    import gradio as gr
    return gr.update()


# ---------------------------------------------------------------------------------------------------------
# Drawing: the output, the statistics, the model panel.


def render_text(prompt_text, pieces, strategy, rejected="count") -> Raw:
    """The prompt (grey), then the pieces (text, kind, round) coloured by kind, with a legend of the strategy's
    kinds. A round's rejected drafts sit together where they stood: their count, at most REJECTED_SHOWN of them
    struck through and "+k", all their text on hover; the view (REJECTED_VIEWS) shows one of these, by CSS alone."""
    legend = join(fill("key", kind=k, colour=KINDS[k][0], name=k.replace("_", " "), meaning=KINDS[k][1])
                  for k in LEGEND.get(strategy, []))

    def span(text, kind, r):
        return fill("token", kind=kind, colour=KINDS[kind][0], title=f"round {r}: {kind.replace('_', ' ')}", text=text)

    spans = []
    for (r, rejected_run), run in itertools.groupby(pieces, key=lambda p: (p[2], p[1] == "rejected")):
        run = list(run)
        if not rejected_run:
            spans += [span(*piece) for piece in run]
            continue
        more = len(run) - REJECTED_SHOWN
        spans.append(fill("rejected", title=f"round {r}: {plural(len(run), 'rejected draft')}: "
                                            f"{''.join(t for t, _, _ in run)!r}", n=len(run),
                          tokens=join(span(*piece) for piece in run[:REJECTED_SHOWN]),
                          more=fill("more", n=more) if more > 0 else ""))
    return fill("output", view=rejected, legend=legend, prompt=prompt_text, spans=join(spans))


def render_stats(g: ls.Generation, strategy, status="") -> Raw:
    """Live statistics as a row of cards, read from the Generation so far."""
    cards = [("tokens", len(g.tokens)), ("tokens/s", f"{g.tokens_per_s:.1f}" if g.tokens and g.seconds else "–"),
             ("ms/token", f"{1000 * g.time_per_token:.1f}" if g.tokens else "–")]
    if strategy == "self_speculative":
        cards += [("acceptance rate", f"{g.acceptance_rate:.0%}" if g.drafted else "–"),
                  ("tokens/round", f"{g.tokens_per_round:.2f}" if g.rounds else "–"), ("rounds", g.rounds)]
    return fill("stats", cards=join(fill("card", key=k, value=v) for k, v in cards), status=status)


def loss_plot(losses: list[float], mark=None) -> Raw:
    """Every exit's validation loss as a small SVG line plot (exit 1 left, exit L right), exit `mark` orange."""
    lo, hi = min(losses), max(losses)
    points = [(34 + 260 * (E - 1) / max(len(losses) - 1, 1), 4 + 62 * (hi - v) / ((hi - lo) or 1))
              for E, v in enumerate(losses, 1)]
    dots = join(fill("loss_dot", x=f"{x:.1f}", y=f"{y:.1f}", r=3.5 if E == mark else 1.8, E=E, loss=f"{v:.3f}",
                     fill="#e8590c" if E == mark else "#4c6ef5") for E, ((x, y), v) in enumerate(zip(points, losses), 1))
    return fill("loss_plot", line=" ".join(f"{x:.1f},{y:.1f}" for x, y in points), dots=dots, hi=f"{hi:.2f}",
                lo=f"{lo:.2f}", L=len(losses))


def describe(checkpoint, model, tok) -> Raw:
    """The checkpoint in two lines: its size and stored setting; folded away, its shape and every exit's loss."""
    p, meta = model.params, getattr(model, "metadata", None) or {}
    rec, losses = meta.get("recommended") or {}, meta.get("val_loss_per_exit")
    shape = f"dim {p.dim}, vocabulary {tok.vocab_size}, context {p.max_seq_len}"
    return fill("model", name=resolve(checkpoint).name, layers=p.n_layers,
                params=f"{sum(t.numel() for t in model.parameters()) / 1e6:.1f}",
                recommended=fill("recommended", exit=rec["exit_layer"], rule=rule_text(read_settings(model)))
                if rec.get("exit_layer") else "",
                shape=fill("losses", shape=shape, plot=loss_plot(losses, rec.get("exit_layer"))) if losses else
                Raw("<br>" + html.escape(shape)))


def rule_updates(values: dict, shown_only: bool = False):
    """gr.update()s for (stop rule, threshold, draft cost, gamma): their values, and which boxes show (the chosen
    rule's); shown_only: only which boxes show, the values they hold kept."""
    import gradio as gr
    rule = values["stop_rule"]

    def box(key, shown):
        return gr.update(visible=shown, **({} if shown_only else dict(value=values[key])))

    return (gr.update(**({} if shown_only else dict(value=rule))), box("draft_threshold", rule == "threshold"),
            box("draft_cost", rule == "cost"), box("draft_gamma", rule == "cost"))


def rule_changed(stop_rule):
    """The stop-rule radio: show the boxes of the chosen rule (no model runs)."""
    return rule_updates({"stop_rule": stop_rule}, shown_only=True)[1:]


def rounds_as_pieces(stream, tokenizer, prompt_ids, end: int, token_kind: str):
    """After every round of `stream`: (pieces so far, the decoded continuation, the Generation so far, eos). The
    pieces are (text, kind, round) in reading order (common.round_pieces, a round without drafts as token_kind);
    the non-rejected ones join to the text exactly once decoding ends. The time is the model's, not our HTML's."""
    context, pieces, events, seconds, start = list(prompt_ids), [], [], 0.0, len(tokenizer.decode(prompt_ids))
    while True:
        t0 = time.perf_counter()
        event = next(stream, None)
        seconds += time.perf_counter() - t0
        if event is None:
            return
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


def sweep_exits(L: int) -> list[int]:
    """The exits the sweep times: every one; in a model of more than 16 layers the first half (a deeper draft costs
    too much to pay off) and exit L, the sanity check."""
    return list(range(1, L + 1)) if L <= 16 else list(range(1, L // 2 + 1)) + [L]


def sweep_results(ratios, acceptance, L, n, setting, status, progress=None):
    """The sweep's two plots (acceptance and speedup by exit, measured exits only, x from 1 to L) and its note from
    each exit's per-pass speedup ratios so far (exit -> list) and acceptance; progress: (runs done, in all)."""
    import gradio as gr
    import pandas as pd
    measured = [E for E in ratios if ratios[E]]
    speedup = {E: statistics.median(ratios[E]) for E in measured}
    acc = pd.DataFrame({"exit_layer": sorted(acceptance), "acceptance": [acceptance[E] for E in sorted(acceptance)]},
                       columns=["exit_layer", "acceptance"]).astype({"exit_layer": int})
    fast = pd.DataFrame({"exit_layer": measured, "speedup": [speedup[E] for E in measured]},
                        columns=["exit_layer", "speedup"]).astype({"exit_layer": int})

    def spread(E):
        return f"{min(ratios[E]):.2f}–{max(ratios[E]):.2f}×"

    verdict = []
    candidates = [E for E in speedup if E != L] or list(speedup)  # exit L is the sanity check, not a candidate
    if speedup and progress is None:
        best = max(candidates, key=speedup.get)
        verdict.append(fill("fastest" if speedup[best] > 1 else "none_faster", E=best, speedup=f"{speedup[best]:.2f}×",
                            spread=spread(best)))
        if L in speedup:  # the noise check: the full model drafting for itself can be no faster
            verdict.append(fill("sanity", L=L, speedup=f"{speedup[L]:.2f}×", spread=spread(L), warning="" if
                                0.8 <= speedup[L] <= 1.1 else " That is far from 1×: this machine is too busy for "
                                "these timings, and differences of that size mean nothing."))
        verdict.append(" Too early an exit drafts badly; too late a one costs nearly a full pass per draft.")
    rows = join(fill("sweep_row", E=E, acceptance=f"{acceptance[E]:.0%}", speedup=f"{speedup[E]:.2f}×",
                     spread=spread(E), passes=len(ratios[E])) for E in measured)
    bar = Raw(f'<progress value="{progress[0]}" max="{progress[1]}"></progress> ') if progress else ""
    note = fill("sweep", progress=bar, status=status, n=n, setting=setting, passes=SWEEP_REPEATS,
                verdict=join(v if isinstance(v, Raw) else html.escape(v) for v in verdict),
                table=fill("sweep_table", rows=rows) if measured else "")
    x_lim = [0, L + 0.5]  # the axis ends at the last exit, measured or not (+ 0.5: its dot is not cut in half)
    return (gr.update(value=acc, x_lim=x_lim), gr.update(value=fast, x_lim=x_lim,
                                                         y_lim=[0, 1.1 * max([1.5, *speedup.values()])]), note)


def visible(text: str) -> str:
    """Whitespace made visible for a lens cell."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥") or "∅"


def example_prompts() -> list[str]:
    """A few short HumanEval problems (without their leading blank lines) and Shakespeare passages."""
    from data.prepare import load_prompts
    code = [re.sub(r"\A(?:[ \t]*\n)+", "", p) for p in sorted(load_prompts("humaneval"), key=len)[:3]]
    return code + ["\n".join(p.splitlines()[:3]) + "\n" for p in load_prompts("shakespeare")[:3]]


# ---------------------------------------------------------------------------------------------------------
# The events.


class Demo:
    """The app: its config, its models, its batcher (None with batch_size 1), its events and their widgets."""

    def __init__(self, config: Config = None):
        self.config = config or Config()
        self.models = Models(self.config)
        self.batcher = Batcher(self.config.batch_size, self.config.max_queue) if self.config.batch_size > 1 else None

    def switch_model(self, checkpoint, loaded=None, max_new_tokens=64):
        """The model menu and Load: select `checkpoint`, its description, and the controls set to its settings
        (control_values): gr.update()s for (menu, last good model, description, exit, d, stop rule, threshold, draft
        cost, gamma, max new tokens, the run buttons: enabled). A model that fails leaves `loaded`, with the error."""
        import gradio as gr
        try:
            model, tok = self.models.get(checkpoint)
        except (ValueError, OSError) as e:
            still = f" Still using {loaded}." if loaded else ""
            return (gr.update(value=loaded) if loaded else gr.update(), loaded, fill("error", message=f"{e}{still}"),
                    *[gr.update()] * (7 + len(RUN_BUTTONS)))
        v, L = control_values(model), model.params.n_layers
        top = min(MAX_NEW_TOKENS.high, model.params.max_seq_len - 1)  # the prompt takes one
        try:
            new = min(given("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS), top)
        except ValueError:  # the box holds a bad value: the default replaces it
            new = min(64, top)
        return (gr.update(value=str(checkpoint).strip()), str(checkpoint).strip(), describe(checkpoint, model, tok),
                gr.update(maximum=L, value=v["exit_layer"], label=f"exit layer E (1–{L})"),
                gr.update(value=v["num_speculations"]), *rule_updates(v), gr.update(maximum=top, value=new),
                *[gr.update(interactive=True)] * len(RUN_BUTTONS))

    def exit_changed(self, checkpoint, exit_layer):
        """The exit box: d and the stop rule follow (control_values: the stored ones only at the stored exit).
        gr.update()s for (d, stop rule, threshold, draft cost, gamma); none while the box holds no exit of a loaded
        model (this event runs outside the model queue; Generate says what is wrong)."""
        import gradio as gr
        loaded = self.models.cached(checkpoint)
        try:
            E = read_settings(loaded[0], "early_exit", given("exit_layer", exit_layer, RANGES["exit_layer"]))
            v = control_values(loaded[0], E.exit_layer)
        except (TypeError, ValueError):  # not loaded, or not an exit of this model
            return (gr.update(),) * 5
        rule = v["stop_rule"]

        def box(key, shown):  # a rule's box shows with the rule; it takes the setting's value where it has one
            return gr.update(visible=shown, **({"value": v[key]} if shown else {}))

        return (gr.update(value=v["num_speculations"]), gr.update(value=rule), box("draft_threshold", rule ==
                "threshold"), box("draft_cost", rule == "cost"), box("draft_gamma", rule == "cost"))

    def generate(self, checkpoint, prompt, strategy="self_speculative", exit_layer=None, num_speculations=None,
                 stop_rule=None, draft_threshold=None, draft_cost=None, draft_gamma=None, temperature=0.0, top_p=1.0,
                 max_new_tokens=64, seed=0, rejected="count", repetition_penalty=1.0, no_repeat_ngram_size=0,
                 chat=False, control=None):
        """Generate: yields (text HTML, stats HTML, plain continuation, error text) after every round. Stop sets
        control["stop"] (the session's dict): decoding ends after the round on screen and says so. Bad input runs
        nothing: one frame leaves the outputs as they were, with the reason in the error place."""
        control = {} if control is None else control
        control["stop"] = False
        try:
            check_prompt(prompt)
            model, tok = self.models.get(checkpoint)
            n = given("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
            s = read_settings(model, strategy, exit_layer, num_speculations, stop_rule, draft_threshold, draft_cost,
                              draft_gamma, temperature=temperature, top_p=top_p, seed=seed, eos_id=tok.stop_ids,
                              repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
            if rejected not in REJECTED_VIEWS:
                raise ValueError(f"rejected must be one of {', '.join(REJECTED_VIEWS)}, got {rejected!r}")
            if chat not in (True, False):
                raise ValueError(f"chat is true or false, got {chat!r}")
            prompt_ids = chat_prompt(tok, prompt)[1] if chat else tok.encode(prompt)  # the model's own template
            rounds = self.decode_pieces(model, tok, prompt_ids, n, s)  # generate_stream checks the rest, here
        except (ValueError, OSError, Busy) as e:
            yield unchanged(), unchanged(), unchanged(), error_text(e)
            return
        prompt_text = tok.decode(prompt_ids)  # what the model sees; the pieces continue exactly this text
        pieces, text, g, eos = [], "", ls.Generation([], 0.0, 0, 0, 0), False
        yield render_text(prompt_text, [], s.strategy, rejected), render_stats(g, s.strategy, "generating…"), "", ""
        for pieces, text, g, eos in rounds:
            yield (render_text(prompt_text, pieces, s.strategy, rejected),
                   render_stats(g, s.strategy, f"generating… round {g.rounds}"), text, "")
            if control["stop"]:  # checked before decoding the next round: the frame on screen is the last
                break
        if control["stop"]:
            reason = f"stopped: Stop pressed after {len(g.tokens)} new tokens ({plural(g.rounds, 'round')})"
        else:
            reason = "done: stopped " + ("at the end-of-text token" if eos else "at the context window" if
                                         len(prompt_ids) + len(g.tokens) >= model.params.max_seq_len else
                                         f"after {n} new tokens")
        kinds = [kind for _, kind, _ in pieces]
        reason += (f"; exit {s.exit_layer}, {rule_text(s)}; {plural(kinds.count('correction'), 'correction')}, "
                   f"{plural(kinds.count('bonus'), 'bonus token')}" if s.strategy == "self_speculative" else
                   f"; exit {s.exit_layer}" if s.strategy == "early_exit" else "")
        reason += f"; {processors_text(s)}" if processors_text(s) else ""
        yield render_text(prompt_text, pieces, s.strategy, rejected), render_stats(g, s.strategy, reason), text, ""

    def decode_pieces(self, model, tokenizer, prompt_ids, max_new_tokens, settings: Settings):
        """rounds_as_pieces over generate_stream (which checks its arguments at the call), or over the batcher
        (which joins the requests that arrive together into one batch, and gives back this request's rounds)."""
        stream = (self.batcher.submit(model, prompt_ids, max_new_tokens, settings) if self.batcher else
                  ls.generate_stream(model, prompt_ids, max_new_tokens, settings))
        end = min(model.params.max_seq_len, len(prompt_ids) + max_new_tokens)  # where generate_stream stops
        return rounds_as_pieces(stream, tokenizer, prompt_ids, end, TOKEN_KIND[settings.strategy])

    def greedy_setting(self, checkpoint, prompt, max_new_tokens, *drafting, **processors):
        """(model, tokenizer, n, Settings) for Compare and the sweep: greedy self-speculative decoding at the
        controls' exit, d, stop rule and logits processors, every value checked before any timing."""
        check_prompt(prompt)
        model, tok = self.models.get(checkpoint)
        n = given("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
        s = read_settings(model, "self_speculative", *drafting, **processors)
        ls.generate_stream(model, tok.encode(prompt), n, s)  # checks the prompt's length at the call
        return model, tok, n, s

    def compare(self, checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None,
                draft_threshold=None, draft_cost=None, draft_gamma=None, max_new_tokens=64, repetition_penalty=1.0,
                no_repeat_ngram_size=0):
        """Greedy autoregressive vs self-speculative decoding, timed COMPARE_REPEATS times each, interleaved
        (common.interleaved_runs): (HTML with ms/token, the speedup (the median over passes of the per-pass ratio)
        and whether the outputs match; error text)."""
        try:
            model, tok, n, s = self.greedy_setting(checkpoint, prompt, max_new_tokens, exit_layer, num_speculations,
                                                   stop_rule, draft_threshold, draft_cost, draft_gamma,
                                                   repetition_penalty=repetition_penalty,
                                                   no_repeat_ngram_size=no_repeat_ngram_size)
        except (ValueError, OSError) as e:
            return unchanged(), error_text(e)
        variants = {"AR": (model, tok, generate_kwargs(replace(s, strategy="autoregressive"))),
                    "SS": (model, tok, generate_kwargs(s))}
        runs = {"AR": [], "SS": []}  # interleaved, in rotating order, as bench.py times: a slow spell hits both
        for _, _, name, g in interleaved_runs(variants, [prompt], n, COMPARE_REPEATS):
            runs[name].append(g)
        ratios = [a.time_per_token / b.time_per_token for a, b in zip(runs["AR"], runs["SS"])]
        ar, ss = (min(runs[k], key=lambda g: g.time_per_token) for k in ("AR", "SS"))
        ms = [statistics.median(g.time_per_token for g in runs[k]) for k in ("AR", "SS")]
        first = next((i for i, (a, b) in enumerate(zip(ar.tokens, ss.tokens)) if a != b),
                     min(len(ar.tokens), len(ss.tokens)))
        match = (f"✓ identical ({len(ar.tokens)} tokens)" if ar.tokens == ss.tokens else
                 f"✗ they differ from token {first} on")
        rows = join(fill("compare_row", name=name, tokens=len(g.tokens), ms=f"{1000 * t:.2f}", per_s=f"{1 / t:.1f}",
                         acceptance=acc, per_round=per_round) for (name, g, acc, per_round), t in zip(
            [("autoregressive", ar, "–", "1.00"), (f"self-speculative (E={s.exit_layer}, {rule_text(s)})", ss,
                                                   f"{ss.acceptance_rate:.0%}", f"{ss.tokens_per_round:.2f}")], ms))
        cards = join([fill("card", value=f"{statistics.median(ratios):.2f}×",
                           key="speedup (AR ms/token ÷ self-speculative ms/token)"),
                      fill("card", value=match, key="greedy outputs")])
        return fill("compare", rows=rows, passes=COMPARE_REPEATS, spread=f"{min(ratios):.2f}–{max(ratios):.2f}×",
                    both=f"; both with {processors_text(s)}" if processors_text(s) else "", cards=cards), ""

    def lens(self, checkpoint, prompt, text="", exit_layer=None):
        """The logit lens (paper Fig. 2a) over prompt + text: every exit's top-1 next token at the last LENS_COLUMNS
        positions, green where it is already the last layer's, exit E (None: the stored one) outlined."""
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("the prompt is empty: generate something first")
            model, tok = self.models.get(checkpoint)
            E = (control_values(model)["exit_layer"] if exit_layer is None else
                 read_settings(model, "early_exit", exit_layer).exit_layer)
            prompt_ids = tok.encode(prompt)
            ids = tok.encode(tok.decode(prompt_ids) + (text if isinstance(text, str) else ""))
            result = ls.logit_lens(model, ids[:model.params.max_seq_len])
        except (ValueError, OSError) as e:
            return unchanged(), error_text(e)
        L, T = result.top1.shape
        cols, inputs = range(max(0, T - LENS_COLUMNS), T), token_texts(tok, ids, context=[])

        def cell(exit_, t):  # the text token top1 adds after token t (sentencepiece's leading space kept)
            top, p = int(result.top1[ls.block_of_exit(exit_), t]), float(result.prob[ls.block_of_exit(exit_), t])
            s = visible(token_texts(tok, [top], context=[ids[t]])[0])
            bg = (f"rgba(47, 158, 68, {0.15 + 0.75 * p:.2f})" if top == int(result.top1[-1, t]) else
                  f"rgba(134, 142, 150, {0.08 + 0.4 * p:.2f})")
            return fill("lens_cell", background=bg, title=f"exit {exit_}: {s!r} p={p:.2f}", text=s[:8])

        rows = join(fill("lens_row", kind="exit" if exit_ == E else "", cells=join(cell(exit_, t) for t in cols),
                         label=f"exit {exit_}" + (" ◀ E" if exit_ == E else "") + (" (last)" if exit_ == L else ""))
                    for exit_ in range(1, L + 1))
        agree = (result.top1[ls.block_of_exit(E)] == result.top1[-1]).float().mean().item()
        cards = join([fill("card", value=f"{result.mean_layers_needed:.2f} / {L}",
                           key="average layers needed (every position)"),
                      fill("card", value=f"{agree:.0%}", key=f"positions where exit {E} already predicts the last "
                                                            f"layer's token")])
        head = join(fill("lens_head", kind="gen" if t >= len(prompt_ids) else "", t=t, text=visible(inputs[t])[:8])
                    for t in cols)
        needed = join(Raw(f"<td>{int(result.layers_needed[t])}</td>") for t in cols)
        return fill("lens", cards=cards, head=head, rows=rows, needed=needed, L=L), ""

    def sweep(self, checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None, draft_threshold=None,
              draft_cost=None, draft_gamma=None, max_new_tokens=SWEEP_TOKENS, repetition_penalty=1.0,
              no_repeat_ngram_size=0, control=None):
        """The exit-layer sweep, a generator: greedy self-speculative decoding with the controls' d, stop rule and
        processors at each exit of sweep_exits, timed as bench.py times (common.interleaved_runs, SWEEP_REPEATS
        passes). The draft cost is a draft's at the controls' exit E0; at exit E it is priced x E / E0 (a draft
        runs E blocks). Yields (acceptance plot, speedup plot, note, error text) after every run; Stop ends it."""
        control = {} if control is None else control
        control["stop"] = False
        try:
            model, tok, n, s = self.greedy_setting(checkpoint, prompt, min(max_new_tokens, SWEEP_TOKENS)
                                                   if isinstance(max_new_tokens, int) else max_new_tokens,
                                                   exit_layer, num_speculations, stop_rule, draft_threshold,
                                                   draft_cost, draft_gamma, repetition_penalty=repetition_penalty,
                                                   no_repeat_ngram_size=no_repeat_ngram_size)
        except (ValueError, OSError) as e:
            yield unchanged(), unchanged(), unchanged(), error_text(e)
            return
        L, n, E0, cost = model.params.n_layers, min(n, SWEEP_TOKENS), s.exit_layer, s.draft_cost
        variants = {"AR": (model, tok, generate_kwargs(replace(s, strategy="autoregressive")))}
        variants |= {E: (model, tok, generate_kwargs(replace(s, exit_layer=E, draft_cost=cost and min(1.0, cost * E
                                                                                                      / E0))))
                     for E in sweep_exits(L)}
        setting = f"at every exit {rule_text(s)}"
        if cost:
            setting = setting.replace(f"draft cost {cost:g}", f"draft cost {cost:g} at exit {E0}, × E/{E0} at exit E")
        setting = ", ".join(w for w in (setting, processors_text(s)) if w)
        ar_time, times, acceptance = {}, {E: {} for E in sweep_exits(L)}, {}  # pass -> ms/token; exit -> pass -> ..

        def results(status, progress=None):
            ratios = {E: [ar_time[r] / t for r, t in times[E].items() if r in ar_time] for E in times}
            return (*sweep_results(ratios, acceptance, L, n, setting, status, progress), "")

        runs, total = interleaved_runs(variants, [prompt], n, SWEEP_REPEATS), SWEEP_REPEATS * len(variants)
        for done, (r, _, name, g) in enumerate(runs, 1):
            if name == "AR":
                ar_time[r] = g.time_per_token
            else:
                times[name][r], acceptance[name] = g.time_per_token, g.acceptance_rate  # greedy: the same every pass
            yield results(f"timing… pass {r + 1} of {SWEEP_REPEATS}, " + ("autoregressive" if name == "AR" else
                                                                          f"exit {name} of {L}"), (done, total))
            if control["stop"]:  # checked before the next run: the frame on screen is the last measured
                runs.close()
                yield results(f"stopped: Stop pressed in pass {r + 1} of {SWEEP_REPEATS}; the medians of what it "
                              f"measured")
                return
        yield results("done")

    @staticmethod
    def stop(control):
        """The Stop button: ask the session's running generation or sweep to stop after its current step."""
        control["stop"] = True

    # -----------------------------------------------------------------------------------------------------
    # The page: a grid (demo/style.css) of the prompt, the output, the settings and the tabs.

    def initial_values(self) -> dict:
        """The controls' values in the page as served: the first checkpoint's (control_values), so that the API's
        defaults are its stored setting; a checkpoint that does not load gets exit 1, d = 4."""
        try:
            model, _ = self.models.get(self.config.checkpoint[0])
        except (ValueError, OSError):
            return dict(exit_layer=1, num_speculations=4, stop_rule="fixed", **RULE_DEFAULTS, n_layers=32, max_new=64)
        return dict(control_values(model), n_layers=model.params.n_layers,
                    max_new=min(64, MAX_NEW_TOKENS.high, model.params.max_seq_len - 1))

    def menu(self) -> list[tuple[str, str]]:
        """The model menu, (label, path): the shipped checkpoints/*.pt, then the other launch-given checkpoints."""
        items = [(f"{p.stem} (shipped)", f"checkpoints/{p.name}") for p in shipped()]
        known = {resolve(path).resolve() for _, path in items}
        return items + [(str(c), str(c)) for c in self.config.checkpoint if resolve(c).resolve() not in known]

    def build(self):
        """The Blocks app. The controls (and so the API's defaults) start at the first checkpoint's stored setting;
        the run buttons wait for the page's own load of the model panel."""
        import gradio as gr
        from types import SimpleNamespace
        choices, first = self.menu(), resolve(self.config.checkpoint[0]).resolve()
        selected = next((path for _, path in choices if resolve(path).resolve() == first), self.config.checkpoint[0])
        with gr.Blocks(title="LayerSkip: self-speculative decoding") as blocks:
            gr.HTML(f"<style>{CSS}</style>", elem_id="ls-css")  # launch(css=...) would need every caller to pass it
            gr.HTML(fill("head"), padding=False)
            ui = SimpleNamespace(control=gr.State({}),  # per session: Stop sets control["stop"], runs read it
                                 loaded=gr.State(None))  # per session: the last model that loaded
            with gr.Row(elem_id="main"):
                prompt_and_output(ui, choices, selected, example_prompts(), self.config.allow_any_checkpoint)
                settings_and_tabs(ui, self.initial_values())
            self.wire(blocks, ui)
        blocks.queue(max_size=self.config.max_queue, default_concurrency_limit=1)
        return blocks

    def wire(self, blocks, ui):
        """The events; each checks every value itself (preprocess=False: Gradio's checks would clamp a number or
        fail with a traceback in the server log, and never say which control is wrong)."""
        model_events = dict(concurrency_id="model", preprocess=False)  # one queue for all that runs the model
        no_model = dict(api_visibility="private", concurrency_limit=None, preprocess=False)
        rule = [ui.stop_rule, ui.threshold, ui.draft_cost, ui.draft_gamma]
        model_outputs = [ui.checkpoint, ui.loaded, ui.info, ui.exit_layer, ui.num_spec, *rule, ui.max_new,
                         *[getattr(ui, name) for name in RUN_BUTTONS]]
        switch = [ui.checkpoint, ui.loaded, ui.max_new]
        ui.checkpoint.input(self.switch_model, switch, model_outputs, api_name="model_info", **model_events)
        if self.config.allow_any_checkpoint:
            ui.load.click(self.switch_model, [ui.path, ui.loaded, ui.max_new], model_outputs,
                          api_visibility="private", **model_events)
        blocks.load(self.switch_model, switch, model_outputs, api_visibility="private", **model_events)
        ui.exit_layer.input(self.exit_changed, [ui.checkpoint, ui.exit_layer], [ui.num_spec, *rule], **no_model)
        ui.stop_rule.input(rule_changed, [ui.stop_rule], rule[1:], **no_model)
        processors, drafting = [ui.repetition, ui.ngram], [ui.exit_layer, ui.num_spec, *rule]
        gen_inputs = [ui.checkpoint, ui.prompt, ui.strategy, *drafting, ui.temperature, ui.top_p, ui.max_new,
                      ui.seed, ui.rejected, *processors, ui.chat, ui.control]
        gen_outputs = [ui.out, ui.stats, ui.text, ui.error]
        # Generation: one request at a time (--batch_size 1), or as many at once as may wait, joined into batches
        generating = model_events if self.batcher is None else dict(
            concurrency_id="generate", concurrency_limit=self.config.max_queue, preprocess=False)
        gen = ui.go.click(self.generate, gen_inputs, gen_outputs, api_name="generate", show_progress="hidden",
                          **generating)
        lens_inputs = [ui.checkpoint, ui.prompt, ui.text, ui.exit_layer]
        lens_after = gen.then(self.lens, lens_inputs, [ui.lens_out, ui.lens_error], api_visibility="private",
                              show_progress="hidden", **model_events)
        ui.prompt.submit(self.generate, gen_inputs, gen_outputs, api_visibility="private", show_progress="hidden",
                         **generating)
        cmp = ui.compare.click(self.compare, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors],
                               [ui.compare_out, ui.compare_error], api_name="compare", **model_events)
        lns = ui.lens.click(self.lens, lens_inputs, [ui.lens_out, ui.lens_error], api_name="logit_lens",
                            **model_events)
        ui.sweep.click(self.sweep, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors, ui.control],
                       [ui.acceptance_plot, ui.speedup_plot, ui.sweep_note, ui.sweep_error], api_name="sweep",
                       show_progress="hidden", **model_events)
        # Generation and the sweep stop themselves after the step on screen, and say so; the rest is cancelled.
        ui.stop.click(self.stop, [ui.control], None, api_visibility="private", concurrency_limit=None,
                      cancels=[lens_after, cmp, lns])
        # The view of rejected drafts (and their legend entry) is a class on the output: no need to decode again.
        ui.rejected.change(None, [ui.rejected], None, js="(v) => { document.querySelectorAll('#out .ls-out')"
                           ".forEach(e => { e.classList.remove('rej-count', 'rej-text', 'rej-hidden'); "
                           "e.classList.add('rej-' + v); }); }")


def error_box(elem_id):
    """Where an event's bad input is said: one line of plain text (the API's last output), hidden while empty."""
    import gradio as gr
    return gr.Textbox("", placeholder=" ", show_label=False, container=False, interactive=False, lines=1,
                      max_lines=4, elem_id=elem_id, elem_classes=["ls-errbox"])


def button(label, elem_id, **kw):
    import gradio as gr
    return gr.Button(label, elem_id=elem_id, interactive=elem_id not in RUN_BUTTONS, **kw)


def box(value, label, elem_id, bound: Range, high=None, **kw):
    """A number box (Gradio's sliders clamp what is typed) over a setting's range, its `off` value included."""
    import gradio as gr
    return gr.Number(value, label=label, minimum=bound.low if bound.off is None else bound.off,
                     maximum=high or bound.high, step=1 if bound.whole else 0.05, precision=0 if bound.whole else None,
                     elem_id=elem_id, min_width=100, **kw)


def prompt_and_output(ui, choices, selected, examples, allow_any):
    """The model menu, the prompt (the first example in it), the buttons; the error place, statistics, output."""
    import gradio as gr
    with gr.Column(elem_id="col_prompt"):
        ui.checkpoint = gr.Dropdown(choices, value=selected, label="model", show_label=False, container=False,
                                    allow_custom_value=True, elem_id="model")
        if allow_any:
            with gr.Row():
                ui.path = gr.Textbox(label="or a checkpoint path", placeholder="out/toy/model.pt", scale=3)
                ui.load = gr.Button("Load", scale=1, min_width=60)
        ui.info = gr.HTML(elem_id="info", padding=False)
        ui.prompt = gr.Textbox(examples[0], label="prompt", lines=4, max_lines=6, elem_id="prompt")
        with gr.Row():
            ui.go = button("Generate", "go", variant="primary")
            ui.stop = button("Stop", "stop", variant="stop")
    with gr.Column(elem_id="col_out"):
        ui.error = error_box("error")  # bad input: said here, the output stays as it was
        ui.stats = gr.HTML(render_stats(ls.Generation([], 0.0, 0, 0, 0), "self_speculative", "press Generate"),
                           elem_id="stats", padding=False)
        ui.out = gr.HTML(render_text("", [], "self_speculative"), elem_id="out", padding=False)
        ui.rejected = gr.Radio([(label, key) for key, label in REJECTED_VIEWS.items()], value="count",
                               label="rejected drafts, shown as", elem_id="rejected")
        with gr.Accordion("plain text", open=False):
            ui.text = gr.Textbox(label="generated continuation", lines=4, buttons=["copy"], elem_id="text")
    ui.examples = examples


def settings_and_tabs(ui, init):
    """The decoding settings, from `init` (Demo.initial_values), over their settings.RANGES; the stop rule and its
    boxes; the logits processors; the examples; the tabs of compare, logit lens and sweep."""
    import gradio as gr
    L, rule = init["n_layers"], init["stop_rule"]
    with gr.Column(elem_id="col_settings"):
        ui.strategy = gr.Radio(list(STRATEGIES), value="self_speculative", label="strategy", elem_id="strategy")
        ui.chat = gr.Checkbox(False, label="chat: the prompt as a user message, in the model's chat template",
                              elem_id="chat", container=False)
        with gr.Row():  # the exit, d, and the boxes of the stop rule chosen below
            ui.exit_layer = box(init["exit_layer"], f"exit layer E (1–{L})", "exit_layer", RANGES["exit_layer"], L)
            ui.num_spec = box(init["num_speculations"], "drafts per round d (at most)", "num_spec",
                              RANGES["num_speculations"])
            ui.threshold = box(init["draft_threshold"], "draft threshold", "threshold", RANGES["draft_threshold"],
                               visible=rule == "threshold")
            ui.draft_cost = box(init["draft_cost"], "draft cost (verifications)", "draft_cost", RANGES["draft_cost"],
                                visible=rule == "cost")
            ui.draft_gamma = box(init["draft_gamma"], "calibration γ", "draft_gamma", RANGES["draft_gamma"],
                                 visible=rule == "cost")
        ui.stop_rule = gr.Radio([(label, key) for key, label in STOP_RULES.items()], value=rule,
                                label="stop rule: when a round stops drafting", elem_id="stop_rule",
                                info="fixed d: always d drafts · confidence threshold: stop at a draft less sure "
                                     "than that · cost model: stop once one more draft is not worth its cost")
        with gr.Row():
            ui.max_new = box(init["max_new"], "max new tokens", "max_new", MAX_NEW_TOKENS)
            ui.temperature = box(0, "temperature (0 = greedy)", "temperature", RANGES["temperature"])
            ui.top_p = box(1, "top-p", "top_p", RANGES["top_p"])
            ui.seed = box(0, "seed", "seed", RANGES["seed"])
        with gr.Accordion("logits processors: curb loops (drafts and verifier alike)", open=False,
                          elem_id="processors"):
            with gr.Row():
                ui.repetition = box(1.0, "repetition penalty (1 = off)", "repetition_penalty",
                                    RANGES["repetition_penalty"])
                ui.ngram = box(0, "no-repeat n-gram size (0 = off)", "no_repeat_ngram_size",
                               RANGES["no_repeat_ngram_size"])
        gr.Examples(ui.examples, inputs=[ui.prompt], label="examples: HumanEval and Shakespeare")
    with gr.Column(elem_id="col_tabs"):
        with gr.Tab("Compare with autoregressive"):
            ui.compare = button("Run both (greedy)", "compare")
            ui.compare_error = error_box("compare_error")
            ui.compare_out = gr.HTML(elem_id="compare_out")
        with gr.Tab("Logit lens"):
            ui.lens = button("Show the logit lens of the text", "lens")
            ui.lens_error = error_box("lens_error")
            ui.lens_out = gr.HTML(elem_id="lens_out")
        with gr.Tab("Exit-layer sweep"):
            ui.sweep = button(f"Sweep exit layers ({SWEEP_REPEATS} passes × {SWEEP_TOKENS} tokens)", "sweep")
            ui.sweep_error = error_box("sweep_error")
            with gr.Row():  # measured exits only, as dots: a line would invent the exits between them
                plot = dict(x="exit_layer", x_title="exit layer E", x_axis_format="d", height=220, min_width=200)
                ui.acceptance_plot = gr.ScatterPlot(y="acceptance", y_title="acceptance rate", y_lim=[0, 1.08],
                                                    label="acceptance rate by exit", elem_id="acceptance_plot", **plot)
                ui.speedup_plot = gr.ScatterPlot(y="speedup", y_title="speedup ×",
                                                 label="speedup by exit", elem_id="speedup_plot", **plot)
            ui.sweep_note = gr.HTML(elem_id="sweep_note")


def main(argv=None):
    parser = ArgumentParser(description="Serve the LayerSkip demo: self-speculative decoding, live.")
    parser.add_argument("--checkpoint", action="append",
                        help=f"a checkpoint to serve besides checkpoints/*.pt, any path load_model reads; repeat for "
                             f"several, the first is selected at start (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--allow_any_checkpoint", action="store_true",
                        help="let the page and its API load any path on this machine: only where every caller is "
                             "trusted (they can tell which files exist)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the network")
    parser.add_argument("--port", type=int_range(1, 65535), default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default="cpu", help="torch device for the models, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int_range(1, os.cpu_count() or 1),
                        help="torch CPU threads (default on CPU: 1; with another process busy, 2 made decoding "
                             "15-50x slower)")
    parser.add_argument("--batch_size", type=int_range(1, 256), default=Config.batch_size,
                        help=f"generation requests that arrive together decode as one batch of at most this many "
                             f"(default {Config.batch_size}; 1 = one at a time)")
    parser.add_argument("--max_queue", type=int_range(1, 10_000), default=Config.max_queue,
                        help=f"requests that may wait at once; more are refused with a busy message "
                             f"(default {Config.max_queue})")
    args = parser.parse_args(argv)
    config = Config(**dict(vars(args), checkpoint=args.checkpoint or [DEFAULT_CHECKPOINT]))
    print(f"config: {config}")
    if config.threads or config.device == "cpu":
        import torch
        torch.set_num_threads(config.threads or 1)
    for c in config.checkpoint:
        try:
            path = resolve(c)  # a short name whose package is missing says which pip command brings it
        except ValueError as e:
            parser.error(str(e))
        if not path.exists():
            print(f"note: {c} does not exist yet; the app starts anyway. Pick another model in it, or train one "
                  f"(python train.py --preset toy) and pass --checkpoint out/toy/model.pt", file=sys.stderr)
    Demo(config).build().launch(server_name=config.host, server_port=config.port, share=config.share)


if __name__ == "__main__":
    main()
