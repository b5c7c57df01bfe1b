"""
Watch self-speculative decoding happen: a Gradio app over layerskip.generate_stream.

    python demo_app.py                                   # http://127.0.0.1:7860, the shipped LayerSkip model
    python demo_app.py --checkpoint out/toy/model.pt     # any checkpoint load_model reads
    python demo_app.py --host 0.0.0.0 --port 8080        # serve on the network (--share: a gradio.live link)

Every round of decoding is drawn as it happens: the drafts the early exit got right (green), the verifier's
own token, a correction or a bonus (blue), and, if asked, the drafts it rejected (struck through, red).
Beside it: live statistics, a side-by-side timing against plain autoregressive decoding, the logit lens of
the paper's Fig. 2a, and acceptance rate and speedup against the exit layer.

The event functions below are plain functions of plain values (strings, numbers) so that tests and scripts
can call them directly; build_demo() only wires them to widgets. The generation event is also an API
endpoint: gradio_client.Client(url).submit(checkpoint, prompt, ..., api_name="/generate").
"""

import argparse
import html
import sys
import threading
import time
from pathlib import Path

import layerskip as ls
from model_io import token_texts

ROOT = Path(__file__).resolve().parent
SHIPPED = {  # label -> path; the dropdown offers these, any other load_model path can be typed in
    "LayerSkip, Python (shipped)": "checkpoints/layerskip-python.pt",
    "baseline twin, Python (shipped)": "checkpoints/baseline-python.pt",
}
DEFAULT_CHECKPOINT = SHIPPED["LayerSkip, Python (shipped)"]
MAX_NEW_TOKENS = 512  # the slider's end and the cap for API callers
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused before tokenizing; the context window decides the rest
SWEEP_TOKENS = 32  # the exit-layer sweep decodes at most this many tokens per exit layer
LENS_COLUMNS = 48  # the logit lens shows the last this-many positions
DEVICE = "cpu"  # set by --device

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
.ls-out.hide-rejected .ls-tok.rejected { display: none; }
.ls-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 2px 0 8px; font-size: 12.5px;
  font-family: var(--font, sans-serif); }
.ls-legend .sw { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 5px; color: #111;
  font-family: ui-monospace, monospace; }
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
# Models: loaded once, kept for the life of the server.

_models = {}  # resolved path -> (model, tokenizer)
_models_lock = threading.Lock()


def resolve(path: str) -> Path:
    """A checkpoint path as typed, or relative to the repository if it is not found from here."""
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        p = ROOT / p
    return p


def get_model(path: str):
    """(model, tokenizer) for a checkpoint path, loaded on first use; CheckpointError if it cannot be."""
    if not path or not str(path).strip():
        raise ValueError("no checkpoint chosen: pick a shipped model or type the path of a checkpoint")
    p = resolve(path)
    if not p.exists():
        hint = (" The shipped models are committed with the repository; train your own with "
                "`python train.py --preset toy` and load out/toy/model.pt." if str(path) in SHIPPED.values() else "")
        raise ValueError(f"{path}: no such file or directory.{hint}")
    key = str(p.resolve())
    with _models_lock:  # two sessions asking at once load it once
        if key not in _models:
            _models[key] = ls.load_model(p, device=DEVICE)
        return _models[key]


def error_html(message: str) -> str:
    return f'<div class="ls-error">{html.escape(str(message))}</div>'


def model_info(checkpoint: str) -> tuple[str, int]:
    """A one-paragraph description of the checkpoint (HTML), and its number of layers L (0 if unusable)."""
    try:
        model, tok = get_model(checkpoint)
    except (ValueError, OSError) as e:
        return error_html(e), 0
    p = model.params
    n_params = sum(t.numel() for t in model.parameters())
    text = (f"<b>{html.escape(resolve(checkpoint).name)}</b>: {p.n_layers} layers, dim {p.dim}, "
            f"{n_params / 1e6:.1f} M parameters, vocabulary {tok.vocab_size}, context {p.max_seq_len} tokens")
    losses = getattr(model, "metadata", {}).get("val_loss_per_exit")
    if losses:  # what train.py measured: how good each exit is on its own
        text += "<br>validation loss by exit: " + " ".join(f"{i + 1}:{v:.2f}" for i, v in enumerate(losses))
    return f'<div class="ls-status">{text}</div>', p.n_layers


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
                  num_speculations=None, temperature=0.0, top_p=None, seed=0):
    """Run generate_stream and yield, after every round, (pieces, text, stats): pieces is the list of
    (text, kind, round) so far in reading order, kind one of KINDS; text is the decoded continuation, which
    "".join of the non-rejected pieces equals exactly once decoding ends (token_texts holds a half-decoded
    character back for the token that completes it)."""
    stream = ls.generate_stream(model, prompt_ids, max_new_tokens, strategy=strategy, exit_layer=exit_layer,
                                num_speculations=num_speculations, temperature=temperature, top_p=top_p,
                                eos_id=tokenizer.stop_ids, seed=seed)
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
    legend = "".join(f'<span><span class="sw" style="background:{KINDS[k][0]}"'
                     f'{" class=rejected" if k == "rejected" else ""}>{k.replace("_", " ")}</span>'
                     f'{html.escape(KINDS[k][1].split(": ", 1)[1])}</span>' for k in LEGEND.get(strategy, []))
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


def generate(checkpoint, prompt, strategy="self_speculative", exit_layer=2, num_speculations=4,
             temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0, show_rejected=True):
    """The Generate button: yields (text HTML, stats HTML, plain continuation) after every round.
    Bad input never raises: it yields an error message in the stats panel instead."""
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        prompt_ids = tok.encode(prompt)
        exit_layer = None if exit_layer is None else int(exit_layer)
        num_speculations = None if num_speculations is None else int(num_speculations)
        max_new_tokens = int(max_new_tokens)
        ls.check_generation_args(model, prompt_ids, max_new_tokens, strategy, exit_layer, num_speculations,
                                 float(temperature), None, float(top_p))  # before the first frame, not after
        prompt_text = tok.decode(prompt_ids)  # what the model sees; the pieces continue exactly this text
        yield render_text(prompt_text, [], strategy, show_rejected), render_stats(
            dict(tokens=0, rounds=0, drafted=0, accepted=0, seconds=0.0), strategy, "generating…"), ""
        pieces, stats, text = [], None, ""
        for pieces, text, stats in decode_pieces(model, tok, prompt_ids, max_new_tokens, strategy, exit_layer,
                                                 num_speculations, float(temperature), float(top_p), int(seed)):
            yield (render_text(prompt_text, pieces, strategy, show_rejected),
                   render_stats(stats, strategy, f"generating… round {stats['rounds']}"), text)
        reason = ("stopped at the end-of-text token" if stats["eos"] else
                  "stopped at the context window" if len(prompt_ids) + stats["tokens"] >= model.params.max_seq_len
                  else f"stopped after {max_new_tokens} new tokens")
        extra = (f"; {stats['corrections']} corrections, {stats['bonus']} bonus tokens"
                 if strategy == "self_speculative" else "")
        yield (render_text(prompt_text, pieces, strategy, show_rejected),
               render_stats(stats, strategy, f"done: {reason}{extra}"), text)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; so are generate_stream's checks
        yield "", error_html(e), ""


# ---------------------------------------------------------------------------------------------------------
# Compare, logit lens, exit-layer sweep.


def compare(checkpoint, prompt, exit_layer=2, num_speculations=4, max_new_tokens=64):
    """Greedy autoregressive vs greedy self-speculative on the same prompt: an HTML table with time per
    token, the speedup (AR time per token / self-speculative time per token), and whether outputs match."""
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        ids = tok.encode(prompt)
        kw = dict(eos_id=tok.stop_ids, seed=0)
        ls.generate(model, ids, 2, **kw)  # warm-up: first calls pay for allocations, not decoding
        ar = ls.generate(model, ids, int(max_new_tokens), strategy="autoregressive", **kw)
        ss = ls.generate(model, ids, int(max_new_tokens), strategy="self_speculative", exit_layer=int(exit_layer),
                         num_speculations=int(num_speculations), **kw)
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
            (f"self-speculative (E={int(exit_layer)}, d={int(num_speculations)})", ss,
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


def sweep(checkpoint, prompt, num_speculations=4, max_new_tokens=SWEEP_TOKENS):
    """Greedy self-speculative decoding at every exit layer 1..L: (long DataFrame with columns exit_layer,
    value, metric for the acceptance rate and the speedup over autoregressive, summary HTML). exit_layer is
    a string so that the plot labels whole layers only; rows stay in layer order (LinePlot's sort=None)."""
    import pandas as pd
    try:
        check_inputs(prompt, max_new_tokens)
        model, tok = get_model(checkpoint)
        ids = tok.encode(prompt)
        n = min(int(max_new_tokens), SWEEP_TOKENS)
        kw = dict(eos_id=tok.stop_ids, seed=0)
        ls.generate(model, ids, 2, **kw)  # warm-up
        ar = ls.generate(model, ids, n, strategy="autoregressive", **kw)
        rows = []
        for E in range(1, model.params.n_layers + 1):
            g = ls.generate(model, ids, n, strategy="self_speculative", exit_layer=E,
                            num_speculations=int(num_speculations), **kw)
            rows.append(dict(exit_layer=str(E), value=g.acceptance_rate, metric="acceptance rate"))
            rows.append(dict(exit_layer=str(E), value=ar.time_per_token / g.time_per_token, metric="speedup"))
    except (ValueError, OSError) as e:
        return pd.DataFrame(columns=["exit_layer", "value", "metric"]), error_html(e)
    df = pd.DataFrame(rows)
    best = df[df.metric == "speedup"].sort_values("value").iloc[-1]
    return df, (f'<div class="ls-status">{n} greedy tokens per exit layer, {int(num_speculations)} drafts per round. '
                f"Fastest: exit layer {int(best.exit_layer)}, {best.value:.2f}× the autoregressive speed. Too early "
                f"an exit drafts badly, too late a one costs nearly a full pass per draft.</div>")


# ---------------------------------------------------------------------------------------------------------
# The UI


def example_prompts() -> list[str]:
    """A few short HumanEval problems and Shakespeare passages."""
    from data.prepare import load_prompts
    code = sorted(load_prompts("humaneval"), key=len)[:3]
    verse = ["\n".join(p.splitlines()[:3]) + "\n" for p in load_prompts("shakespeare")[:3]]
    return code + verse


def build_demo(default_checkpoint: str = DEFAULT_CHECKPOINT):
    """The Blocks app; loads no weights until the first event."""
    import gradio as gr

    choices = [(label, path) for label, path in SHIPPED.items()]
    if default_checkpoint not in SHIPPED.values():
        choices.append((str(default_checkpoint), str(default_checkpoint)))
    with gr.Blocks(title="LayerSkip: self-speculative decoding") as demo:
        gr.HTML(f"<style>{CSS}</style>", padding=False)  # launch(css=...) would need every caller to pass it
        gr.Markdown("## LayerSkip: self-speculative decoding, live\n"
                    "The first **E** layers draft a few tokens, the remaining layers check them all in one pass "
                    "and add a token of their own. Greedy output equals the full model's, token for token.")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                with gr.Row():
                    checkpoint = gr.Dropdown(choices, value=str(default_checkpoint), label="model",
                                             allow_custom_value=True, scale=3)
                with gr.Row():
                    path = gr.Textbox(label="or a checkpoint path", placeholder="out/toy/model.pt", scale=3)
                    load = gr.Button("Load", scale=1, min_width=60)
                info = gr.HTML()
                prompt = gr.Textbox(label="prompt", lines=6, max_lines=20, elem_id="prompt",
                                    placeholder="def fibonacci(n):")
                gr.Examples(example_prompts(), inputs=[prompt], label="examples: HumanEval and Shakespeare")
                strategy = gr.Radio(list(ls.STRATEGIES), value="self_speculative", label="strategy")
                with gr.Row():
                    exit_layer = gr.Slider(1, 32, value=2, step=1, label="exit layer E", elem_id="exit_layer")
                    num_spec = gr.Slider(1, 16, value=4, step=1, label="drafts per round")
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
                with gr.Row():
                    max_new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="max new tokens")
                    seed = gr.Number(0, precision=0, label="seed", min_width=80)
                show_rejected = gr.Checkbox(True, label="show rejected drafts (struck through)")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="go")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
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
                    sweep_btn = gr.Button(f"Sweep exit layers ({SWEEP_TOKENS} tokens each)", elem_id="sweep")
                    sweep_plot = gr.LinePlot(x="exit_layer", y="value", color="metric", label="exit-layer sweep",
                                             x_title="exit layer E", y_title="acceptance rate / speedup ×",
                                             elem_id="sweep_plot")
                    sweep_note = gr.HTML()

        def on_model(ckpt, e, d):
            """Describe the model, fit the exit-layer slider to its L, and take the exit layer and draft length
            that bench.py --auto stored in the checkpoint, if any."""
            description, L = model_info(ckpt)
            if not L:
                return description, gr.Slider(), gr.Slider()
            rec = getattr(get_model(ckpt)[0], "metadata", {}).get("recommended", {})
            e = rec.get("exit_layer", e if 1 <= e <= L else max(1, L // 2))
            return (description, gr.Slider(minimum=1, maximum=L, value=int(e)),
                    gr.Slider(value=rec.get("num_speculations", d)))

        model_events = dict(concurrency_id="model")  # one queue for everything that runs the model
        checkpoint.change(on_model, [checkpoint, exit_layer, num_spec], [info, exit_layer, num_spec],
                          api_name="model_info",
                          **model_events)
        load.click(lambda p: gr.Dropdown(value=p.strip()) if p and p.strip() else gr.Dropdown(), [path],
                   [checkpoint], api_visibility="private")
        demo.load(on_model, [checkpoint, exit_layer, num_spec], [info, exit_layer, num_spec], api_visibility="private",
                  **model_events)
        gen_inputs = [checkpoint, prompt, strategy, exit_layer, num_spec, temperature, top_p, max_new, seed,
                      show_rejected]
        gen = go.click(generate, gen_inputs, [out, stats, text], api_name="generate", show_progress="hidden",
                       **model_events)
        lens_after = gen.then(lens, [checkpoint, prompt, text, exit_layer], [lens_out], api_visibility="private",
                              show_progress="hidden", **model_events)
        prompt_gen = prompt.submit(generate, gen_inputs, [out, stats, text], api_visibility="private",
                                   show_progress="hidden", **model_events)
        cmp = compare_btn.click(compare, [checkpoint, prompt, exit_layer, num_spec, max_new], [compare_out],
                                api_name="compare", **model_events)
        lns = lens_btn.click(lens, [checkpoint, prompt, text, exit_layer], [lens_out], api_name="logit_lens",
                             **model_events)
        swp = sweep_btn.click(sweep, [checkpoint, prompt, num_spec, max_new], [sweep_plot, sweep_note],
                              api_name="sweep", **model_events)
        stop.click(None, None, None, cancels=[gen, lens_after, prompt_gen, cmp, lns, swp])
        # Hiding rejected drafts is pure CSS: no need to decode again.
        show_rejected.change(None, [show_rejected], None, js="(v) => { document.querySelectorAll('#out .ls-out')"
                             ".forEach(e => e.classList.toggle('hide-rejected', !v)); }")
    demo.queue(max_size=16, default_concurrency_limit=1)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the LayerSkip demo: self-speculative decoding, live.")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"the model selected at start, any path load_model reads (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the network")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default="cpu", help="torch device for the models, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    print(f"config: {vars(args)}")
    global DEVICE
    DEVICE = args.device
    if not resolve(args.checkpoint).exists():
        print(f"note: {args.checkpoint} does not exist yet; the app starts anyway. Pick another model in it, or "
              f"train one (python train.py --preset toy) and pass --checkpoint out/toy/model.pt", file=sys.stderr)
    build_demo(args.checkpoint).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
