"""
Watch self-speculative decoding happen: a Gradio app over layerskip.generate_stream.

    python demo_app.py                                   # http://127.0.0.1:7860, the shipped LayerSkip model
    python demo_app.py --checkpoint out/toy/model.pt     # serve this checkpoint too (repeat for several)
    python demo_app.py --host 0.0.0.0 --port 8080        # serve on the network (--share: a gradio.live link)

Every round of decoding is drawn as it happens: the drafts the early exit got right (green), the verifier's own
token, a correction (blue) or a bonus token (violet), and the drafts it rejected (a red count, or struck through).
Beside it: live statistics, a timed comparison with plain autoregressive decoding, the logit lens of the paper's
Fig. 2a, and acceptance rate and speedup against the exit layer. The stop rule (fixed d, a confidence threshold,
or the cost model with its draft cost) is a control like the exit and d, and all of them start at the checkpoint's
stored recommendation: what Generate, Compare and the sweep run, and the API's defaults. A repetition penalty and
no-repeat n-grams (the logits processors, drafts and verifier alike) curb the loops a small model falls into.

The app serves the shipped checkpoints (checkpoints/*.pt) and the ones given with --checkpoint, nothing else:
its page and API are public, and a path typed there must not probe the server's files or fill its memory
(--allow_any_checkpoint lifts this on a trusted machine). At most MAX_MODELS models stay loaded.

The event functions below are plain functions of plain values (strings, numbers) so that tests and scripts can
call them directly; build_demo() only wires them to widgets. They take the widgets' values as sent (Gradio's own
range checks are off: they clamp or fail with a traceback in the server log) and check each against its
control's range, so that a bad value is refused with its reason (plain text, in the event's error box) and never
run as another. The generation event is also an API endpoint: gradio_client.Client(url).submit(prompt="def f(x):",
api_name="/generate").result(); every argument left out takes the control's initial value.
"""

import html
import itertools
import math
import os
import re
import statistics
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import layerskip as ls
from settings import STRATEGIES, Settings
from batcher import Batcher, Busy
from common import ArgumentParser, decoding_settings, int_range, interleaved_runs, round_pieces, unfinished_tail
from model_io import INSTALLED_MODELS, chat_prompt, installed_model, load_model, token_texts

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # selected at start; the menu lists every checkpoints/*.pt
MAX_MODELS = 2  # models kept loaded, the least recently used dropped first
MAX_NEW_TOKENS = 512  # the most tokens one generation may ask for (the context window may allow fewer)
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused before tokenizing; the context window decides the rest
SWEEP_TOKENS = 32  # the exit-layer sweep decodes at most this many tokens per run
SWEEP_REPEATS = 5  # ... and times every exit this many times, interleaved with autoregressive runs
COMPARE_REPEATS = 3  # Compare times both decodings this many times, interleaved
LENS_COLUMNS = 48  # the logit lens shows the last this-many positions
# The controls' ranges. Below MIN_TEMPERATURE and MIN_REPETITION_PENALTY, float32 logits divided by them overflow.
MAX_SPECULATIONS, MAX_SEED, MAX_NGRAM = 32, 2 ** 32 - 1, 32  # d: the cost-model rule may stop any round early
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0
MAX_DRAFT_GAMMA = 10.0
# How a round stops drafting (common.decoding_settings, layerskip.generate_stream): after d drafts; earlier, once a
# draft's confidence is below a threshold; or once the cost model says one more draft is not worth its cost (a draft
# step costs `draft cost` verifications, a confidence c counts as c^gamma). The API takes the keys.
STOP_RULES = {"fixed": "fixed d", "threshold": "confidence threshold", "cost": "cost model"}
# A rule's boxes start at these values where the model stores no value for them (no recommendation, another rule).
RULE_DEFAULTS = dict(draft_threshold=0.5, draft_cost=0.15, draft_gamma=1.0)
# Rejected drafts are drawn as a red count per round (their text on hover), as struck-through text (at most
# REJECTED_SHOWN per round, then "+k"), or not at all: a class on the output, switched without decoding again.
REJECTED_VIEWS = {"count": "count", "text": "struck through", "hidden": "hidden"}
REJECTED_SHOWN = 4
DEVICE = "cpu"  # set by --device
BATCH_SIZE, MAX_QUEUE = 8, 64  # set by --batch_size and --max_queue: requests decoded together, requests waiting
BATCHER = None  # batcher.Batcher when BATCH_SIZE > 1, made by build_demo
ALLOW_ANY = False  # set by --allow_any_checkpoint: load any path load_model reads, not only the served ones
REFUSED = ("this checkpoint is not served here: choose a model from the menu (whoever runs the demo can add "
           "others with --checkpoint, or allow any path with --allow_any_checkpoint)")

# Token kinds, the colours they are drawn in, and what the legend says about them.
KINDS = {
    "accepted": ("#b7ebb9", "accepted draft: the first E layers' guess, confirmed"),
    "correction": ("#b9d3fb", "correction: the full model's token for the first rejected draft"),
    "bonus": ("#dcc7f7", "bonus token: the full model's next token, every draft accepted"),
    "rejected": ("#f9c4c4", "rejected drafts: not in the text, counted per round (hover for them)"),
    "early_exit": ("#fde2a3", "early-exit token: the first E layers alone, never verified"),
    "full": ("#b9d3fb", "full-model token: all layers, one per round"),
}
LEGEND = {"self_speculative": ["accepted", "correction", "bonus", "rejected"], "early_exit": ["early_exit"],
          "autoregressive": ["full"]}
# common.round_pieces calls a round without drafts a "token": drawn as what it is under each strategy (in
# self-speculative decoding, the verifier's token of a round left no room to draft: a bonus after zero drafts)
TOKEN_KIND = {"autoregressive": "full", "early_exit": "early_exit", "self_speculative": "bonus"}

# The output is HTML we build ourselves: highlighted spans inline (no gaps inside words, unlike
# gr.HighlightedText), whitespace and newlines kept, monospace so that code prompts keep their indentation.
# The page is a grid: on a wide screen the prompt and the settings on the left, the output and the tabs on the
# right; below 960 px one column with the output right under the prompt, so that it shows without scrolling.
CSS = """
#main { display: grid !important; gap: 10px 18px; align-items: start;
  grid-template-columns: minmax(300px, 2fr) minmax(0, 3fr); grid-template-rows: auto auto 1fr;
  grid-template-areas: "prompt out" "settings out" "settings tabs"; }
#col_prompt { grid-area: prompt; } #col_out { grid-area: out; }
#col_settings { grid-area: settings; } #col_tabs { grid-area: tabs; }
#main > div { min-width: 0 !important; width: auto !important; }
#main .column { gap: 10px; }
#ls-css { display: none !important; }
.ls-head { font-size: 15px; line-height: 1.5; } .ls-head > b:first-child { font-size: 19px; margin-right: 6px; }
@media (max-width: 960px) { #prompt textarea { max-height: 7.6em !important; } }
@media (max-width: 960px) {
  #main { grid-template-columns: minmax(0, 1fr); grid-template-rows: auto;
    grid-template-areas: "prompt" "out" "settings" "tabs"; }
}
.ls-out { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, 'DejaVu Sans Mono', monospace;
  font-size: 14px; line-height: 1.55; }
.ls-text { white-space: pre-wrap; word-break: break-word; padding: 12px 14px; border-radius: 8px;
  border: 1px solid var(--border-color-primary, #ddd); background: var(--background-fill-secondary, #fafafa);
  min-height: 8em; max-height: min(34em, 62vh); overflow-y: auto; color: var(--body-text-color, #222); }
.ls-text .prompt { color: var(--body-text-color-subdued, #777); }
.ls-tok { border-radius: 3px; color: #111; }
.ls-tok.rejected { text-decoration: line-through; text-decoration-thickness: 2px; color: #8a1c1c; }
.ls-rej .n { font: 700 10px/0 var(--font, sans-serif); color: #c92a2a; vertical-align: super; padding: 0 1px; }
.ls-rej .more { font: 10px/0 var(--font, sans-serif); color: #8a1c1c; vertical-align: super; padding: 0 2px; }
.ls-out.rej-count .ls-rej .ls-tok, .ls-out.rej-count .ls-rej .more, .ls-out.rej-text .ls-rej .n { display: none; }
.ls-out.rej-hidden .ls-rej, .ls-out.rej-hidden .key.rejected { display: none; }
.ls-errbox textarea { background: #fdecec !important; color: #8a1c1c !important; border-color: #f3b7b7 !important;
  font-size: 14px; }
.ls-errbox:has(textarea:placeholder-shown) { display: none !important; }
.ls-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 2px 0 6px; font-size: 12.5px;
  font-family: var(--font, sans-serif); }
.ls-legend .sw { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 5px; color: #111;
  font-family: ui-monospace, monospace; }
.ls-legend .key.rejected .sw { text-decoration: line-through; color: #8a1c1c; }
.ls-stats { display: flex; flex-wrap: wrap; gap: 6px; }
.ls-stats .card { flex: 1 1 90px; padding: 5px 10px; border-radius: 8px;
  border: 1px solid var(--border-color-primary, #ddd); background: var(--background-fill-secondary, #fafafa); }
.ls-stats .v { font-size: 18px; font-weight: 600; font-variant-numeric: tabular-nums; }
.ls-stats .k { font-size: 12px; color: var(--body-text-color-subdued, #666); }
.ls-status { margin: 4px 0 0; font-size: 13px; color: var(--body-text-color-subdued, #666); }
.ls-status details summary { cursor: pointer; } .ls-status .nowrap { white-space: nowrap; }
.ls-status svg { display: block; margin-top: 4px; }
.ls-error { padding: 8px 12px; border-radius: 8px; background: #fdecec; color: #8a1c1c;
  border: 1px solid #f3b7b7; font-size: 14px; }
.ls-table { border-collapse: collapse; font-size: 14px; margin: 0 !important; }
.ls-table td, .ls-table th { padding: 5px 12px !important; border: none !important; text-align: right;
  border-bottom: 1px solid var(--border-color-primary, #ddd) !important; }
.ls-table td:first-child, .ls-table th:first-child { text-align: left; }
.ls-table.ls-sweep { font-size: 12.5px; margin-top: 8px !important; }
.ls-table.ls-sweep td, .ls-table.ls-sweep th { padding: 2px 12px !important; }
.ls-status progress { width: 160px; vertical-align: middle; }
.ls-table th { font-weight: 600; font-size: 12.5px; color: var(--body-text-color-subdued, #666); }
.ls-lens { overflow-x: auto; margin-top: 8px; }
.ls-lens table { border-collapse: separate !important; border-spacing: 1px; margin: 0 !important;
  font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 11px; width: auto !important; }
.ls-lens td, .ls-lens th { padding: 2px 3px !important; border: none !important; text-align: center;
  white-space: pre; min-width: 2.2em; max-width: 5.5em; overflow: hidden; text-overflow: ellipsis;
  border-radius: 2px; line-height: 1.3; }
.ls-lens th { font-weight: 400; color: var(--body-text-color-subdued, #888); }
.ls-lens th.gen { color: var(--body-text-color, #222); font-weight: 700; }
.ls-lens tr.exit td { box-shadow: inset 0 2px #e8590c, inset 0 -2px #e8590c; }
.ls-lens .row-label { text-align: right !important; white-space: nowrap; max-width: none;
  color: var(--body-text-color-subdued, #777); font-family: var(--font, sans-serif); padding-right: 6px !important; }
.ls-lens tr.exit .row-label { color: #e8590c; font-weight: 700; box-shadow: none; }
.ls-lens tr.needed td { color: var(--body-text-color-subdued, #666); }
"""


# ---------------------------------------------------------------------------------------------------------
# Models: only the served checkpoints, at most MAX_MODELS loaded at once.

_models = OrderedDict()  # resolved path -> (model, tokenizer), the most recently used last
_models_lock = threading.Lock()
_served = set()  # resolved paths given at launch (build_demo's checkpoints), served besides checkpoints/*.pt


def resolve(path: str) -> Path:
    """A checkpoint path as typed, or relative to the repository if it is not found from here; a short name of an
    installed model (model_io.INSTALLED_MODELS, e.g. smollm2) is its file."""
    if str(path).strip() in INSTALLED_MODELS:
        return installed_model(str(path).strip())
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        p = ROOT / p
    return p


def shipped() -> list[Path]:
    """The shipped checkpoints: whatever checkpoints/*.pt holds now."""
    return sorted((ROOT / "checkpoints").glob("*.pt"))


def serve(*paths):
    """Serve these checkpoints too (they need not exist yet)."""
    _served.update(str(resolve(p).resolve()) for p in paths)


def is_served(path) -> bool:
    """Whether the demo may load this path: a shipped or launch-given checkpoint, or any with ALLOW_ANY."""
    try:
        return ALLOW_ANY or str(resolve(path).resolve()) in _served | {str(p.resolve()) for p in shipped()}
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not a served path either
        return False


def get_model(path: str):
    """(model, tokenizer) for a served checkpoint path, loaded on first use; ValueError if it is not served or
    cannot be loaded (a CheckpointError is a ValueError)."""
    if not path or not str(path).strip():
        raise ValueError("no checkpoint chosen: pick a model from the menu")
    if not is_served(path):  # before looking at the file: the answer must not tell whether it exists
        raise ValueError(REFUSED)
    p = resolve(path)
    if not p.exists():
        hint = (" The shipped models are committed with the repository; train your own with "
                "`python train.py --preset toy` and serve out/toy/model.pt." if str(path) == DEFAULT_CHECKPOINT else "")
        raise ValueError(f"{path}: no such file or directory.{hint}")
    key = str(p.resolve())
    with _models_lock:  # two sessions asking at once load it once
        if key in _models:
            _models.move_to_end(key)
        else:
            loaded = load_model(p, device=DEVICE)  # first: a file that fails to load evicts nothing
            while len(_models) >= MAX_MODELS:  # then make room: at most MAX_MODELS kept
                _models.popitem(last=False)
            _models[key] = loaded
        return _models[key]


# ---------------------------------------------------------------------------------------------------------
# The controls' values: checked against their ranges, then turned into generate_stream's arguments.


def number(value, name: str, low, high, whole: bool = False, low_open: bool = False):
    """A control's value as a finite number in [low, high] ((low, high] if low_open), an int if whole; else a
    ValueError that names the control and its range. An API caller can send anything: text, None, 1e308."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    above_low = low < x if low_open else low <= x
    if not (math.isfinite(x) and above_low and x <= high and (not whole or x == int(x))):
        span = f"{low}..{high}" if whole else f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be {'a whole number' if whole else 'a number'} in {span}, got {value!r}")
    return int(x) if whole else x


def check_prompt(prompt):
    """The checks the library cannot make (it sees token ids, not text); ValueError names the problem."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text or pick an example")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the demo takes at most {MAX_PROMPT_CHARS:,}")


def read_max_new_tokens(value) -> int:
    return number(value, "max new tokens", 1, MAX_NEW_TOKENS, whole=True)


def read_settings(model, strategy, exit_layer=None, num_speculations=None, stop_rule=None, draft_threshold=None,
                  draft_cost=None, draft_gamma=None, temperature=0.0, top_p=1.0, seed=0, repetition_penalty=1.0,
                  no_repeat_ngram_size=0) -> dict:
    """generate_stream's keyword arguments from the controls' values, each checked against its control's range
    (number). stop_rule is a key of STOP_RULES; only the chosen rule's boxes are read. What is None comes from
    common.decoding_settings: the model's recommendation (its exit, d and stop rule), else exit L // 4, d = 4 and
    no early stop. generate_stream checks the rest (the strategy's name, the prompt's length) at the call."""
    L = model.params.n_layers

    def given(value, *rule, **kw):
        return None if value is None else number(value, *rule, **kw)

    E = given(exit_layer, "exit layer E", 1, L, whole=True)
    d = given(num_speculations, "drafts per round d", 1, MAX_SPECULATIONS, whole=True)
    if stop_rule is None:  # a direct call may name a rule by its value alone
        stop_rule = "threshold" if draft_threshold else "cost" if draft_cost else None
    threshold = cost = gamma = None  # None: the recommended rule, at the recommended exit and d
    if stop_rule is not None and stop_rule not in STOP_RULES:
        raise ValueError(f"the stop rule must be one of {', '.join(STOP_RULES)}, got {stop_rule!r}")
    if stop_rule == "fixed":
        threshold = cost = 0  # 0 = off: every round drafts d
    elif stop_rule == "threshold":
        threshold = number(draft_threshold, "the draft threshold", 0, 1, low_open=True)
    elif stop_rule == "cost":
        cost = number(draft_cost, "the draft cost", 0, 1, low_open=True)
        gamma = number(draft_gamma, "the calibration gamma", 0, MAX_DRAFT_GAMMA, low_open=True)
    dec = decoding_settings(model, strategy, E, d, threshold, cost, gamma)
    t = number(temperature, "temperature (0 = greedy)", 0, MAX_TEMPERATURE)
    if 0 < t < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature!r}")
    return dict(dec, temperature=t, top_p=number(top_p, "top-p", 0, 1, low_open=True),
                seed=number(seed, "seed", 0, MAX_SEED, whole=True),
                repetition_penalty=number(repetition_penalty, "repetition penalty (1 = off)", MIN_REPETITION_PENALTY,
                                          MAX_REPETITION_PENALTY),
                no_repeat_ngram_size=number(no_repeat_ngram_size, "no-repeat n-gram size (0 = off)", 0, MAX_NGRAM,
                                            whole=True))


def rule_text(settings: dict) -> str:
    """A self-speculative setting's d and stop rule, in words."""
    d = settings["num_speculations"]
    if settings.get("draft_cost"):
        return (f"d ≤ {d}, cost-model stop (draft cost {settings['draft_cost']:g}, "
                f"γ {settings.get('draft_gamma', 1.0):g})")
    if settings.get("draft_threshold"):
        return f"d ≤ {d}, stop below confidence {settings['draft_threshold']:g}"
    return f"d = {d}, fixed"


def control_values(model) -> dict:
    """The decoding controls' values for a model: its stored recommendation (common.decoding_settings), the rule
    it names, and RULE_DEFAULTS in the boxes of the other rules."""
    s = decoding_settings(model, "self_speculative")
    rule = "cost" if s["draft_cost"] else "threshold" if s["draft_threshold"] else "fixed"
    return dict(exit_layer=s["exit_layer"], num_speculations=s["num_speculations"], stop_rule=rule,
                draft_threshold=s["draft_threshold"] or RULE_DEFAULTS["draft_threshold"],
                draft_cost=s["draft_cost"] or RULE_DEFAULTS["draft_cost"],
                draft_gamma=s["draft_gamma"] if s["draft_cost"] else RULE_DEFAULTS["draft_gamma"])


def processors_text(settings: dict) -> str:
    """The logits processors that are on, in words ("" if none)."""
    words = ([f"repetition penalty {settings['repetition_penalty']:g}"] if settings["repetition_penalty"] != 1 else [])
    words += [f"no repeated {settings['no_repeat_ngram_size']}-grams"] if settings["no_repeat_ngram_size"] else []
    return ", ".join(words)


def error_html(message) -> str:
    return f'<div class="ls-error">{html.escape(str(message))}</div>'


def error_text(message) -> str:
    """An error for an error box: one line of plain text (the API's callers read it as it is)."""
    return " ".join(str(message).split())


def unchanged():
    """An output left as it is on screen (gr.update() with nothing to update)."""
    import gradio as gr
    return gr.update()


# ---------------------------------------------------------------------------------------------------------
# The model panel and the controls that follow the model.


def loss_plot(losses: list[float], mark=None) -> str:
    """The validation loss of every exit as a small SVG line plot (exit 1 on the left, exit L on the right), exit
    `mark` (the recommended one) as an orange dot."""
    W, H, left, bottom = 300, 84, 34, 14
    lo, hi = min(losses), max(losses)

    def xy(E, v):
        x = left + (W - left - 6) * (E - 1) / max(len(losses) - 1, 1)
        return x, 4 + (H - bottom - 8) * (hi - v) / ((hi - lo) or 1)

    points = [xy(E, v) for E, v in enumerate(losses, 1)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3.5 if E == mark else 1.8}" fill="'
                   f'{"#e8590c" if E == mark else "#4c6ef5"}"><title>exit {E}: {v:.3f}</title></circle>'
                   for E, ((x, y), v) in enumerate(zip(points, losses), 1))
    text = 'font-size="10" fill="currentColor"'
    labels = (f'<text x="{left - 4}" y="10" text-anchor="end" {text}>{hi:.2f}</text>'
              f'<text x="{left - 4}" y="{H - bottom}" text-anchor="end" {text}>{lo:.2f}</text>'
              f'<text x="{left}" y="{H - 1}" {text}>exit 1</text>'
              f'<text x="{W - 6}" y="{H - 1}" text-anchor="end" {text}>exit {len(losses)}</text>')
    return (f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="validation loss by exit">'
            f'<polyline points="{line}" fill="none" stroke="#4c6ef5" stroke-width="1.2"/>{dots}{labels}</svg>')


def describe(checkpoint, model, tok) -> str:
    """The checkpoint in two lines (HTML): its size and recommended setting; folded away, its shape and the
    validation loss of every exit as a small plot."""
    p = model.params
    n_params = sum(t.numel() for t in model.parameters())
    meta = getattr(model, "metadata", None) or {}
    rec = meta.get("recommended") or {}
    text = f"<b>{html.escape(resolve(checkpoint).name)}</b>: {p.n_layers} layers, {n_params / 1e6:.1f} M parameters"
    if rec.get("exit_layer"):  # what bench.py --auto found fastest
        text += (f' · <span class="nowrap">recommended: exit {rec["exit_layer"]}, '
                 f'{html.escape(rule_text(decoding_settings(model, "self_speculative")))}</span>')
    shape = f"dim {p.dim}, vocabulary {tok.vocab_size}, context {p.max_seq_len}"
    losses = meta.get("val_loss_per_exit")
    if losses:  # what train.py measured: how good each exit is on its own
        text += (f"<details><summary>{shape}; validation loss by exit</summary>"
                 f"{loss_plot(losses, rec.get('exit_layer'))}</details>")
    else:
        text += f"<br>{shape}"
    return f'<div class="ls-status">{text}</div>'


def rule_updates(values: dict, shown_only: bool = False):
    """gr.update()s for (stop rule, threshold, draft cost, gamma) from control_values: their values, and which boxes
    show (those of the chosen rule); shown_only: only which boxes show."""
    import gradio as gr
    rule = values["stop_rule"]

    def box(key, shown):
        return gr.update(visible=shown) if shown_only else gr.update(visible=shown, value=values[key])

    return ((gr.update() if shown_only else gr.update(value=rule)), box("draft_threshold", rule == "threshold"),
            box("draft_cost", rule == "cost"), box("draft_gamma", rule == "cost"))


def switch_model(checkpoint, loaded=None, max_new_tokens=64):
    """The model menu and Load: select `checkpoint` and reset the controls to its settings (control_values).
    Returns gr.update()s for (menu, last good model, description, exit layer, drafts per round, stop rule, draft
    threshold, draft cost, gamma, max new tokens, and the four run buttons, enabled once a model has loaded). If it
    cannot be loaded, the menu goes back to `loaded`, the last good model, with the error."""
    import gradio as gr
    keep = gr.update()
    try:
        model, tok = get_model(checkpoint)
    except (ValueError, OSError) as e:
        still = f" Still using {loaded}." if loaded else ""
        return ((gr.update(value=loaded) if loaded else keep), loaded, error_html(f"{e}{still}"),
                *[keep] * (7 + len(RUN_BUTTONS)))
    checkpoint = str(checkpoint).strip()
    v = control_values(model)
    L, top = model.params.n_layers, min(MAX_NEW_TOKENS, model.params.max_seq_len - 1)  # the prompt takes one
    try:
        new = min(read_max_new_tokens(max_new_tokens), top)
    except ValueError:  # the box holds a bad value: the model's default replaces it
        new = min(64, top)
    return (gr.update(value=checkpoint), checkpoint, describe(checkpoint, model, tok),
            gr.update(maximum=L, value=v["exit_layer"], label=f"exit layer E (1–{L})"),
            gr.update(value=v["num_speculations"]), *rule_updates(v), gr.update(maximum=top, value=new),
            *[gr.update(interactive=True)] * len(RUN_BUTTONS))


def exit_changed(checkpoint, exit_layer):
    """The exit-layer box: d and the stop rule follow common.decoding_settings' rule (the recommended ones only at
    the recommended exit). gr.update()s for (drafts per round, stop rule, threshold, draft cost, gamma); none while
    the box holds no exit of this model (Generate says why)."""
    import gradio as gr
    loaded = _models.get(str(resolve(checkpoint).resolve())) if checkpoint and is_served(checkpoint) else None
    try:  # only a model already in memory: this event runs outside the one-model-job queue
        E = number(exit_layer, "exit layer E", 1, loaded[0].params.n_layers, whole=True) if loaded else None
    except ValueError:
        E = None
    if E is None:
        return (gr.update(),) * 5
    s = decoding_settings(loaded[0], "self_speculative", E)
    rule = "cost" if s["draft_cost"] else "threshold" if s["draft_threshold"] else "fixed"

    def box(key, shown):  # a rule's box shows with the rule; it takes the setting's value where it has one
        return gr.update(visible=shown, **({"value": s[key]} if shown and s[key] else {}))

    return (gr.update(value=s["num_speculations"]), gr.update(value=rule), box("draft_threshold", rule == "threshold"),
            box("draft_cost", rule == "cost"), box("draft_gamma", rule == "cost"))


def rule_changed(stop_rule):
    """The stop-rule radio: show the boxes of the chosen rule (no model runs)."""
    return rule_updates({"stop_rule": stop_rule}, shown_only=True)[1:]


# ---------------------------------------------------------------------------------------------------------
# Generation: one pass over layerskip.generate_stream, turned into coloured pieces of text.


def decode_pieces(model, tokenizer, prompt_ids, max_new_tokens, **settings):
    """Start generate_stream (which checks its arguments here, at the call: a ValueError names the problem) and
    return a generator of (pieces, text, stats) after every round: pieces is the list of (text, kind, round) so
    far in reading order, kind one of KINDS; text is the decoded continuation, which "".join of the non-rejected
    pieces equals exactly once decoding ends."""
    if BATCHER is None:  # --batch_size 1: one request at a time
        stream = ls.generate_stream(model, prompt_ids, max_new_tokens, Settings(eos_id=tokenizer.stop_ids, **settings))
    else:  # joins the requests that arrive together into one batch; this request's rounds come back live
        stream = BATCHER.submit(model, prompt_ids, max_new_tokens, eos_id=tokenizer.stop_ids, **settings)
    end = min(model.params.max_seq_len, len(prompt_ids) + max_new_tokens)  # where generate_stream stops
    return rounds_as_pieces(stream, tokenizer, prompt_ids, end, TOKEN_KIND.get(settings.get("strategy")))


def rounds_as_pieces(stream, tokenizer, prompt_ids, end: int, token_kind: str):
    """decode_pieces' generator: common.round_pieces for every round, with a round without drafts drawn as
    token_kind, the model's time (not our HTML's) in stats["seconds"]."""
    context, pieces, start = list(prompt_ids), [], len(tokenizer.decode(prompt_ids))
    stats = dict(tokens=0, rounds=0, drafted=0, accepted=0, corrections=0, bonus=0, seconds=0.0, eos=False)
    while True:
        t0 = time.perf_counter()
        event = next(stream, None)
        stats["seconds"] += time.perf_counter() - t0
        if event is None:
            return
        r = stats["rounds"] = stats["rounds"] + 1
        new = [(text, token_kind if kind == "token" else kind, r) for text, kind in round_pieces(tokenizer, event,
                                                                                                  context)]
        stats["corrections"] += sum(kind == "correction" for _, kind, _ in new)
        stats["bonus"] += sum(kind == "bonus" for _, kind, _ in new)
        pieces += new
        context += event.tokens
        stats["tokens"] += len(event.tokens)
        stats["drafted"] += len(event.drafted)
        stats["accepted"] += event.accepted
        stats["eos"] = bool(tokenizer.stop_ids & set(event.tokens))
        held = unfinished_tail(tokenizer, context, start)
        if held and (stats["eos"] or len(context) >= end):  # the last round: nothing will complete the character
            i = max(i for i, (_, kind, _) in enumerate(pieces) if kind != "rejected")
            pieces[i] = (pieces[i][0] + held, *pieces[i][1:])
        yield list(pieces), tokenizer.decode(context)[start:], dict(stats)


def check_view(rejected) -> str:
    """The rejected-drafts view, a key of REJECTED_VIEWS; ValueError otherwise."""
    if rejected not in REJECTED_VIEWS:
        raise ValueError(f"rejected drafts must be shown as one of {', '.join(REJECTED_VIEWS)}, got {rejected!r}")
    return rejected


def render_text(prompt_text, pieces, strategy, rejected="count") -> str:
    """The prompt (grey) followed by the coloured pieces, with a legend for the strategy's kinds. A round's
    rejected drafts sit together where they would have stood: their count, at most REJECTED_SHOWN of them struck
    through and "+k" for the rest, and all of their text on hover; the view (rejected, REJECTED_VIEWS) shows one of
    these, by CSS alone."""
    legend = "".join(f'<span class="key {k}"><span class="sw" style="background:{KINDS[k][0]}">'
                     f'{k.replace("_", " ")}</span>{html.escape(KINDS[k][1].split(": ", 1)[1])}</span>'
                     for k in LEGEND.get(strategy, []))

    def span(text, kind, r):
        title = f"round {r}: {kind.replace('_', ' ')}"
        return (f'<span class="ls-tok {kind}" style="background:{KINDS[kind][0]}" '
                f'title="{html.escape(title)}">{html.escape(text)}</span>')

    spans = []
    for (r, rejected_run), run in itertools.groupby(pieces, key=lambda p: (p[2], p[1] == "rejected")):
        run = list(run)
        if not rejected_run:
            spans += [span(*piece) for piece in run]
            continue
        title = f"round {r}: {plural(len(run), 'rejected draft')}: {''.join(t for t, _, _ in run)!r}"
        more = len(run) - REJECTED_SHOWN
        spans.append(f'<span class="ls-rej" title="{html.escape(title)}"><sup class="n">{len(run)}</sup>'
                     + "".join(span(*piece) for piece in run[:REJECTED_SHOWN])
                     + (f'<sup class="more">+{more}</sup>' if more > 0 else "") + "</span>")
    return (f'<div class="ls-out rej-{rejected}"><div class="ls-legend">{legend}</div><div class="ls-text">'
            f'<span class="prompt">{html.escape(prompt_text)}</span>{"".join(spans)}</div></div>')


def render_stats(stats, strategy, status="") -> str:
    """Live statistics as a row of cards."""
    s = stats
    cards = [("tokens", f"{s['tokens']}"),
             ("tokens/s", f"{s['tokens'] / s['seconds']:.1f}" if s["seconds"] > 0 else "–"),
             ("ms/token", f"{1000 * s['seconds'] / s['tokens']:.1f}" if s["tokens"] else "–")]
    if strategy == "self_speculative":
        cards += [("acceptance rate", f"{s['accepted'] / s['drafted']:.0%}" if s["drafted"] else "–"),
                  ("tokens/round", f"{s['tokens'] / s['rounds']:.2f}" if s["rounds"] else "–"),
                  ("rounds", f"{s['rounds']}")]
    body = "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>' for k, v in cards)
    return f'<div class="ls-stats">{body}</div><div class="ls-status">{html.escape(status)}</div>'


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def generate(checkpoint, prompt, strategy="self_speculative", exit_layer=None, num_speculations=None,
             stop_rule=None, draft_threshold=None, draft_cost=None, draft_gamma=None, temperature=0.0, top_p=1.0,
             max_new_tokens=64, seed=0, rejected="count", repetition_penalty=1.0, no_repeat_ngram_size=0,
             chat=False, control=None):
    """The Generate button: yields (text HTML, stats HTML, plain continuation, error text) after every round.
    Exit layer, d and stop rule left None come from common.decoding_settings (the stored recommendation). control
    is the session's dict that Stop sets control["stop"] in: decoding then ends after the round on screen and
    says so. Bad input never raises and runs nothing: one frame leaves the text and the statistics as they were
    and puts the reason, as plain text, in the error place."""
    control = {} if control is None else control
    control["stop"] = False
    try:
        check_prompt(prompt)
        model, tok = get_model(checkpoint)
        max_new_tokens = read_max_new_tokens(max_new_tokens)
        settings = read_settings(model, strategy, exit_layer, num_speculations, stop_rule, draft_threshold,
                                 draft_cost, draft_gamma, temperature, top_p, seed, repetition_penalty,
                                 no_repeat_ngram_size)
        rejected = check_view(rejected)
        if chat not in (True, False):
            raise ValueError(f"chat is true or false, got {chat!r}")
        prompt_ids = chat_prompt(tok, prompt)[1] if chat else tok.encode(prompt)  # the model's own template
        rounds = decode_pieces(model, tok, prompt_ids, max_new_tokens, **settings)  # checks the rest, here
    except (ValueError, OSError, Busy) as e:  # CheckpointError is a ValueError; so are generate_stream's checks
        yield unchanged(), unchanged(), unchanged(), error_text(e)
        return
    strategy = settings["strategy"]
    prompt_text = tok.decode(prompt_ids)  # what the model sees; the pieces continue exactly this text
    pieces, text, stats = [], "", dict(tokens=0, rounds=0, drafted=0, accepted=0, corrections=0, bonus=0,
                                       seconds=0.0, eos=False)
    yield render_text(prompt_text, [], strategy, rejected), render_stats(stats, strategy, "generating…"), "", ""
    for pieces, text, stats in rounds:
        yield (render_text(prompt_text, pieces, strategy, rejected),
               render_stats(stats, strategy, f"generating… round {stats['rounds']}"), text, "")
        if control["stop"]:  # checked before decoding the next round: the frame on screen is the last
            break
    if control["stop"]:
        reason = f"stopped: Stop pressed after {stats['tokens']} new tokens ({plural(stats['rounds'], 'round')})"
    else:
        reason = "done: " + ("stopped at the end-of-text token" if stats["eos"] else
                             "stopped at the context window"
                             if len(prompt_ids) + stats["tokens"] >= model.params.max_seq_len
                             else f"stopped after {max_new_tokens} new tokens")
    extra = (f"; exit {settings['exit_layer']}, {rule_text(settings)}; {plural(stats['corrections'], 'correction')}, "
             f"{plural(stats['bonus'], 'bonus token')}" if strategy == "self_speculative" else
             f"; exit {settings['exit_layer']}" if strategy == "early_exit" else "")
    extra += f"; {processors_text(settings)}" if processors_text(settings) else ""
    yield (render_text(prompt_text, pieces, strategy, rejected), render_stats(stats, strategy, reason + extra),
           text, "")


def stop(control):
    """The Stop button: ask the session's running generation or sweep to stop after its current step."""
    control["stop"] = True


# ---------------------------------------------------------------------------------------------------------
# Compare, logit lens, exit-layer sweep.


def compare(checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None, draft_threshold=None,
            draft_cost=None, draft_gamma=None, max_new_tokens=64, repetition_penalty=1.0, no_repeat_ngram_size=0):
    """Greedy autoregressive vs greedy self-speculative on the same prompt, with the same logits processors and the
    controls' exit, d and stop rule, timed COMPARE_REPEATS times each, interleaved (common.interleaved_runs):
    (an HTML table with time per token, the speedup (the median over passes of AR time per token /
    self-speculative time per token) and whether the outputs match; error text)."""
    try:
        check_prompt(prompt)
        model, tok = get_model(checkpoint)
        n = read_max_new_tokens(max_new_tokens)
        spec = read_settings(model, "self_speculative", exit_layer, num_speculations, stop_rule, draft_threshold,
                             draft_cost, draft_gamma, repetition_penalty=repetition_penalty,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        ids = tok.encode(prompt)
        ls.generate_stream(model, ids, n, Settings(**spec))  # checks every argument at the call, before any timing
    except (ValueError, OSError) as e:
        return unchanged(), error_text(e)
    processors = dict(repetition_penalty=spec["repetition_penalty"], no_repeat_ngram_size=spec["no_repeat_ngram_size"])
    greedy = {k: v for k, v in spec.items() if k not in ("temperature", "top_p", "seed")}
    variants = {"AR": (model, tok, dict(strategy="autoregressive", **processors)), "SS": (model, tok, greedy)}
    runs = {"AR": [], "SS": []}  # interleaved, in rotating order, as bench.py times: a slow spell hits both
    for _, _, name, g in interleaved_runs(variants, [prompt], n, COMPARE_REPEATS):
        runs[name].append(g)
    ratios = [a.time_per_token / b.time_per_token for a, b in zip(runs["AR"], runs["SS"])]
    speedup = statistics.median(ratios)
    ar, ss = (min(runs[name], key=lambda g: g.time_per_token) for name in ("AR", "SS"))  # for the table's times
    ar_ms, ss_ms = (statistics.median(g.time_per_token for g in runs[name]) for name in ("AR", "SS"))
    if ar.tokens == ss.tokens:
        match = f"✓ identical ({len(ar.tokens)} tokens)"
    else:
        i = next((i for i, (a, b) in enumerate(zip(ar.tokens, ss.tokens)) if a != b), min(len(ar.tokens),
                                                                                            len(ss.tokens)))
        match = f"✗ they differ from token {i} on"
    rows = [("autoregressive", ar, "–", "1.00"),
            (f"self-speculative (E={spec['exit_layer']}, {rule_text(spec)})", ss,
             f"{ss.acceptance_rate:.0%}", f"{ss.tokens_per_round:.2f}")]
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{len(g.tokens)}</td><td>{1000 * ms:.2f}</td>"
                   f"<td>{1 / ms:.1f}</td><td>{acc}</td><td>{tpr}</td></tr>"
                   for (name, g, acc, tpr), ms in zip(rows, (ar_ms, ss_ms)))
    both = f"; both with {processors_text(spec)}" if processors_text(spec) else ""
    note = (f'<div class="ls-status">{COMPARE_REPEATS} passes, each running both in turn (the order alternating); '
            f"ms/token: the median pass; the speedup: the median over passes of AR ms/token ÷ self-speculative "
            f"ms/token in the same pass (passes: {min(ratios):.2f}–{max(ratios):.2f}×){both}</div>")
    return (f'<table class="ls-table"><tr><th>greedy decoding</th><th>tokens</th><th>ms/token</th>'
            f"<th>tokens/s</th><th>acceptance</th><th>tokens/round</th></tr>{body}</table>{note}"
            f'<div class="ls-stats" style="margin-top:10px"><div class="card"><div class="v">{speedup:.2f}×</div>'
            f'<div class="k">speedup (AR ms/token ÷ self-speculative ms/token)</div></div>'
            f'<div class="card"><div class="v">{match}</div><div class="k">greedy outputs</div></div></div>'), ""


def visible(text: str) -> str:
    """Whitespace made visible for a lens cell."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥") or "∅"


def lens(checkpoint, prompt, text="", exit_layer=None):
    """The logit lens (paper Fig. 2a) over prompt + text: every exit's top-1 next token at the last
    LENS_COLUMNS positions, green where it already equals the last layer's, the chosen exit (None: the
    recommended one) outlined. Returns (HTML, error text)."""
    try:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: generate something first")
        model, tok = get_model(checkpoint)
        E = (control_values(model)["exit_layer"] if exit_layer is None else
             number(exit_layer, "exit layer E", 1, model.params.n_layers, whole=True))
        prompt_ids = tok.encode(prompt)
        ids = tok.encode(tok.decode(prompt_ids) + (text if isinstance(text, str) else ""))
        ids = ids[:model.params.max_seq_len]
        result = ls.logit_lens(model, ids)
    except (ValueError, OSError) as e:
        return unchanged(), error_text(e)
    L, T = result.top1.shape
    cols = range(max(0, T - LENS_COLUMNS), T)
    piece_cache = {}

    def piece(t, after):  # the text token t adds after token `after` (keeps sentencepiece's leading space)
        if (t, after) not in piece_cache:
            piece_cache[(t, after)] = token_texts(tok, [t], context=[after])[0]
        return piece_cache[(t, after)]

    inputs = token_texts(tok, ids, context=[])
    head = "".join(f'<th class="{"gen" if t >= len(prompt_ids) else ""}" title="position {t}">'
                   f"{html.escape(visible(inputs[t])[:8])}</th>" for t in cols)
    rows = []
    for exit_ in range(1, L + 1):  # row exit_ of the lens: the output of block ls.block_of_exit(exit_)
        l = ls.block_of_exit(exit_)
        cells = []
        for t in cols:
            tok_id, p = int(result.top1[l, t]), float(result.prob[l, t])
            agree = tok_id == int(result.top1[-1, t])
            bg = f"rgba(47, 158, 68, {0.15 + 0.75 * p:.2f})" if agree else f"rgba(134, 142, 150, {0.08 + 0.4 * p:.2f})"
            s = visible(piece(tok_id, ids[t]))
            cells.append(f'<td style="background:{bg}" title="exit {exit_}: {html.escape(repr(s))} p={p:.2f}">'
                         f"{html.escape(s[:8])}</td>")
        label = f"exit {exit_}" + (" ◀ E" if exit_ == E else "") + (" (last)" if exit_ == L else "")
        rows.append(f'<tr class="{"exit" if exit_ == E else ""}"><td class="row-label">{label}</td>'
                    f'{"".join(cells)}</tr>')
    needed = "".join(f"<td>{int(result.layers_needed[t])}</td>" for t in cols)
    agree_e = (result.top1[ls.block_of_exit(E)] == result.top1[-1]).float().mean().item()
    summary = (f'<div class="ls-stats"><div class="card"><div class="v">{result.mean_layers_needed:.2f} / {L}</div>'
               f'<div class="k">average layers needed (every position)</div></div>'
               f'<div class="card"><div class="v">{agree_e:.0%}</div><div class="k">positions where exit {E} '
               f'already predicts the last layer\'s token</div></div></div>')
    return (f'{summary}<div class="ls-lens"><table><tr><th class="row-label">input →</th>{head}</tr>'
            f'{"".join(rows)}<tr class="needed"><td class="row-label">layers needed</td>{needed}</tr></table></div>'
            f'<div class="ls-status">Rows: exits 1..{L}, each cell the top-1 prediction for the next token after '
            f"the input token above it (· space, ↵ newline). Green: already the last layer's prediction (darker = "
            f"more probable). Bold headers are generated tokens.</div>"), ""


def sweep_exits(L: int) -> list[int]:
    """The exits the sweep times: every one; in a model of more than 16 layers the first half (a deeper draft costs
    too much to pay off) and exit L, the sanity check."""
    return list(range(1, L + 1)) if L <= 16 else list(range(1, L // 2 + 1)) + [L]


def sweep(checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None, draft_threshold=None,
          draft_cost=None, draft_gamma=None, max_new_tokens=SWEEP_TOKENS, repetition_penalty=1.0,
          no_repeat_ngram_size=0, control=None):
    """The exit-layer sweep, a generator: greedy self-speculative decoding with the controls' d, stop rule and
    logits processors (None: the stored recommendation's, as read_settings reads them) at each exit of
    sweep_exits, timed as bench.py times (common.interleaved_runs): every exit and autoregressive decoding in one
    pass, their order rotating, the pass repeated SWEEP_REPEATS times. The cost model's draft cost is a draft's at
    the controls' exit E; at exit E' a draft runs E' blocks, so it is priced at draft cost x E' / E. An exit's
    speedup is the median over passes of AR time per token / its time per token in the same pass. Yields
    (acceptance plot, speedup plot, summary HTML, error text) after every run, so that the plots fill in and then
    settle; Stop (control["stop"]) ends it early."""
    control = {} if control is None else control
    control["stop"] = False
    try:
        check_prompt(prompt)
        model, tok = get_model(checkpoint)
        L, n = model.params.n_layers, min(read_max_new_tokens(max_new_tokens), SWEEP_TOKENS)
        spec = read_settings(model, "self_speculative", exit_layer, num_speculations, stop_rule, draft_threshold,
                             draft_cost, draft_gamma, repetition_penalty=repetition_penalty,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        ls.generate_stream(model, tok.encode(prompt), n, Settings(**spec))  # checks every argument at the call
    except (ValueError, OSError) as e:
        yield unchanged(), unchanged(), unchanged(), error_text(e)
        return
    E0, cost = spec["exit_layer"], spec.get("draft_cost")
    processors = dict(repetition_penalty=spec["repetition_penalty"], no_repeat_ngram_size=spec["no_repeat_ngram_size"])
    drafting = dict(strategy="self_speculative", num_speculations=spec["num_speculations"],
                    draft_threshold=spec["draft_threshold"], draft_gamma=spec.get("draft_gamma", 1.0), **processors)
    exits = sweep_exits(L)
    variants = {"AR": (model, tok, dict(strategy="autoregressive", **processors))}
    variants |= {E: (model, tok, dict(drafting, exit_layer=E, draft_cost=cost and min(1.0, cost * E / E0)))
                 for E in exits}
    setting = f"at every exit {rule_text(spec)}"
    if cost:
        setting = setting.replace(f"draft cost {cost:g}", f"draft cost {cost:g} at exit {E0}, × E/{E0} at exit E")
    setting = ", ".join(w for w in (setting, processors_text(spec)) if w)
    ar_time, times, acceptance = {}, {E: {} for E in exits}, {}  # pass -> ms/token; exit -> pass -> ms/token

    def results(status, progress=None):
        ratios = {E: [ar_time[r] / t for r, t in times[E].items() if r in ar_time] for E in exits}
        return (*sweep_results(ratios, acceptance, L, n, setting, status, progress), "")

    runs, total = interleaved_runs(variants, [prompt], n, SWEEP_REPEATS), SWEEP_REPEATS * len(variants)
    for done, (r, _, name, g) in enumerate(runs, 1):
        if name == "AR":
            ar_time[r] = g.time_per_token
        else:
            times[name][r], acceptance[name] = g.time_per_token, g.acceptance_rate  # greedy: the same every pass
        yield results(f"timing… pass {r + 1} of {SWEEP_REPEATS}, " + ("autoregressive" if name == "AR" else
                                                                      f"exit {name} of {L}"), progress=(done, total))
        if control["stop"]:  # checked before the next run: the frame on screen is the last measured
            runs.close()
            yield results(f"stopped: Stop pressed in pass {r + 1} of {SWEEP_REPEATS}; the medians of what it measured")
            return
    yield results("done")


def sweep_results(ratios, acceptance, L, n, setting, status, progress=None):
    """The sweep's two plots (acceptance and speedup by exit, measured exits only, x from 1 to L) and summary HTML
    from each exit's per-pass speedup ratios so far (exit -> list) and its acceptance rate; progress: (runs done,
    runs in all) while it runs."""
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

    bar = f'<progress value="{progress[0]}" max="{progress[1]}"></progress> ' if progress else ""
    note = (f"{bar}{html.escape(status)}<br>{n} greedy tokens per run, {html.escape(setting)}; every exit and "
            f"autoregressive decoding run once per pass, in rotating order, {SWEEP_REPEATS} passes; an exit's "
            f"speedup is the median over passes of autoregressive ms/token ÷ its ms/token in the same pass.")
    candidates = [E for E in speedup if E != L] or list(speedup)  # exit L is the sanity check, not a candidate
    if speedup and progress is None:
        best = max(candidates, key=speedup.get)
        note += (f"<br><b>Fastest: exit {best}, {speedup[best]:.2f}×</b> (passes: {spread(best)})."
                 if speedup[best] > 1 else f"<br><b>No exit beat autoregressive decoding</b> (best: exit {best}, "
                                           f"{speedup[best]:.2f}×).")
        if L in speedup:  # the noise check: the full model drafting for itself can be no faster
            note += (f"<br>Sanity check: exit {L} = L drafts with the whole model, so it can be no faster than "
                     f"autoregressive decoding; it measured {speedup[L]:.2f}× (passes {spread(L)})."
                     + ("" if 0.8 <= speedup[L] <= 1.1 else " That is far from 1×: this machine is too busy for "
                        "these timings, and differences of that size mean nothing."))
        note += " Too early an exit drafts badly; too late a one costs nearly a full pass per draft."
    rows = "".join(f"<tr><td>{E}</td><td>{acceptance[E]:.0%}</td><td>{speedup[E]:.2f}×</td><td>{spread(E)}</td>"
                   f"<td>{len(ratios[E])}</td></tr>" for E in measured)
    table = (f'<table class="ls-table ls-sweep"><tr><th>exit</th><th>acceptance</th><th>speedup (median)</th>'
             f"<th>slowest–fastest pass</th><th>passes</th></tr>{rows}</table>") if measured else ""
    x_lim = [0, L + 0.5]  # the axis ends at the last exit, measured or not (+ 0.5: its dot is not cut in half)
    top = 1.1 * max([1.5, *speedup.values()])
    return (gr.update(value=acc, x_lim=x_lim), gr.update(value=fast, x_lim=x_lim, y_lim=[0, top]),
            f'<div class="ls-status">{note}</div>{table}')


# ---------------------------------------------------------------------------------------------------------
# The UI

def example_prompts() -> list[str]:
    """A few short HumanEval problems (without their leading blank lines) and Shakespeare passages."""
    from data.prepare import load_prompts
    code = [re.sub(r"\A(?:[ \t]*\n)+", "", p) for p in sorted(load_prompts("humaneval"), key=len)[:3]]
    verse = ["\n".join(p.splitlines()[:3]) + "\n" for p in load_prompts("shakespeare")[:3]]
    return code + verse


def menu(checkpoints) -> list[tuple[str, str]]:
    """The model menu, (label, path): the shipped checkpoints/*.pt, then the other launch-given checkpoints."""
    items = [(f"{p.stem} (shipped)", f"checkpoints/{p.name}") for p in shipped()]
    known = {resolve(path).resolve() for _, path in items}
    return items + [(str(c), str(c)) for c in checkpoints if resolve(c).resolve() not in known]




RUN_BUTTONS = ("go", "compare", "lens", "sweep")  # disabled until the model panel has loaded (switch_model)


def initial_values(checkpoint) -> dict:
    """The controls' values in the page as served, before any event: the first checkpoint's (control_values), so
    that the API's defaults are its stored recommendation; a checkpoint that does not load gets exit 1, d = 4."""
    try:
        model, _ = get_model(checkpoint)
    except (ValueError, OSError):
        return dict(exit_layer=1, num_speculations=4, stop_rule="fixed", **RULE_DEFAULTS, n_layers=32, max_new=64)
    top = min(MAX_NEW_TOKENS, model.params.max_seq_len - 1)
    return dict(control_values(model), n_layers=model.params.n_layers, max_new=min(64, top))


def build_demo(checkpoints=(DEFAULT_CHECKPOINT,)):
    """The Blocks app, serving checkpoints/*.pt and `checkpoints` (a path or several, the first selected at
    start; see serve()). Loads the first checkpoint, whose stored setting the controls (and so the API's defaults)
    start with; the run buttons wait for the page's own load of the model panel."""
    import gradio as gr

    global BATCHER
    if BATCH_SIZE > 1 and BATCHER is None:  # one batcher per process, for every app it builds
        BATCHER = Batcher(BATCH_SIZE, MAX_QUEUE)
    checkpoints = [str(checkpoints)] if isinstance(checkpoints, (str, Path)) else [str(c) for c in checkpoints]
    serve(*checkpoints)
    choices = menu(checkpoints)
    first = resolve(checkpoints[0]).resolve()
    selected = next((path for _, path in choices if resolve(path).resolve() == first), checkpoints[0])
    with gr.Blocks(title="LayerSkip: self-speculative decoding") as demo:
        gr.HTML(f"<style>{CSS}</style>", elem_id="ls-css")  # launch(css=...) would need every caller to pass it
        gr.HTML('<div class="ls-head"><b>LayerSkip: self-speculative decoding, live.</b> The first <b>E</b> '
                "layers draft, the rest check the drafts in one pass: greedy output equals the full "
                "model's.</div>", padding=False)
        ui = SimpleNamespace(control=gr.State({}),  # per session: Stop sets control["stop"], runs read it
                             loaded=gr.State(None))  # per session: the last model that loaded, for a failed switch
        with gr.Row(elem_id="main"):  # a grid (CSS): the prompt, the output, the settings, the tabs
            prompt_and_output(ui, choices, selected, example_prompts())
            settings_and_tabs(ui, initial_values(selected))
        wire(demo, ui)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)
    return demo


def error_box(elem_id):
    """Where an event's bad input is said: one line of plain text (the API's last output), hidden while empty."""
    import gradio as gr
    return gr.Textbox("", placeholder=" ", show_label=False, container=False, interactive=False, lines=1,
                      max_lines=4, elem_id=elem_id, elem_classes=["ls-errbox"])


def button(label, elem_id, **kw):
    import gradio as gr
    return gr.Button(label, elem_id=elem_id, interactive=elem_id not in RUN_BUTTONS, **kw)


def prompt_and_output(ui, choices, selected, examples):
    """The model menu, the prompt (the first example in it) and the buttons; the error place, the statistics and
    the output: into ui."""
    import gradio as gr
    with gr.Column(elem_id="col_prompt"):
        ui.checkpoint = gr.Dropdown(choices, value=selected, label="model", show_label=False, container=False,
                                    allow_custom_value=True, elem_id="model")
        if ALLOW_ANY:
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
        ui.stats = gr.HTML(render_stats(dict(tokens=0, rounds=0, drafted=0, accepted=0, seconds=0.0),
                                        "self_speculative", "press Generate"), elem_id="stats", padding=False)
        ui.out = gr.HTML(render_text("", [], "self_speculative"), elem_id="out", padding=False)
        ui.rejected = gr.Radio([(label, key) for key, label in REJECTED_VIEWS.items()], value="count",
                               label="rejected drafts, shown as", elem_id="rejected")
        with gr.Accordion("plain text", open=False):
            ui.text = gr.Textbox(label="generated continuation", lines=4, buttons=["copy"], elem_id="text")
    ui.examples = examples


def settings_and_tabs(ui, init):
    """The decoding settings (number boxes: Gradio's sliders clamp what is typed) with the stop rule and its
    boxes, starting at `init` (initial_values); the logits processors, the examples; the tabs of compare, logit
    lens and sweep: into ui."""
    import gradio as gr

    def box(value, label, elem_id, low, high, whole=False, scale=1, **kw):
        return gr.Number(value, label=label, minimum=low, maximum=high, step=1 if whole else 0.05,
                         precision=0 if whole else None, elem_id=elem_id, min_width=100, scale=scale, **kw)

    L, rule = init["n_layers"], init["stop_rule"]
    with gr.Column(elem_id="col_settings"):
        ui.strategy = gr.Radio(list(STRATEGIES), value="self_speculative", label="strategy", elem_id="strategy")
        ui.chat = gr.Checkbox(False, label="chat: the prompt as a user message, in the model's chat template",
                              elem_id="chat", container=False)
        with gr.Row():  # the exit, d, and the boxes of the stop rule chosen below
            ui.exit_layer = box(init["exit_layer"], f"exit layer E (1–{L})", "exit_layer", 1, L, whole=True)
            ui.num_spec = box(init["num_speculations"], "drafts per round d (at most)", "num_spec", 1,
                              MAX_SPECULATIONS, whole=True)
            ui.threshold = box(init["draft_threshold"], "draft threshold", "threshold", 0, 1,
                               visible=rule == "threshold")
            ui.draft_cost = box(init["draft_cost"], "draft cost (verifications)", "draft_cost", 0, 1,
                                visible=rule == "cost")
            ui.draft_gamma = box(init["draft_gamma"], "calibration γ", "draft_gamma", 0, MAX_DRAFT_GAMMA,
                                 visible=rule == "cost")
        ui.stop_rule = gr.Radio([(label, key) for key, label in STOP_RULES.items()], value=rule,
                                label="stop rule: when a round stops drafting", elem_id="stop_rule",
                                info="fixed d: always d drafts · confidence threshold: stop at a draft less sure "
                                     "than that · cost model: stop once one more draft is not worth its cost")
        with gr.Row():
            ui.max_new = box(init["max_new"], "max new tokens", "max_new", 1, MAX_NEW_TOKENS, whole=True)
            ui.temperature = box(0, "temperature (0 = greedy)", "temperature", 0, MAX_TEMPERATURE)
            ui.top_p = box(1, "top-p", "top_p", 0.05, 1)
            ui.seed = box(0, "seed", "seed", 0, MAX_SEED, whole=True)
        with gr.Accordion("logits processors: curb loops (drafts and verifier alike)", open=False,
                          elem_id="processors"):
            with gr.Row():
                ui.repetition = box(1.0, "repetition penalty (1 = off)", "repetition_penalty",
                                    MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)
                ui.ngram = box(0, "no-repeat n-gram size (0 = off)", "no_repeat_ngram_size", 0, MAX_NGRAM, whole=True)
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


def wire(demo, ui):
    """The events. The event functions check every value themselves (preprocess=False): Gradio's own checks
    would clamp a number or fail with a traceback in the server log, and never say which control is wrong."""
    model_events = dict(concurrency_id="model", preprocess=False)  # one queue for everything that runs the model
    no_model = dict(api_visibility="private", concurrency_limit=None, preprocess=False)
    rule = [ui.stop_rule, ui.threshold, ui.draft_cost, ui.draft_gamma]
    buttons = [getattr(ui, name) for name in RUN_BUTTONS]
    model_outputs = [ui.checkpoint, ui.loaded, ui.info, ui.exit_layer, ui.num_spec, *rule, ui.max_new, *buttons]
    ui.checkpoint.input(switch_model, [ui.checkpoint, ui.loaded, ui.max_new], model_outputs, api_name="model_info",
                        **model_events)
    if ALLOW_ANY:
        ui.load.click(switch_model, [ui.path, ui.loaded, ui.max_new], model_outputs, api_visibility="private",
                      **model_events)
    demo.load(switch_model, [ui.checkpoint, ui.loaded, ui.max_new], model_outputs, api_visibility="private",
              **model_events)
    ui.exit_layer.input(exit_changed, [ui.checkpoint, ui.exit_layer], [ui.num_spec, *rule], **no_model)
    ui.stop_rule.input(rule_changed, [ui.stop_rule], rule[1:], **no_model)
    processors = [ui.repetition, ui.ngram]
    drafting = [ui.exit_layer, ui.num_spec, *rule]
    gen_inputs = [ui.checkpoint, ui.prompt, ui.strategy, *drafting, ui.temperature, ui.top_p, ui.max_new, ui.seed,
                  ui.rejected, *processors, ui.chat, ui.control]
    gen_outputs = [ui.out, ui.stats, ui.text, ui.error]
    # Generation: one request at a time (--batch_size 1), or as many at once as may wait, joined into batches
    generating = model_events if BATCHER is None else dict(concurrency_id="generate", concurrency_limit=MAX_QUEUE,
                                                           preprocess=False)
    gen = ui.go.click(generate, gen_inputs, gen_outputs, api_name="generate", show_progress="hidden", **generating)
    lens_inputs = [ui.checkpoint, ui.prompt, ui.text, ui.exit_layer]
    lens_after = gen.then(lens, lens_inputs, [ui.lens_out, ui.lens_error], api_visibility="private",
                          show_progress="hidden", **model_events)
    ui.prompt.submit(generate, gen_inputs, gen_outputs, api_visibility="private", show_progress="hidden",
                     **generating)
    cmp = ui.compare.click(compare, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors],
                           [ui.compare_out, ui.compare_error], api_name="compare", **model_events)
    lns = ui.lens.click(lens, lens_inputs, [ui.lens_out, ui.lens_error], api_name="logit_lens", **model_events)
    ui.sweep.click(sweep, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors, ui.control],
                   [ui.acceptance_plot, ui.speedup_plot, ui.sweep_note, ui.sweep_error], api_name="sweep",
                   show_progress="hidden", **model_events)
    # Generation and the sweep stop themselves after the step on screen, and say so; the rest is cancelled.
    ui.stop.click(stop, [ui.control], None, api_visibility="private", concurrency_limit=None,
                  cancels=[lens_after, cmp, lns])
    # The view of rejected drafts (and their legend entry) is pure CSS: no need to decode again.
    ui.rejected.change(None, [ui.rejected], None, js="(v) => { document.querySelectorAll('#out .ls-out').forEach(e "
                       "=> { e.classList.remove('rej-count', 'rej-text', 'rej-hidden'); e.classList.add('rej-' + v); "
                       "}); }")


def main(argv=None):
    global DEVICE, ALLOW_ANY, BATCH_SIZE, MAX_QUEUE
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
    parser.add_argument("--batch_size", type=int_range(1, 256), default=BATCH_SIZE,
                        help=f"generation requests that arrive together decode as one batch of at most this many "
                             f"(default {BATCH_SIZE}; 1 = one at a time)")
    parser.add_argument("--max_queue", type=int_range(1, 10_000), default=MAX_QUEUE,
                        help=f"requests that may wait at once; more are refused with a busy message "
                             f"(default {MAX_QUEUE})")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint or [DEFAULT_CHECKPOINT]
    print(f"config: {vars(args)}")
    DEVICE, ALLOW_ANY, BATCH_SIZE, MAX_QUEUE = args.device, args.allow_any_checkpoint, args.batch_size, args.max_queue
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        import torch
        torch.set_num_threads(threads)
    for c in args.checkpoint:
        try:
            path = resolve(c)  # a short name whose package is missing says which pip command brings it
        except ValueError as e:
            parser.error(str(e))
        if not path.exists():
            print(f"note: {c} does not exist yet; the app starts anyway. Pick another model in it, or train one "
                  f"(python train.py --preset toy) and pass --checkpoint out/toy/model.pt", file=sys.stderr)
    build_demo(args.checkpoint).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
