"""
Watch self-speculative decoding happen: a Gradio app over layerskip.generate_stream.

    python demo_app.py                                   # http://127.0.0.1:7860, the shipped LayerSkip model
    python demo_app.py --checkpoint out/toy/model.pt     # serve this checkpoint too (repeat for several)
    python demo_app.py --host 0.0.0.0 --port 8080        # serve on the network (--share: a gradio.live link)

Every round of decoding is drawn as it happens: the drafts the early exit got right (green), the verifier's
own token, a correction or a bonus (blue), and, if asked, the drafts it rejected (struck through, red).
Beside it: live statistics, a side-by-side timing against plain autoregressive decoding, the logit lens of
the paper's Fig. 2a, and acceptance rate and speedup against the exit layer.

The app serves the shipped checkpoints (checkpoints/*.pt) and the ones given with --checkpoint, nothing else:
its page and API are public, and a path typed there must not probe the server's files or fill its memory
(--allow_any_checkpoint lifts this on a trusted machine). At most MAX_MODELS models stay loaded.

The event functions below are plain functions of plain values (strings, numbers) so that tests and scripts
can call them directly; build_demo() only wires them to widgets. The generation event is also an API
endpoint: gradio_client.Client(url).submit(checkpoint, prompt, ..., api_name="/generate").
"""

import argparse
import html
import re
import statistics
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import layerskip as ls
from model_io import token_texts

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # selected at start; the menu lists every checkpoints/*.pt
MAX_MODELS = 2  # models kept loaded, the least recently used dropped first
MAX_NEW_TOKENS = 512  # the slider's end (or the context window's, if shorter) and the cap for API callers
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused before tokenizing; the context window decides the rest
SWEEP_TOKENS = 32  # the exit-layer sweep decodes at most this many tokens per run
SWEEP_REPEATS = 5  # ... and times every exit this many times, each run paired with an autoregressive one
LENS_COLUMNS = 48  # the logit lens shows the last this-many positions
DEVICE = "cpu"  # set by --device
ALLOW_ANY = False  # set by --allow_any_checkpoint: load any path load_model reads, not only the served ones
REFUSED = ("this checkpoint is not served here: choose a model from the menu (whoever runs the demo can add "
           "others with --checkpoint, or allow any path with --allow_any_checkpoint)")

# Token kinds, the colours they are drawn in, and what the legend says about them.
KINDS = {
    "accepted": ("#b7ebb9", "accepted draft: the first E layers' guess, confirmed by the verifier"),
    "verifier": ("#b9d3fb", "verifier token: the full model's correction or bonus token"),
    "rejected": ("#f9c4c4", "rejected draft: struck through, not part of the text"),
    "early_exit": ("#fde2a3", "early-exit token: the first E layers alone, never verified"),
    "full": ("#b9d3fb", "full-model token: all layers, one per round"),
}
LEGEND = {"self_speculative": ["accepted", "verifier", "rejected"], "early_exit": ["early_exit"],
          "autoregressive": ["full"]}

# The output is HTML we build ourselves: highlighted spans inline (no gaps inside words, unlike
# gr.HighlightedText), whitespace and newlines kept, monospace so that code prompts keep their indentation.
CSS = """
.ls-out { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, 'DejaVu Sans Mono', monospace;
  font-size: 14px; line-height: 1.55; }
.ls-text { white-space: pre-wrap; word-break: break-word; padding: 12px 14px; border-radius: 8px;
  border: 1px solid var(--border-color-primary, #ddd); background: var(--background-fill-secondary, #fafafa);
  min-height: 8em; max-height: 34em; overflow-y: auto; color: var(--body-text-color, #222); }
.ls-text .prompt { color: var(--body-text-color-subdued, #777); }
.ls-tok { border-radius: 3px; color: #111; }
.ls-tok.rejected { text-decoration: line-through; text-decoration-thickness: 2px; color: #8a1c1c; }
.ls-out.hide-rejected .ls-tok.rejected, .ls-out.hide-rejected .key.rejected { display: none; }
.ls-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 2px 0 8px; font-size: 12.5px;
  font-family: var(--font, sans-serif); }
.ls-legend .sw { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 5px; color: #111;
  font-family: ui-monospace, monospace; }
.ls-legend .key.rejected .sw { text-decoration: line-through; color: #8a1c1c; }
.ls-stats { display: flex; flex-wrap: wrap; gap: 8px; }
.ls-stats .card { flex: 1 1 100px; padding: 8px 10px; border-radius: 8px;
  border: 1px solid var(--border-color-primary, #ddd); background: var(--background-fill-secondary, #fafafa); }
.ls-stats .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.ls-stats .k { font-size: 12px; color: var(--body-text-color-subdued, #666); }
.ls-status { margin: 6px 0 0; font-size: 13px; color: var(--body-text-color-subdued, #666); }
.ls-error { padding: 10px 12px; border-radius: 8px; background: #fdecec; color: #8a1c1c;
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
    """A checkpoint path as typed, or relative to the repository if it is not found from here."""
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
            loaded = ls.load_model(p, device=DEVICE)  # first: a file that fails to load evicts nothing
            while len(_models) >= MAX_MODELS:  # then make room: at most MAX_MODELS kept
                _models.popitem(last=False)
            _models[key] = loaded
        return _models[key]


def speculation(model, exit_layer=None, num_speculations=None, draft_threshold=None) -> dict:
    """Exit layer, drafts per round d and draft threshold: the given ones, the rest by ls.speculation_settings
    from the model's recommendation (its d and threshold only at its exit); without one, exit L//4 and d=4."""
    rec = (getattr(model, "metadata", None) or {}).get("recommended") or {}
    return ls.speculation_settings(rec, None if exit_layer is None else int(exit_layer), num_speculations,
                                   draft_threshold, n_layers=model.params.n_layers)


def error_html(message: str) -> str:
    return f'<div class="ls-error">{html.escape(str(message))}</div>'


def describe(checkpoint, model, tok) -> str:
    """A one-paragraph description of the checkpoint (HTML)."""
    p = model.params
    n_params = sum(t.numel() for t in model.parameters())
    text = (f"<b>{html.escape(resolve(checkpoint).name)}</b>: {p.n_layers} layers, dim {p.dim}, "
            f"{n_params / 1e6:.1f} M parameters, vocabulary {tok.vocab_size}, context {p.max_seq_len} tokens")
    meta = getattr(model, "metadata", None) or {}
    if meta.get("val_loss_per_exit"):  # what train.py measured: how good each exit is on its own
        text += "<br>validation loss by exit: " + " ".join(
            f"{i + 1}:{v:.2f}" for i, v in enumerate(meta["val_loss_per_exit"]))
    rec = meta.get("recommended") or {}
    if rec.get("exit_layer"):
        text += (f"<br>recommended (bench.py --auto): exit {rec['exit_layer']}, d={rec.get('num_speculations')}"
                 + (f", threshold {rec['draft_threshold']}" if rec.get("draft_threshold") else ""))
    return f'<div class="ls-status">{text}</div>'


def switch_model(checkpoint, loaded=None, max_new_tokens=64):
    """The model menu and Load: select `checkpoint` and reset the controls to its settings (speculation()).
    Returns gr.update()s for (menu, last good model, description, exit layer, drafts per round, draft threshold,
    max new tokens). If it cannot be loaded, the menu goes back to `loaded`, the last good model, with the error."""
    import gradio as gr
    keep = gr.update()
    try:
        model, tok = get_model(checkpoint)
    except (ValueError, OSError) as e:
        still = f" Still using {loaded}." if loaded else ""
        return (gr.update(value=loaded) if loaded else keep), loaded, error_html(f"{e}{still}"), keep, keep, keep, keep
    checkpoint = str(checkpoint).strip()
    s = speculation(model)
    top = min(MAX_NEW_TOKENS, model.params.max_seq_len - 1)  # the prompt takes at least one position
    return (gr.update(value=checkpoint), checkpoint, describe(checkpoint, model, tok),
            gr.update(maximum=model.params.n_layers, value=s["exit_layer"]),
            gr.update(value=s["num_speculations"]), gr.update(value=s["draft_threshold"] or 0),
            gr.update(maximum=top, value=min(int(max_new_tokens or 64), top)))


def exit_changed(checkpoint, exit_layer):
    """The exit-layer slider: d and threshold follow ls.speculation_settings' rule (the recommended ones only at
    the recommended exit). gr.update()s for (drafts per round, draft threshold)."""
    import gradio as gr
    loaded = _models.get(str(resolve(checkpoint).resolve())) if checkpoint and is_served(checkpoint) else None
    if loaded is None:  # only a model already in memory: this event runs outside the one-model-job queue
        return gr.update(), gr.update()
    s = speculation(loaded[0], exit_layer)
    return gr.update(value=s["num_speculations"]), gr.update(value=s["draft_threshold"] or 0)


# ---------------------------------------------------------------------------------------------------------
# Generation: one pass over layerskip.generate_stream, turned into coloured pieces of text.


def check_inputs(prompt, max_new_tokens):
    """The checks the library cannot make (it sees token ids, not text); ValueError names the problem."""
    if prompt is None or not str(prompt).strip():
        raise ValueError("the prompt is empty: type some text or pick an example")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the demo takes at most {MAX_PROMPT_CHARS:,}")
    if max_new_tokens is None or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise ValueError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")


def decode_pieces(model, tokenizer, prompt_ids, max_new_tokens, strategy="self_speculative", exit_layer=None,
                  num_speculations=None, temperature=0.0, top_p=None, seed=0, draft_threshold=None):
    """Run generate_stream and yield, after every round, (pieces, text, stats): pieces is the list of
    (text, kind, round) so far in reading order, kind one of KINDS; text is the decoded continuation, which
    "".join of the non-rejected pieces equals exactly once decoding ends (token_texts holds a half-decoded
    character back for the token that completes it)."""
    stream = ls.generate_stream(model, prompt_ids, max_new_tokens, strategy=strategy, exit_layer=exit_layer,
                                num_speculations=num_speculations, temperature=temperature, top_p=top_p,
                                eos_id=tokenizer.stop_ids, seed=seed, draft_threshold=draft_threshold)
    end = min(model.params.max_seq_len, len(prompt_ids) + max_new_tokens)  # where generate_stream stops
    context, pieces, start = list(prompt_ids), [], len(tokenizer.decode(prompt_ids))
    stats = dict(tokens=0, rounds=0, drafted=0, accepted=0, corrections=0, bonus=0, seconds=0.0, eos=False)
    while True:
        t0 = time.perf_counter()  # time the model only, not our HTML
        event = next(stream, None)
        stats["seconds"] += time.perf_counter() - t0
        if event is None:
            return
        r = stats["rounds"] = stats["rounds"] + 1
        a, drafted = event.accepted, event.drafted
        if strategy == "self_speculative":
            pieces += [(t, "accepted", r) for t in token_texts(tokenizer, drafted[:a], context)]
            # rejected drafts go where they would have been, just before the verifier's correction
            pieces += [(t, "rejected", r) for t in token_texts(tokenizer, drafted[a:], context + drafted[:a])]
            if event.token is not None:
                pieces += [(t, "verifier", r) for t in token_texts(tokenizer, [event.token], context + drafted[:a])]
                stats["bonus" if a == len(drafted) else "corrections"] += 1
        else:
            kind = "full" if strategy == "autoregressive" else "early_exit"
            pieces += [(t, kind, r) for t in token_texts(tokenizer, event.tokens, context)]
        context += event.tokens
        stats["tokens"] += len(event.tokens)
        stats["drafted"] += len(drafted)
        stats["accepted"] += a
        stats["eos"] = bool(tokenizer.stop_ids & set(event.tokens))
        full = tokenizer.decode(context)
        held = full[max(len(full.rstrip("\ufffd")), start):]  # an unfinished character: the last round shows it
        if held and (stats["eos"] or len(context) >= end):
            i = max(i for i, (_, kind, _) in enumerate(pieces) if kind != "rejected")
            pieces[i] = (pieces[i][0] + held, *pieces[i][1:])
        yield list(pieces), full[start:], dict(stats)


def render_text(prompt_text, pieces, strategy, show_rejected=True) -> str:
    """The prompt (grey) followed by the coloured pieces, with a legend for the strategy's kinds."""
    legend = "".join(f'<span class="key {k}"><span class="sw" style="background:{KINDS[k][0]}">'
                     f'{k.replace("_", " ")}</span>{html.escape(KINDS[k][1].split(": ", 1)[1])}</span>'
                     for k in LEGEND.get(strategy, []))
    spans = []
    for text, kind, r in pieces:
        title = f"round {r}: {kind.replace('_', ' ')}"
        spans.append(f'<span class="ls-tok {kind}" style="background:{KINDS[kind][0]}" '
                     f'title="{html.escape(title)}">{html.escape(text)}</span>')
    cls = "ls-out" + ("" if show_rejected else " hide-rejected")
    return (f'<div class="{cls}"><div class="ls-legend">{legend}</div><div class="ls-text">'
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


def generate(checkpoint, prompt, strategy="self_speculative", exit_layer=None, num_speculations=None,
             temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0, show_rejected=True, draft_threshold=None,
             control=None):
    """The Generate button: yields (text HTML, stats HTML, plain continuation) after every round. Exit layer,
    d and threshold left None come from speculation(); 0 turns the threshold off. control is the session's
    dict that Stop sets control["stop"] in: decoding then ends after the round on screen and says so.
    Bad input never raises: it yields an error message in the stats panel instead."""
    control = {} if control is None else control
    control["stop"] = False
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        prompt_ids = tok.encode(prompt)
        spec = speculation(model, None if exit_layer is None else int(exit_layer),
                           None if num_speculations is None else int(num_speculations), draft_threshold)
        if not 0 <= float(spec["draft_threshold"] or 0) <= 1:
            raise ValueError(f"the draft threshold is a probability in [0, 1] (0 = off), got {draft_threshold}")
        max_new_tokens = int(max_new_tokens)
        ls.check_generation_args(model, prompt_ids, max_new_tokens, strategy, spec["exit_layer"],
                                 spec["num_speculations"], float(temperature), None, float(top_p))  # before any frame
        prompt_text = tok.decode(prompt_ids)  # what the model sees; the pieces continue exactly this text
        pieces, text, stats = [], "", dict(tokens=0, rounds=0, drafted=0, accepted=0, corrections=0, bonus=0,
                                           seconds=0.0, eos=False)
        yield render_text(prompt_text, [], strategy, show_rejected), render_stats(stats, strategy, "generating…"), ""
        for pieces, text, stats in decode_pieces(model, tok, prompt_ids, max_new_tokens, strategy,
                                                 spec["exit_layer"], spec["num_speculations"], float(temperature),
                                                 float(top_p), int(seed), spec["draft_threshold"] or None):
            yield (render_text(prompt_text, pieces, strategy, show_rejected),
                   render_stats(stats, strategy, f"generating… round {stats['rounds']}"), text)
            if control["stop"]:  # checked before decoding the next round: the frame on screen is the last
                break
        if control["stop"]:
            reason = f"stopped: Stop pressed after {stats['tokens']} new tokens ({stats['rounds']} rounds)"
        else:
            reason = "done: " + ("stopped at the end-of-text token" if stats["eos"] else
                                 "stopped at the context window"
                                 if len(prompt_ids) + stats["tokens"] >= model.params.max_seq_len
                                 else f"stopped after {max_new_tokens} new tokens")
        extra = (f"; {stats['corrections']} corrections, {stats['bonus']} bonus tokens"
                 if strategy == "self_speculative" else "")
        yield (render_text(prompt_text, pieces, strategy, show_rejected),
               render_stats(stats, strategy, f"{reason}{extra}"), text)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; so are generate_stream's checks
        yield "", error_html(e), ""


def stop(control):
    """The Stop button: ask the session's running generation or sweep to stop after its current step."""
    control["stop"] = True


# ---------------------------------------------------------------------------------------------------------
# Compare, logit lens, exit-layer sweep.


def compare(checkpoint, prompt, exit_layer=None, num_speculations=None, max_new_tokens=64, draft_threshold=None):
    """Greedy autoregressive vs greedy self-speculative on the same prompt: an HTML table with time per
    token, the speedup (AR time per token / self-speculative time per token), and whether outputs match."""
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        ids = tok.encode(prompt)
        spec = speculation(model, exit_layer, None if num_speculations is None else int(num_speculations),
                           draft_threshold)
        spec["draft_threshold"] = spec["draft_threshold"] or None  # 0 = off
        kw = dict(eos_id=tok.stop_ids, seed=0)
        ls.generate(model, ids, 2, **kw)  # warm-up: first calls pay for allocations, not decoding
        ar = ls.generate(model, ids, int(max_new_tokens), strategy="autoregressive", **kw)
        ss = ls.generate(model, ids, int(max_new_tokens), strategy="self_speculative", **spec, **kw)
    except (ValueError, OSError) as e:
        return error_html(e)
    speedup = ar.time_per_token / ss.time_per_token
    if ar.tokens == ss.tokens:
        match = f"✓ identical ({len(ar.tokens)} tokens)"
    else:
        i = next((i for i, (a, b) in enumerate(zip(ar.tokens, ss.tokens)) if a != b), min(len(ar.tokens),
                                                                                            len(ss.tokens)))
        match = f"✗ they differ from token {i} on"
    rows = [("autoregressive", ar, "–", "1.00"),
            (f"self-speculative (E={spec['exit_layer']}, d={spec['num_speculations']}"
             + (f", threshold {spec['draft_threshold']:g})" if spec["draft_threshold"] else ")"), ss,
             f"{ss.acceptance_rate:.0%}", f"{ss.tokens_per_round:.2f}")]
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{len(g.tokens)}</td><td>{1000 * g.time_per_token:.2f}</td>"
                   f"<td>{g.tokens_per_s:.1f}</td><td>{acc}</td><td>{tpr}</td></tr>" for name, g, acc, tpr in rows)
    return (f'<table class="ls-table"><tr><th>greedy decoding</th><th>tokens</th><th>ms/token</th>'
            f"<th>tokens/s</th><th>acceptance</th><th>tokens/round</th></tr>{body}</table>"
            f'<div class="ls-stats" style="margin-top:10px"><div class="card"><div class="v">{speedup:.2f}×</div>'
            f'<div class="k">speedup (AR ms/token ÷ self-speculative ms/token)</div></div>'
            f'<div class="card"><div class="v">{match}</div><div class="k">greedy outputs</div></div></div>')


def visible(text: str) -> str:
    """Whitespace made visible for a lens cell."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥") or "∅"


def lens(checkpoint, prompt, text="", exit_layer=2):
    """The logit lens (paper Fig. 2a) over prompt + text: every exit's top-1 next token at the last
    LENS_COLUMNS positions, green where it already equals the last layer's, the chosen exit outlined."""
    try:
        if prompt is None or not str(prompt).strip():
            raise ValueError("the prompt is empty: generate something first")
        model, tok = get_model(checkpoint)
        prompt_ids = tok.encode(prompt)
        ids = tok.encode(tok.decode(prompt_ids) + (text or ""))
        ids = ids[:model.params.max_seq_len]
        result = ls.logit_lens(model, ids)
    except (ValueError, OSError) as e:
        return error_html(e)
    L, T = result.top1.shape
    E = int(exit_layer) if exit_layer else 0
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
    for l in range(L):
        cells = []
        for t in cols:
            tok_id, p = int(result.top1[l, t]), float(result.prob[l, t])
            agree = tok_id == int(result.top1[-1, t])
            bg = f"rgba(47, 158, 68, {0.15 + 0.75 * p:.2f})" if agree else f"rgba(134, 142, 150, {0.08 + 0.4 * p:.2f})"
            s = visible(piece(tok_id, ids[t]))
            cells.append(f'<td style="background:{bg}" title="exit {l + 1}: {html.escape(repr(s))} p={p:.2f}">'
                         f"{html.escape(s[:8])}</td>")
        label = f"exit {l + 1}" + (" ◀ E" if l + 1 == E else "") + (" (last)" if l == L - 1 else "")
        row_class = "exit" if l + 1 == E else ""
        rows.append(f'<tr class="{row_class}"><td class="row-label">{label}</td>{"".join(cells)}</tr>')
    needed = "".join(f"<td>{int(result.layers_needed[t])}</td>" for t in cols)
    agree_e = (result.top1[E - 1] == result.top1[-1]).float().mean().item() if 1 <= E <= L else float("nan")
    summary = (f'<div class="ls-stats"><div class="card"><div class="v">{result.mean_layers_needed:.2f} / {L}</div>'
               f'<div class="k">average layers needed (every position)</div></div>'
               f'<div class="card"><div class="v">{agree_e:.0%}</div><div class="k">positions where exit {E} '
               f'already predicts the last layer\'s token</div></div></div>')
    return (f'{summary}<div class="ls-lens"><table><tr><th class="row-label">input →</th>{head}</tr>'
            f'{"".join(rows)}<tr class="needed"><td class="row-label">layers needed</td>{needed}</tr></table></div>'
            f'<div class="ls-status">Rows: exits 1..{L}, each cell the top-1 prediction for the next token after '
            f"the input token above it (· space, ↵ newline). Green: already the last layer's prediction (darker = "
            f"more probable). Bold headers are generated tokens.</div>")


def sweep_exits(L: int) -> list[int]:
    """The exits the sweep times: every one; in a model of more than 16 layers the first half (a deeper draft costs
    too much to pay off) and exit L, the sanity check."""
    return list(range(1, L + 1)) if L <= 16 else list(range(1, L // 2 + 1)) + [L]


def sweep(checkpoint, prompt, num_speculations=4, max_new_tokens=SWEEP_TOKENS, draft_threshold=None,
          control=None):
    """The exit-layer sweep, a generator: greedy self-speculative decoding with the controls' d and draft threshold
    (0 or None = off) at each exit of sweep_exits, every run timed next to an autoregressive run of its own, so
    that a busy machine slows both alike, and all exits in turn SWEEP_REPEATS times. An exit's speedup is the
    median of its pairs' ratios (AR time per token / self-speculative time per token). Yields (DataFrame with columns exit_layer (int), value, metric; summary
    HTML) after every pair, so that the plot fills in and then settles; Stop (control["stop"]) ends it early."""
    import pandas as pd
    control = {} if control is None else control
    control["stop"] = False
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        ids = tok.encode(prompt)
        L, n, d = model.params.n_layers, min(int(max_new_tokens), SWEEP_TOKENS), int(num_speculations)
        ls.check_generation_args(model, ids, n, "self_speculative", L, d, 0.0, None, None)
        threshold = float(draft_threshold or 0) or None
        if not 0 < (threshold or 1) <= 1:
            raise ValueError(f"the draft threshold is a probability in [0, 1] (0 = off), got {draft_threshold}")
    except (ValueError, OSError) as e:
        yield pd.DataFrame(columns=["exit_layer", "value", "metric"]), error_html(e)
        return

    def timed(**settings):
        return ls.generate(model, ids, n, eos_id=tok.stop_ids, seed=0, **settings)

    timed(strategy="autoregressive")  # warm-up: first calls pay for allocations, not decoding
    exits = sweep_exits(L)
    setting = f"d={d}" + (f", draft threshold {threshold:g}" if threshold else "")
    ratios, acceptance = {E: [] for E in exits}, {}
    for r in range(SWEEP_REPEATS):
        for i, E in enumerate(exits, 1):
            ar = timed(strategy="autoregressive") if r % 2 == 0 else None  # alternate which of the pair goes first
            ss = timed(strategy="self_speculative", exit_layer=E, num_speculations=d, draft_threshold=threshold)
            ar = ar or timed(strategy="autoregressive")
            ratios[E].append(ar.time_per_token / ss.time_per_token)
            acceptance[E] = ss.acceptance_rate  # greedy: the same every time
            if control["stop"]:
                yield sweep_results(ratios, acceptance, n, setting, f"stopped: Stop pressed in pass {r + 1} of "
                                    f"{SWEEP_REPEATS}; the medians of what it measured")
                return
            done, total = r * len(exits) + i, SWEEP_REPEATS * len(exits)
            yield sweep_results(ratios, acceptance, n, setting, f"timing… pass {r + 1} of {SWEEP_REPEATS}, exit {E} "
                                f"of {L}", progress=(done, total))
    yield sweep_results(ratios, acceptance, n, setting, "done")


def sweep_results(ratios, acceptance, n, setting, status, progress=None):
    """The sweep's plot data and summary HTML from each exit's speedup ratios so far (exit -> list) and its
    acceptance rate; progress: (pairs done, pairs in all) while it runs."""
    import pandas as pd
    measured = sorted(E for E in ratios if ratios[E])
    speedup = {E: statistics.median(ratios[E]) for E in measured}
    df = pd.DataFrame([dict(exit_layer=E, value=acceptance[E], metric="acceptance rate") for E in measured]
                      + [dict(exit_layer=E, value=speedup[E], metric="speedup") for E in measured])

    def spread(E):
        return f"{min(ratios[E]):.2f}–{max(ratios[E]):.2f}×"

    bar = f'<progress value="{progress[0]}" max="{progress[1]}"></progress> ' if progress else ""
    note = (f"{bar}{html.escape(status)}<br>{n} greedy tokens per run, {setting}; every exit is timed {SWEEP_REPEATS} "
            f"times, each run right after (or before) an autoregressive one, and its speedup is the median of "
            f"those ratios (autoregressive ms/token ÷ self-speculative ms/token).")
    L = max(ratios)
    if speedup and progress is None:
        best = max(speedup, key=speedup.get)
        note += (f"<br><b>Fastest: exit {best}, {speedup[best]:.2f}×</b> (its runs: {spread(best)})."
                 if speedup[best] > 1 else f"<br><b>No exit beat autoregressive decoding</b> (best: exit {best}, "
                                           f"{speedup[best]:.2f}×).")
        if L in speedup:  # the noise check: the full model drafting for itself can be no faster
            note += (f"<br>Sanity check: exit {L} = L drafts with the whole model, so it can be no faster than "
                     f"autoregressive decoding; it measured {speedup[L]:.2f}× (runs {spread(L)})."
                     + ("" if 0.8 <= speedup[L] <= 1.1 else " That is far from 1×: this machine is too busy for "
                        "these timings, and differences of that size mean nothing."))
        note += " Too early an exit drafts badly; too late a one costs nearly a full pass per draft."
    rows = "".join(f"<tr><td>{E}</td><td>{acceptance[E]:.0%}</td><td>{speedup[E]:.2f}×</td><td>{spread(E)}</td>"
                   f"<td>{len(ratios[E])}</td></tr>" for E in measured)
    table = (f'<table class="ls-table ls-sweep"><tr><th>exit</th><th>acceptance</th><th>speedup (median)</th>'
             f"<th>slowest–fastest run</th><th>runs</th></tr>{rows}</table>") if measured else ""
    return df, f'<div class="ls-status">{note}</div>{table}'


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


def build_demo(checkpoints=(DEFAULT_CHECKPOINT,)):
    """The Blocks app, serving checkpoints/*.pt and `checkpoints` (a path or several, the first selected at
    start; see serve()); loads no weights until the first event."""
    import gradio as gr

    checkpoints = [str(checkpoints)] if isinstance(checkpoints, (str, Path)) else [str(c) for c in checkpoints]
    serve(*checkpoints)
    choices = menu(checkpoints)
    first = resolve(checkpoints[0]).resolve()
    selected = next((path for _, path in choices if resolve(path).resolve() == first), checkpoints[0])
    with gr.Blocks(title="LayerSkip: self-speculative decoding") as demo:
        gr.HTML(f"<style>{CSS}</style>", padding=False)  # launch(css=...) would need every caller to pass it
        gr.Markdown("## LayerSkip: self-speculative decoding, live\n"
                    "The first **E** layers draft a few tokens, the remaining layers check them all in one pass "
                    "and add a token of their own. Greedy output equals the full model's, token for token.")
        control = gr.State({})  # per session: Stop sets control["stop"], the running generation or sweep reads it
        loaded = gr.State(None)  # per session: the last model that loaded, where a failed switch goes back to
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                checkpoint = gr.Dropdown(choices, value=selected, label="model", allow_custom_value=True,
                                         elem_id="model")
                if ALLOW_ANY:
                    with gr.Row():
                        path = gr.Textbox(label="or a checkpoint path", placeholder="out/toy/model.pt", scale=3)
                        load = gr.Button("Load", scale=1, min_width=60)
                info = gr.HTML(elem_id="info")
                prompt = gr.Textbox(label="prompt", lines=6, max_lines=20, elem_id="prompt",
                                    placeholder="def fibonacci(n):")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="go")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                strategy = gr.Radio(list(ls.STRATEGIES), value="self_speculative", label="strategy")
                with gr.Row():
                    exit_layer = gr.Slider(1, 32, value=2, step=1, label="exit layer E", elem_id="exit_layer")
                    num_spec = gr.Slider(1, 16, value=4, step=1, label="drafts per round d", elem_id="num_spec")
                with gr.Row():
                    threshold = gr.Slider(0, 1, value=0, step=0.05, label="draft threshold (0 = off)",
                                          elem_id="threshold")
                    max_new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="max new tokens", elem_id="max_new")
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", min_width=80)
                    show_rejected = gr.Checkbox(True, label="show rejected drafts (struck through)",
                                                elem_id="show_rejected")
                gr.Examples(example_prompts(), inputs=[prompt], label="examples: HumanEval and Shakespeare")
            with gr.Column(scale=3, min_width=420):
                stats = gr.HTML(render_stats(dict(tokens=0, rounds=0, drafted=0, accepted=0, seconds=0.0),
                                             "self_speculative", "press Generate"), elem_id="stats")
                out = gr.HTML(render_text("", [], "self_speculative"), elem_id="out")
                with gr.Accordion("plain text", open=False):
                    text = gr.Textbox(label="generated continuation", lines=4, buttons=["copy"], elem_id="text")
                with gr.Tab("Compare with autoregressive"):
                    compare_btn = gr.Button("Run both (greedy)", elem_id="compare")
                    compare_out = gr.HTML(elem_id="compare_out")
                with gr.Tab("Logit lens"):
                    lens_btn = gr.Button("Show the logit lens of the text", elem_id="lens")
                    lens_out = gr.HTML(elem_id="lens_out")
                with gr.Tab("Exit-layer sweep"):
                    sweep_btn = gr.Button(f"Sweep exit layers ({SWEEP_REPEATS} × {SWEEP_TOKENS} tokens each)",
                                          elem_id="sweep")
                    sweep_plot = gr.LinePlot(x="exit_layer", y="value", color="metric", label="exit-layer sweep",
                                             x_title="exit layer E", y_title="acceptance rate / speedup ×",
                                             x_axis_format="d", sort="x", elem_id="sweep_plot")
                    sweep_note = gr.HTML(elem_id="sweep_note")

        model_events = dict(concurrency_id="model")  # one queue for everything that runs the model
        model_outputs = [checkpoint, loaded, info, exit_layer, num_spec, threshold, max_new]
        checkpoint.input(switch_model, [checkpoint, loaded, max_new], model_outputs, api_name="model_info",
                         **model_events)
        if ALLOW_ANY:
            load.click(switch_model, [path, loaded, max_new], model_outputs, api_visibility="private", **model_events)
        demo.load(switch_model, [checkpoint, loaded, max_new], model_outputs, api_visibility="private",
                  **model_events)
        exit_layer.input(exit_changed, [checkpoint, exit_layer], [num_spec, threshold], api_visibility="private",
                         concurrency_limit=None)  # no model run: it need not wait for one
        gen_inputs = [checkpoint, prompt, strategy, exit_layer, num_spec, temperature, top_p, max_new, seed,
                      show_rejected, threshold, control]
        gen = go.click(generate, gen_inputs, [out, stats, text], api_name="generate", show_progress="hidden",
                       **model_events)
        lens_after = gen.then(lens, [checkpoint, prompt, text, exit_layer], [lens_out], api_visibility="private",
                              show_progress="hidden", **model_events)
        prompt.submit(generate, gen_inputs, [out, stats, text], api_visibility="private", show_progress="hidden",
                      **model_events)
        cmp = compare_btn.click(compare, [checkpoint, prompt, exit_layer, num_spec, max_new, threshold],
                                [compare_out], api_name="compare", **model_events)
        lns = lens_btn.click(lens, [checkpoint, prompt, text, exit_layer], [lens_out], api_name="logit_lens",
                             **model_events)
        sweep_btn.click(sweep, [checkpoint, prompt, num_spec, max_new, threshold, control], [sweep_plot, sweep_note],
                        api_name="sweep", show_progress="hidden", **model_events)
        # Generation and the sweep stop themselves after the step on screen, and say so; the rest is cancelled.
        stop_btn.click(stop, [control], None, api_visibility="private", concurrency_limit=None,
                       cancels=[lens_after, cmp, lns])
        # Hiding rejected drafts (and their legend entry) is pure CSS: no need to decode again.
        show_rejected.change(None, [show_rejected], None, js="(v) => { document.querySelectorAll('#out .ls-out')"
                             ".forEach(e => e.classList.toggle('hide-rejected', !v)); }")
    demo.queue(max_size=16, default_concurrency_limit=1)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the LayerSkip demo: self-speculative decoding, live.")
    parser.add_argument("--checkpoint", action="append",
                        help=f"a checkpoint to serve besides checkpoints/*.pt, any path load_model reads; repeat for "
                             f"several, the first is selected at start (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--allow_any_checkpoint", action="store_true",
                        help="let the page and its API load any path on this machine: only where every caller is "
                             "trusted (they can tell which files exist)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the network")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default="cpu", help="torch device for the models, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default on CPU: 1; with another process busy, 2 made decoding "
                             "15-50x slower)")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint or [DEFAULT_CHECKPOINT]
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    print(f"config: {vars(args)}")
    global DEVICE, ALLOW_ANY
    DEVICE, ALLOW_ANY = args.device, args.allow_any_checkpoint
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        import torch
        torch.set_num_threads(threads)
    for c in args.checkpoint:
        if not resolve(c).exists():
            print(f"note: {c} does not exist yet; the app starts anyway. Pick another model in it, or train one "
                  f"(python train.py --preset toy) and pass --checkpoint out/toy/model.pt", file=sys.stderr)
    build_demo(args.checkpoint).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
