"""The Gradio demo: its events called directly, the served app through gradio_client, and the page in a real browser
(Debian's Chromium through Playwright), which also takes the README's screenshots on the shipped model:

    LAYERSKIP_DEMO_CHECKPOINT=checkpoints/layerskip-python-deep.pt LAYERSKIP_SCREENSHOTS=docs \
        python -m pytest tests/test_demo.py -k browser      # docs/demo*.png, at 1280 and 820 px
"""

import os
import re
import shutil
import threading
import time
from dataclasses import replace
from html import unescape
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry attempts from the test machine

import layerskip as ls  # noqa: E402
import batcher  # noqa: E402
from conftest import ROOT, assert_one_line_error  # noqa: E402
from model_io import chat_prompt, load_model, save_checkpoint  # noqa: E402
from settings import Settings  # noqa: E402

import demo_app  # noqa: E402  (gradio is imported when the app is built: collecting these tests does not need it)
import demo_views  # noqa: E402

pytestmark = [
    pytest.mark.skipif(find_spec("gradio") is None, reason="the demo's dependencies are optional: "
                       "pip install -r requirements-demo.txt"),
    # gradio 6.31's queue still uses pandas options that pandas 3 deprecates: not ours to fix
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

CODE = "def fibonacci(n):\n    if n < 2:"  # on the random tiny model, exit 2 drafts are both accepted and rejected
VERSE = "ROMEO:\nBut soft"
# the browser's prompt: CODE; for the README's screenshots (a trained model) the first example, as the app starts
SHOWN = demo_app.example_prompts()[0] if os.environ.get("LAYERSKIP_DEMO_CHECKPOINT") else CODE
UNCHANGED = {"__type__": "update"}


@pytest.fixture
def app(tiny_checkpoint):
    """The demo's events over the tiny checkpoint (as if given at launch), one request at a time."""
    return demo_app.Demo(demo_app.Config(checkpoint=[str(tiny_checkpoint)], batch_size=1))


@pytest.fixture(scope="module")
def recommended_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny model with bench.py --auto's stored setting (exit 3, d=2, threshold 0.3) and train.py's exit losses."""
    model, tok = load_model(tiny_checkpoint)
    path = tmp_path_factory.mktemp("rec") / "recommended.pt"
    save_checkpoint(path, model, tok, metadata=dict(val_loss_per_exit=[4.0, 3.5, 3.2, 3.0], recommended=dict(
        exit_layer=3, num_speculations=2, draft_threshold=0.3)))
    return path


def expected(app, checkpoint, prompt, max_new_tokens, settings=None, **kw):
    """(the continuation layerskip.generate decodes for this setting, as text after the prompt; its Generation)."""
    model, tok = app.models.get(str(checkpoint))
    ids = tok.encode(prompt)
    g = ls.generate(model, ids, max_new_tokens, replace(settings or Settings(**kw), eos_id=tok.stop_ids))
    return tok.decode(ids + g.tokens)[len(tok.decode(ids)):], g


def spans(page_html):
    """(kind, text) of every token span in the output HTML."""
    return [(k, unescape(t)) for k, t in re.findall(r'<span class="ls-tok (\w+)"[^>]*>(.*?)</span>', page_html, re.S)]


def card(page_html, key):
    """The value shown on the statistics card `key`."""
    return re.search(rf'<div class="v">([^<]*)</div><div class="k">{re.escape(key)}</div>', page_html)[1]


def corrections(g):
    """The rounds of a Generation that ended on the verifier's correction of a rejected draft."""
    return sum(e.token is not None and e.accepted < len(e.drafted) for e in g.events)


# ---------------------------------------------------------------------------------------------------------
# The events, called directly


def test_rounds_become_pieces_that_rebuild_the_generated_text(app, tiny_checkpoint):
    """Each update adds a round (accepted*, rejected*, a correction or bonus) rebuilding generate()'s text, drawn."""
    model, tok = app.models.get(str(tiny_checkpoint))
    s = Settings(strategy="self_speculative", exit_layer=2, num_speculations=4, eos_id=tok.stop_ids)
    want, g = expected(app, tiny_checkpoint, CODE, 48, s)
    ids = tok.encode(CODE)
    stream = batcher.timed(ls.generate_stream(model, ids, 48, s))
    updates = list(demo_views.rounds_as_pieces(stream, tok, ids, len(ids) + 48, "bonus"))
    pieces, text, so_far, _ = updates[-1]
    for r, ((shown, _, up_to_r, _), e) in enumerate(zip(updates, g.events, strict=True), start=1):
        assert shown == [p for p in pieces if p[2] <= r] and up_to_r.rounds == r  # update r adds round r's pieces
        verdict = "bonus" if e.accepted == len(e.drafted) else "correction"
        assert [kind for _, kind, rnd in pieces if rnd == r] == ["accepted"] * e.accepted + ["rejected"] * (
            len(e.drafted) - e.accepted) + [verdict] * (e.token is not None)
    assert (so_far.tokens, so_far.drafted, so_far.accepted) == (g.tokens, g.drafted, g.accepted)
    assert 0 < g.accepted < g.drafted and 0 < corrections(g) < g.rounds  # CODE shows every kind of piece
    assert text == want == "".join(t for t, kind, _ in pieces if kind != "rejected") and len(g.tokens) == 48
    legend = demo_views.render_text("", [], "self_speculative")
    assert re.findall(r'<span class="key (\w+)">', legend) == ["accepted", "correction", "bonus", "rejected"]
    # a round's rejected drafts: one count, their text on hover, at most REJECTED_SHOWN struck through, then +k
    pieces = ([("a", "accepted", 1)] + [(f"r{i}", "rejected", 1) for i in range(6)] + [("c", "correction", 1)] +
              [("x", "rejected", 2), ("d", "correction", 2)])
    page = demo_views.render_text("p", pieces, "self_speculative")
    assert spans(page) == [("accepted", "a"), *[("rejected", f"r{i}") for i in range(demo_views.REJECTED_SHOWN)],
                           ("correction", "c"), ("rejected", "x"), ("correction", "d")]
    assert re.findall(r'<sup class="(\w+)">([^<]*)</sup>', page) == [("n", "6"), ("more", "+2"), ("n", "1")]
    assert "round 1: 6 rejected drafts: &#x27;r0r1r2r3r4r5&#x27;" in page  # all six on hover
    for view in demo_views.REJECTED_VIEWS:
        assert f'class="ls-out rej-{view}"' in demo_views.render_text("p", pieces, "self_speculative", view)


@pytest.mark.parametrize("settings", [
    dict(strategy="autoregressive"),
    dict(strategy="early_exit", exit_layer=1),
    dict(strategy="self_speculative", exit_layer=3, num_speculations=2, temperature=0.9, top_p=0.9, seed=7),
])
def test_generate_streams_html_and_ends_on_generates_text(app, tiny_checkpoint, settings):
    """Each strategy: a frame per round, the last with generate()'s text and numbers; output = prompt + text."""
    kw = dict(exit_layer=2, num_speculations=4, temperature=0.0, top_p=1.0, seed=0) | settings
    want, g = expected(app, tiny_checkpoint, CODE, 24, **kw)
    updates = list(app.generate(str(tiny_checkpoint), CODE, max_new_tokens=24, stop_rule="fixed", **kw))
    assert len(updates) == g.rounds + 2 and {error for *_, error in updates} == {""}  # the error place stays empty
    out, stats, text, _ = updates[-1]
    assert text == want and "done" in stats and card(stats, "tokens") == "24"
    if kw["strategy"] == "self_speculative":
        assert (card(stats, "acceptance rate"), card(stats, "tokens/round")) == (f"{g.acceptance_rate:.0%}",
                                                                                 f"{g.tokens_per_round:.2f}")
    assert set(re.findall(r'<span class="key (\w+)">', out)) >= {k for k, _ in spans(out)} != set()
    body = re.sub(r'<span class="ls-tok rejected"[^>]*>.*?</span>|<sup class="\w+">.*?</sup>', "",
                  out.split('<div class="ls-text">')[1], flags=re.S)
    tok = app.models.get(str(tiny_checkpoint))[1]
    assert unescape(re.sub(r"<[^>]+>", "", body)) == tok.decode(tok.encode(CODE)) + text and "\n    if n &lt; 2" in out


BAD = [  # (event, its arguments, the one line it answers): "corrupt" and "missing" stand for such checkpoints
    ("generate", dict(exit_layer=999), "exit layer 999 is out of range: this model has 4 layers, use 1..4"),
    ("generate", dict(strategy="beam"), "unknown strategy 'beam'"),
    ("generate", dict(stop_rule="auto"), "stop_rule must be one of fixed, threshold, cost, got 'auto'"),
    ("generate", dict(stop_rule="threshold", draft_threshold=0), "the threshold stop rule needs draft_threshold"),
    ("generate", dict(stop_rule="cost", draft_cost=0.1), "draft_gamma is empty: give a number in (0, 10]"),
    ("generate", dict(temperature=float("nan")), "temperature must be 0 or a number in [0.01, 100]"),
    ("generate", dict(temperature="hot"), "temperature must be 0 or a number in [0.01, 100] (0 = greedy), got 'hot'"),
    ("generate", dict(max_new_tokens=None), "max_new_tokens is empty: give a whole number in [1, 512]"),
    ("generate", dict(rejected=["count"]), "rejected must be one of count, text, hidden, got ['count']"),
    ("generate", dict(prompt="to be or not " * 200), "context window holds 256"),
    ("generate", dict(checkpoint="corrupt"), "truncated or corrupt"),
    ("generate", dict(chat=True), "this model has no chat template"),
    ("compare", dict(checkpoint="missing"), "no such file"),
    ("compare", dict(exit_layer=999), "exit layer 999 is out of range: this model has 4 layers, use 1..4"),
    ("lens", dict(prompt=""), "the prompt is empty: generate something first"),
    ("sweep", dict(repetition_penalty=0), "repetition_penalty must be a number in [0.01, 100]"),
]


@pytest.mark.parametrize("event, args, message", BAD)
def test_bad_input_is_one_line_of_plain_text_and_runs_nothing(app, tiny_checkpoint, tmp_path, monkeypatch, event,
                                                              args, message):
    """Bad input: one frame, outputs left as they are, why in one plain line, nothing run."""
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    app.models.serve(tmp_path / "corrupt.pt", tmp_path / "missing.pt")  # as if given at launch: they may say more
    args = dict(checkpoint="tiny", prompt=VERSE) | args
    args["checkpoint"] = str(tiny_checkpoint if args["checkpoint"] == "tiny" else tmp_path / f"{args['checkpoint']}.pt")
    monkeypatch.setattr(ls.Transformer, "run_blocks", lambda *a, **k: pytest.fail("the model ran"))
    frames = getattr(app, event)(**args)
    [(*outputs, error)] = list(frames) if event in ("generate", "sweep") else [frames]
    assert outputs == [UNCHANGED] * len(outputs) and message in error and "<" not in error and "\n" not in error, error


def test_compare_lens_and_sweep(app, tiny_checkpoint):
    """Compare, the lens and the sweep on the tiny model; Stop ends a generation or a sweep after the step shown."""
    ck = str(tiny_checkpoint)
    table, error = app.compare(ck, VERSE, 2, 4, "fixed", max_new_tokens=32)
    assert "✓ identical (32 tokens)" in table and error == ""
    assert "both with" not in table and "E=2, d = 4, fixed" in table  # no logits processor on; the rule named
    lens, error = app.lens(ck, VERSE, " and the", 3)
    assert len(re.findall(r'<td class="row-label">exit \d', lens)) == 4 and "exit 3 ◀ E" in lens and error == ""
    assert "average layers needed" in lens
    *progress, (acceptance, speedup, note, error) = app.sweep(ck, VERSE, num_speculations=4, max_new_tokens=16)
    assert error == "" and {p[3] for p in progress} == {""} and len(progress) == demo_app.SWEEP_REPEATS * 5
    assert "<progress" in progress[0][2] and "pass 1 of" in progress[0][2]
    assert [len(p[1]["value"]) for p in progress[:5]] == [0, 1, 2, 3, 4]  # a speedup needs AR and its exit's run
    assert acceptance["x_lim"] == speedup["x_lim"] == [0, 4.5] and speedup["y_lim"][0] == 0  # x: up to exit L = 4
    acc, fast = acceptance["value"], speedup["value"]
    assert acc.exit_layer.dtype.kind == "i" and list(acc.exit_layer) == list(fast.exit_layer) == [1, 2, 3, 4]
    assert acc.acceptance.between(0, 1).all() and acc.acceptance.iloc[-1] == 1.0  # exit L: the full model drafts
    assert ("Fastest: exit" in note or "No exit beat" in note) and "Sanity check: exit 4" in note
    rows = re.findall(r"<tr><td>(\d+)</td><td>[\d.]+%</td><td>[\d.]+×</td><td>[\d.]+–[\d.]+×</td><td>(\d+)</td>", note)
    assert rows == [(str(E), str(demo_app.SWEEP_REPEATS)) for E in (1, 2, 3, 4)]  # each exit: median, range, passes
    control = {}  # Stop ends a sweep after the run shown, or a generation after the round shown, and says so
    run = app.sweep(ck, VERSE, num_speculations=4, max_new_tokens=16, control=control)
    for _ in range(3):  # the first pass: autoregressive, exit 1, exit 2
        next(run)
    app.stop(control)
    [(_, speedup, note, _)] = list(run)
    assert "stopped: Stop pressed in pass 1" in note and list(speedup["value"].exit_layer) == [1, 2]
    run = app.generate(ck, VERSE, "self_speculative", 2, 4, "fixed", max_new_tokens=200, control=control)
    shown = [next(run) for _ in range(4)][-1]  # the empty frame and three rounds: a new run clears the last Stop
    app.stop(control)
    [(out, stats, text, error)], tokens = list(run), int(card(shown[1], "tokens"))
    assert 3 <= tokens < 200 and (out, text, error) == (shown[0], shown[2], "")
    assert f"stopped: Stop pressed after {tokens} new tokens (3 rounds)" in stats


def test_sweep_and_compare_interleave_runs_and_take_medians_of_per_pass_ratios(app, tiny_checkpoint, monkeypatch):
    """Runs interleave as bench.py's; speedups are medians of per-pass ratios; the controls reach every run."""
    calls, ratio = [], {1: 0.5, 2: 1.5, 3: 1.2, 4: 1.0}

    def fake_generate(model, ids, n, strategy="autoregressive", exit_layer=None, **kw):
        run = exit_layer if strategy == "self_speculative" else "AR"  # AR runs carry the controls' exit too
        calls.append((run, kw))
        seconds = 1.0 if run == "AR" else 1.0 / ratio[run]
        if run == 4 and sum(c == 4 for c, _ in calls) == 3:
            seconds = 0.1  # one run caught the machine idle and its pass's AR run busy
        return ls.Generation(tokens=[0] * n, seconds=seconds, rounds=n, drafted=n, accepted=n // 2)

    monkeypatch.setattr(ls, "generate", fake_generate)
    ck = str(tiny_checkpoint)
    *_, (_, speedup, note, _) = app.sweep(ck, VERSE, 2, 4, "threshold", 0.3, max_new_tokens=16,
                                          repetition_penalty=1.2, no_repeat_ngram_size=3)
    order = [c for c, _ in calls]
    assert order[:5] == ["AR", 1, 2, 3, 4] and len(order) == 5 * (demo_app.SWEEP_REPEATS + 1)  # warm-ups first
    assert order[5:20] == ["AR", 1, 2, 3, 4, 1, 2, 3, 4, "AR", 2, 3, 4, "AR", 1]
    drafting = [kw for c, kw in calls[5:] if c != "AR"]
    assert {(kw["num_speculations"], kw["draft_threshold"], kw["draft_cost"]) for kw in drafting} == {(4, 0.3, None)}
    assert {(kw["repetition_penalty"], kw["no_repeat_ngram_size"]) for _, kw in calls[5:]} == {(1.2, 3)}
    assert dict(zip(speedup["value"].exit_layer, speedup["value"].speedup)) == pytest.approx(ratio)
    assert "Fastest: exit 2, 1.50×" in note and "it measured 1.00× (passes 1.00–10.00×)" in note
    assert "far from 1×" not in note and ("16 greedy tokens per run, at every exit d ≤ 4, stop below confidence "
                                          "0.3, repetition penalty 1.2, no repeated 3-grams;") in note
    calls.clear()
    ratio[4] = 3.0  # exit L measured fastest: a busy machine, not a finding
    *_, (_, _, note, _) = app.sweep(ck, VERSE, 2, 4, "cost", 0.3, 0.2, 0.5, max_new_tokens=16)
    assert "Fastest: exit 2, 1.50×" in note and "it measured 3.00×" in note and "far from 1×" in note
    costs = {c: (kw["draft_cost"], kw["draft_gamma"], kw["draft_threshold"]) for c, kw in calls if c != "AR"}
    assert costs == {E: (pytest.approx(0.2 * E / 2), 0.5, None) for E in (1, 2, 3, 4)}  # 0.2 at exit 2, x E/2
    assert "d ≤ 4, cost-model stop (draft cost 0.2 at exit 2, × E/2 at exit E, γ 0.5)" in note
    calls.clear()  # Compare at exit 4 (3x; 10x in pass 2, its idle run), fixed d with the other rules' boxes filled
    table, error = app.compare(ck, VERSE, 4, 8, "fixed", 0.4, 0.2, max_new_tokens=16)
    assert [c for c, _ in calls] == ["AR", 4] + ["AR", 4, 4, "AR", "AR", 4]  # a warm-up, then three passes
    drafting = {(kw["num_speculations"], kw["draft_threshold"], kw["draft_cost"]) for c, kw in calls if c != "AR"}
    assert drafting == {(8, 0, 0)}  # fixed: the boxes of the other rules are not read
    assert card(table, "speedup (AR ms/token ÷ self-speculative ms/token)") == "3.00×" and error == ""
    assert "(passes: 3.00–10.00×)" in table


def test_logits_processors_and_chat_reach_generation_and_greedy_outputs_stay_equal(app, tiny_checkpoint,
                                                                                    monkeypatch):
    """Logits processors and the chat template reach generation; greedy Compare outputs stay identical."""
    ck = str(tiny_checkpoint)
    plain, _ = expected(app, tiny_checkpoint, VERSE, 40)
    for processor, said in ((dict(repetition_penalty=1.5), "repetition penalty 1.5"),
                            (dict(no_repeat_ngram_size=2), "no repeated 2-grams")):
        *_, (_, stats, text, _) = app.generate(ck, VERSE, "self_speculative", 2, 3, "fixed", max_new_tokens=40,
                                               **processor)
        assert text == expected(app, tiny_checkpoint, VERSE, 40, **processor)[0] != plain and said in stats
        table, _ = app.compare(ck, VERSE, 2, 3, "fixed", max_new_tokens=40, **processor)
        assert "✓ identical (40 tokens)" in table and f"both with {said}" in table, processor
    model, tok = app.models.get(ck)
    monkeypatch.setattr(tok, "chat_template", "{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}BOT:")
    *_, (out, _, text, error) = app.generate(ck, "Hello", "autoregressive", chat=True, max_new_tokens=8)
    text_in, ids = chat_prompt(tok, "Hello")
    assert text_in == "USER: Hello\nBOT:" and error == "" and "USER: Hello" in unescape(out)
    assert text == tok.decode(ids + ls.generate(model, ids, 8, eos_id=tok.stop_ids).tokens)[len(tok.decode(ids)):]


def test_switching_model_sets_its_settings_and_a_failed_one_keeps_the_last(app, tiny_checkpoint,
                                                                          recommended_checkpoint, tmp_path):
    """A model sets its stored setting (exit, d, rule, boxes) and describes itself; a failed one keeps the last."""
    from gradio import update
    app.models.serve(recommended_checkpoint)
    menu, loaded, info, *controls = app.switch_model(str(recommended_checkpoint), None, 64)
    hidden, enabled = update(visible=False), [update(interactive=True)] * len(demo_app.RUN_BUTTONS)
    assert loaded == menu["value"] == str(recommended_checkpoint)  # exit, d, rule and its boxes; a 256-token context
    assert controls == [update(maximum=4, value=3, label="exit layer E (1–4)"), update(value=2),
                        update(value="threshold"), update(visible=True, value=0.3), hidden | {"value": 0.15},
                        hidden | {"value": 1.0}, update(maximum=255, value=64), *enabled]
    folded = re.fullmatch(r'<div class="ls-status">(.*)<details><summary>(.*)</summary>(<svg .*</svg>)</details></div>',
                          info, re.S)
    assert folded and "4 layers" in folded[1] and "<br>" not in folded[1]
    assert "recommended: exit 3, d ≤ 2, stop below confidence 0.3" in folded[1]
    assert folded[3].count("<circle") == 4 and "exit 2: 3.500" in folded[3] and "3.50" not in folded[1] + folded[2]
    # another exit: d = 4 drafted to the end, the rule's boxes hidden, keeping what they hold; then back
    assert app.exit_changed(loaded, 2) == (update(value=4), update(value="fixed"), hidden, hidden, hidden)
    assert app.exit_changed(loaded, 3) == (update(value=2), update(value="threshold"), update(visible=True, value=0.3),
                                           hidden, hidden)
    for bad in (999, 0, 2.5, "x", None):
        assert app.exit_changed(loaded, bad) == (UNCHANGED,) * 5
    assert demo_app.rule_changed("cost") == (hidden, update(visible=True), update(visible=True))
    _, loaded, _, *controls = app.switch_model(str(tiny_checkpoint), loaded, 500)
    assert controls == [update(maximum=4, value=1, label="exit layer E (1–4)"), update(value=4), update(value="fixed"),
                        hidden | {"value": 0.5}, hidden | {"value": 0.15}, hidden | {"value": 1.0},
                        update(maximum=255, value=255), *enabled]  # none stored: exit L // 4, d = 4, fixed
    (tmp_path / "bad.pt").write_bytes(b"junk")
    app.models.serve(tmp_path / "bad.pt")
    for path in (str(tmp_path / "bad.pt"), "/etc/passwd", ""):
        menu, still, info, *controls = app.switch_model(path, loaded, 64)
        assert menu["value"] == still == loaded == str(tiny_checkpoint), path
        assert info.count("ls-error") == 1 and f"Still using {loaded}." in info
        assert controls == [UNCHANGED] * (7 + len(demo_app.RUN_BUTTONS))  # the good model's settings stay


def test_only_served_checkpoints_load_and_the_flags_make_the_config(app, tiny_checkpoint, tmp_path, monkeypatch,
                                                                   capsys):
    """Only served checkpoints load, refused alike by every event; at most two stay loaded; the flags; examples."""
    shutil.copy(tiny_checkpoint, tmp_path / "copy.pt")
    for path in [str(tmp_path / "copy.pt"), str(tmp_path / "missing.pt"), "/etc/passwd", "checkpoints/../README.md",
                 "../" * 8 + "etc/hostname", "a\x00b"]:
        [(*_, error)] = app.generate(path, VERSE)
        assert error == batcher.REFUSED == app.compare(path, VERSE)[1] == app.lens(path, VERSE)[1], path
        assert list(app.sweep(path, VERSE))[0][3] == error
    assert not app.models.loaded and "\n" not in batcher.REFUSED
    assert app.models.is_served(ROOT / "checkpoints/layerskip-python-deep.pt")  # whatever checkpoints/*.pt holds
    a, b, c = (shutil.copy(tiny_checkpoint, tmp_path / f"{name}.pt") for name in "abc")
    app.models.serve(a, b, c)
    loads = [app.models.get(path) for path in (a, b, a, c)]  # a again: a hit, and the most recent; c: b goes
    assert loads[0] is loads[2] and [Path(k).name for k in app.models.loaded] == ["a.pt", "c.pt"]
    monkeypatch.setattr(batcher, "installed_model", lambda name: tmp_path / f"{name}.gguf")
    assert batcher.resolve("smollm2") == tmp_path / "smollm2.gguf"
    assert batcher.resolve("checkpoints/x.pt") == Path("checkpoints/x.pt")
    # the flags: --checkpoint (several) served, the first selected; one torch thread on CPU; batching; a typo: exit 2
    import gradio as gr
    built = []
    monkeypatch.setattr(demo_app.Demo, "build", lambda self: built.append(self) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: built.append(kw))
    assert_one_line_error(demo_app.main, ["--chekpoint", "x.pt"], capsys, "unrecognized arguments: --chekpoint x.pt")
    threads = []  # what main sets torch's CPU threads to
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    demo_app.main(["--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tmp_path / "other.pt")])
    demo, launched = built[-2:]
    assert launched["server_name"] == "127.0.0.1" and demo.batcher.batch_size == 8
    assert demo.config.checkpoint[0] == str(tiny_checkpoint) and demo.models.is_served(tmp_path / "other.pt")
    assert demo.models.is_served(tiny_checkpoint) and not demo.models.is_served(tmp_path / "third.pt")
    n = min(2, os.cpu_count() or 1)  # --threads takes at most the cores there are
    demo_app.main(["--allow_any_checkpoint", "--threads", str(n), "--batch_size", "1"])
    assert built[-2].models.is_served(tmp_path / "third.pt") and threads == [1, n]  # 1 on CPU by default
    assert built[-2].batcher is None and built[-2].config.checkpoint == [demo_app.DEFAULT_CHECKPOINT]
    assert all(e.split("\n")[0].strip() for e in demo_app.example_prompts())


# ---------------------------------------------------------------------------------------------------------
# The served app, over HTTP


@pytest.fixture(scope="module")
def demo_checkpoint(recommended_checkpoint):
    """The app's start-up model: the tiny one with a stored setting, or $LAYERSKIP_DEMO_CHECKPOINT (screenshots)."""
    return os.environ.get("LAYERSKIP_DEMO_CHECKPOINT") or str(recommended_checkpoint)


def launch(config):
    """(Demo, url, its Blocks to close): the app served headless on a free local port."""
    demo = demo_app.Demo(config)
    blocks = demo.build()
    return demo, blocks.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)[1], blocks


@pytest.fixture(scope="module")
def served(demo_checkpoint, tiny_checkpoint):
    """(Demo, url, hold, Blocks): the app batching on one torch thread; while hold is set, the model panel lags 3 s."""
    threads, hold, describe = torch.get_num_threads(), threading.Event(), demo_views.describe
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(demo_views, "describe", lambda *args: (hold.is_set() and time.sleep(3)) or describe(*args))
        demo, url, blocks = launch(demo_app.Config(checkpoint=[demo_checkpoint, str(tiny_checkpoint)]))
        yield demo, url, hold, blocks
        blocks.close()
    torch.set_num_threads(threads)


def test_http_api_runs_the_readmes_call_streams_batches_and_refuses_in_one_line(served, demo_checkpoint,
                                                                                tiny_checkpoint, tmp_path, capfd):
    """The README's API call; /generate streams; 12 clients at once share batches; bad input: one line, outputs kept."""
    from gradio_client import Client
    (demo, url, *_), ck = served, str(tiny_checkpoint)
    client = Client(url, verbose=False)
    code = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                if "gradio_client" in b).replace("http://127.0.0.1:7860", url)
    capfd.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    want, _ = expected(demo, demo_checkpoint, eval(re.search(r'prompt=("[^"]*")', code)[1]), 64,
                       demo_app.read_settings(demo.models.get(demo_checkpoint)[0]))  # the first model's setting
    assert capfd.readouterr().out.endswith("\n" + want + "\n")  # after the client's "Loaded as API: ..." line
    job = client.submit(checkpoint=ck, prompt=CODE, exit_layer=2, num_speculations=3, stop_rule="fixed",
                        max_new_tokens=20, api_name="/generate")
    streamed = [o[2] for o in job]
    assert len(streamed) >= 4 and all(a == b[:len(a)] for a, b in zip(streamed, streamed[1:]))  # each extends the last
    assert streamed[-1] == expected(demo, ck, CODE, 20, Settings("self_speculative", 2, 3))[0]
    settings = [dict(strategy="self_speculative", exit_layer=2, num_speculations=3),
                dict(strategy="autoregressive", num_speculations=3), dict(strategy="early_exit", exit_layer=3)]
    asks = [dict(prompt=CODE[:8 + 3 * i], **settings[i % 3]) for i in range(12)]
    clients = [Client(url, verbose=False) for _ in asks]  # one per user
    demo.batcher.largest = 0  # the largest batch from here on
    jobs = [user.submit(checkpoint=ck, stop_rule="fixed", max_new_tokens=12, **ask, api_name="/generate")
            for user, ask in zip(clients, asks)]  # all at once: submit returns before the answer comes
    results = [job.result(timeout=300)[2:] for job in jobs]
    assert results == [(expected(demo, ck, ask.pop("prompt"), 12, **ask)[0], "") for ask in asks]
    assert demo.batcher.largest > 1
    [(*outputs, error)] = list(client.submit(ck, VERSE, temperature="hot", api_name="/generate"))  # the app checks
    assert error == "temperature must be 0 or a number in [0.01, 100] (0 = greedy), got 'hot'"
    assert all(o["__type__"] == "update" and "value" not in o for o in outputs)  # left as they are
    path = str(shutil.copy(tiny_checkpoint, tmp_path / "copy.pt"))  # a checkpoint not served; every kind: in-process
    assert client.predict(path, VERSE, max_new_tokens=8, api_name="/generate")[3] == batcher.REFUSED
    assert client.predict(path, 64, api_name="/model_info")[1] == demo_views.fill("error", message=batcher.REFUSED)
    assert "Traceback" not in capfd.readouterr().err


def test_api_takes_the_readmes_arguments_and_defaults_to_the_stored_setting():
    """/generate takes the README's arguments; it, /compare and /sweep default to the shipped model's stored setting."""
    demo = demo_app.Demo(demo_app.Config())  # as `python demo_app.py` starts, no flags
    api = demo.build().get_api_info()["named_endpoints"]  # what the server publishes to its clients
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == [
        "checkpoint", "prompt", "strategy", "exit_layer", "num_speculations", "stop_rule", "draft_threshold",
        "draft_cost", "draft_gamma", "temperature", "top_p", "max_new_tokens", "seed", "rejected",
        "repetition_penalty", "no_repeat_ngram_size", "chat"]
    rec = demo.models.get(demo_app.DEFAULT_CHECKPOINT)[0].metadata["recommended"]
    stored = dict(checkpoint=demo_app.DEFAULT_CHECKPOINT, prompt=demo_app.example_prompts()[0], stop_rule="cost",
                  **{k: rec[k] for k in ("exit_layer", "num_speculations", "draft_cost", "draft_gamma")})
    for endpoint in ("/generate", "/compare", "/sweep"):
        assert all(p["parameter_has_default"] for p in api[endpoint]["parameters"]), endpoint
        defaults = {p["parameter_name"]: p["parameter_default"] for p in api[endpoint]["parameters"]}
        assert {k: defaults[k] for k in stored} == stored, endpoint
        assert defaults.get("strategy", "self_speculative") == "self_speculative"


@pytest.mark.skipif(os.environ.get("LAYERSKIP_SLOW") != "1",
                    reason="times the shipped model at 17 exits (about a minute): LAYERSKIP_SLOW=1 to run it")
def test_sweep_with_its_defaults_finds_an_early_exit_clearly_faster(served):
    """/sweep with its defaults finds an exit in 2..8 fastest by 1.3x or more (LAYERSKIP_SLOW=1)."""
    from gradio_client import Client
    _, url, blocks = launch(demo_app.Config())  # as `python demo_app.py` starts, no flags
    *_, note, error = Client(url, verbose=False).predict(api_name="/sweep")
    blocks.close()
    text = re.sub(r"<[^>]+>", "", note)
    best = re.search(r"Fastest: exit (\d+), ([\d.]+)×", text)
    assert error == "" and best and 2 <= int(best[1]) <= 8 and float(best[2]) >= 1.3, text
    assert "cost-model stop (draft cost 0.122 at exit 4" in text


# ---------------------------------------------------------------------------------------------------------
# The page, in Chromium


@pytest.fixture
def browser():
    """Debian's Chromium through Playwright, headless; without them a skip (in CI, CI=true: a failure)."""
    if not (chromium := shutil.which("chromium")) or find_spec("playwright") is None:
        message = "needs `pip install playwright` and Debian's chromium (`apt-get install -y chromium`)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def assert_above_the_fold(page, output_px):
    """All of Generate and the output's first `output_px` (all of a shorter one) show in the 800 px high viewport."""
    for selector, px in (("#go", None), ("#out .ls-text", output_px)):
        box = page.locator(selector).bounding_box()
        assert min(box["y"] + box["height"], 800) - max(box["y"], 0) >= min(px or box["height"], box["height"])


def screenshot(page, tmp_path, name, scroll_to=None):
    """A screenshot to $LAYERSKIP_SCREENSHOTS/name (docs/ for the README) or a temporary file, `scroll_to` on top."""
    if scroll_to:
        page.locator(scroll_to).evaluate("e => e.scrollIntoView()")
    page.screenshot(path=os.path.join(os.environ.get("LAYERSKIP_SCREENSHOTS") or tmp_path, name))


def shown_text(page):
    """The text the output shows without its rejected drafts and their counts: the prompt and the continuation."""
    return page.locator("#out .ls-text").evaluate("e => { const c = e.cloneNode(true); "
                                                  "c.querySelectorAll('.ls-rej').forEach(r => r.remove()); "
                                                  "return c.textContent; }")


def click_generate(page):
    """Press Generate and wait for this run's "done" (the last run's is wiped first)."""
    page.evaluate("() => { document.querySelector('#stats .ls-status').textContent = ''; }")
    page.click("#go")
    page.wait_for_selector("#stats .ls-status:text('done')")


def assert_controls_show_the_stored_setting(page, model):
    """The stop rule and the boxes that show (the exit, d and the chosen rule's) hold the model's control_values."""
    v = demo_app.control_values(model)
    rule = {"fixed": [], "threshold": ["draft_threshold"], "cost": ["draft_cost", "draft_gamma"]}[v["stop_rule"]]
    boxes = dict(exit_layer="exit_layer", num_speculations="num_spec", draft_threshold="threshold",
                 draft_cost="draft_cost", draft_gamma="draft_gamma")  # setting -> the elem_id of its box
    shown = {k: page.locator(f"#{b} input[type=number]") for k, b in boxes.items()}
    assert {k: box.input_value() for k, box in shown.items() if box.is_visible()} == \
        {k: str(v[k]) for k in ["exit_layer", "num_speculations", *rule]}
    assert page.locator("#stop_rule input:checked").get_attribute("value") == v["stop_rule"]


def style(page, selector, prop):
    """The computed style `prop` of the first element that matches."""
    return page.locator(selector).first.evaluate(f"e => getComputedStyle(e).{prop}")


@pytest.mark.browser
def test_browser_at_1280_and_820_px(browser, served, demo_checkpoint, tmp_path, monkeypatch, capfd):
    """The page at 1280 and 820 px: start, output, rejected views, Stop, Compare, sweep, models; screenshots."""
    demo, url, hold, blocks = served
    model, tok = demo.models.get(demo_checkpoint)
    s, L, first = demo_app.read_settings(model), model.params.n_layers, demo_app.example_prompts()[0]
    hold.set()  # the model panel loads slowly: until it has, the run buttons wait and the controls show the setting
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # a laptop's screen
    page.set_default_timeout(120_000)  # a loaded CI machine is slow; the test waits, it does not time
    page.goto(url)
    page.wait_for_selector("#go")
    config = [c["props"] for c in blocks.config["components"] if c["props"].get("elem_id") in demo_app.RUN_BUTTONS]
    assert sorted(c["elem_id"] for c in config if c["interactive"] is False) == sorted(demo_app.RUN_BUTTONS)
    assert page.locator("#go").is_disabled() and page.locator("#compare").is_disabled()  # the others: in tabs
    assert page.locator("#info b").count() == 0  # the panel has not loaded
    assert_controls_show_the_stored_setting(page, model)
    click_generate(page)  # nothing typed: waits for the panel, then the example runs at the stored setting
    hold.clear()
    page.evaluate("() => window.scrollTo(0, 0)")  # the panel, drawn above the click, may have scrolled the page
    page.wait_for_selector(f"#exit_layer input[type=number][max='{L}']")
    page.wait_for_selector(f"#max_new input[type=number][max='{min(512, model.params.max_seq_len - 1)}']")
    assert page.locator("#info b").count() == 1 and f"exit {s.exit_layer}, {demo_views.rule_text(s)}" in \
        page.locator("#stats .ls-status").inner_text()
    assert shown_text(page) == tok.decode(tok.encode(first)) + expected(demo, demo_checkpoint, first, 64, s)[0]
    assert_above_the_fold(page, 300)

    want, g = expected(demo, demo_checkpoint, SHOWN, 64, s)
    page.fill("#prompt textarea", SHOWN)
    click_generate(page)
    rejected = [int(n) for n in page.locator("#out .ls-rej .n").all_inner_texts()]
    assert rejected == [len(e.drafted) - e.accepted for e in g.events if e.accepted < len(e.drafted)] != []
    colour = {k: style(page, f"#out .ls-tok.{k}", "backgroundColor") for k in ("accepted", "correction", "bonus")}
    assert colour == {k: style(page, f"#out .key.{k} .sw", "backgroundColor") for k in colour}  # as the legend says
    assert len(set(colour.values())) == 3 and page.locator("#out .ls-rej .n").first.is_visible()
    assert not page.locator("#out .ls-tok.rejected").first.is_visible()  # the count shows, not the drafts
    assert shown_text(page) == tok.decode(tok.encode(SHOWN)) + want
    stats = page.locator("#stats").inner_text()
    assert "tokens/s" in stats and f"{g.acceptance_rate:.0%}\nacceptance rate" in stats
    assert f"{corrections(g)} correction" in stats and f"{g.rounds - corrections(g)} bonus token" in stats
    screenshot(page, tmp_path, "demo.png")  # what a laptop shows, without scrolling
    page.get_by_role("tab", name="Logit lens").click()
    page.wait_for_selector("#lens_out tr.exit")  # filled in after generation, the chosen exit marked
    before = page.locator("#stats").inner_html()
    page.locator("#rejected label:has-text('struck through')").click()  # pure CSS, no new run
    page.wait_for_function("() => getComputedStyle(document.querySelector('#out .ls-tok.rejected')).display != 'none'")
    assert style(page, "#out .ls-tok.rejected", "textDecorationLine") == "line-through"
    assert not page.locator("#out .ls-rej .n").first.is_visible()
    shown_per_round = page.locator("#out .ls-rej").evaluate_all(
        "rs => rs.map(r => [...r.querySelectorAll('.ls-tok')].filter(t => t.offsetParent).length)")
    assert max(shown_per_round) <= demo_views.REJECTED_SHOWN  # capped per round
    page.locator("#rejected label:has-text('hidden')").click()
    page.wait_for_function("() => getComputedStyle(document.querySelector('#out .ls-rej')).display === 'none'")
    assert page.locator("#out .key.rejected").is_hidden() and page.locator("#out .key.accepted").is_visible()
    assert page.locator("#stats").inner_html() == before and shown_text(page) == tok.decode(tok.encode(SHOWN)) + want
    page.locator("#rejected label:has-text('count')").click()

    page.get_by_role("tab", name="Compare with autoregressive").click()
    render = demo_views.render_text
    with monkeypatch.context() as m:  # rounds a person can see, so that Stop lands mid-way on any machine (the
        m.setattr(demo_views, "render_text", lambda *a, **k: time.sleep(0.2) or render(*a, **k))  # drawing: untimed)
        page.click("#go")
        page.wait_for_function("() => +(document.querySelector('#stats .ls-status').textContent"
                               ".match(/generating… round (\\d+)/) || [0, 0])[1] >= 6")
        page.click("#stop")
        page.wait_for_selector("#stats .ls-status:text('stopped')")
    status, tokens = page.locator("#stats .ls-status").inner_text(), int(page.locator("#stats .v").first.inner_text())
    assert re.fullmatch(rf"stopped: Stop pressed after {tokens} new tokens \(\d+ rounds\).*", status) and tokens < 64
    assert page.locator("#out .ls-tok.accepted, #out .ls-tok.correction, #out .ls-tok.bonus").count() == tokens > 0
    screenshot(page, tmp_path, "demo_stopped.png")
    page.click("#compare")
    page.wait_for_selector("#compare_out .ls-table")
    table = page.locator("#compare_out").inner_text()
    assert f"self-speculative (E={s.exit_layer}, {demo_views.rule_text(s)})" in table and "identical" in table
    screenshot(page, tmp_path, "demo_compare.png", scroll_to="#compare")
    page.get_by_role("tab", name="Exit-layer sweep").click()
    page.click("#sweep")
    page.wait_for_selector("#sweep_note progress", timeout=120_000)  # progress while it runs
    page.wait_for_selector("#sweep_note .ls-status:text('done')", timeout=300_000)
    note, rule = page.locator("#sweep_note").inner_text(), demo_views.rule_text(s).split(" (")[0]
    assert "Sanity check: exit" in note and "median" in note and f"at every exit {rule}" in note  # the rule it ran
    exits = page.locator("#sweep_note table tr td:first-child").all_inner_texts()
    assert exits == [str(E) for E in demo_app.sweep_exits(L)]
    for plot in ("#acceptance_plot", "#speedup_plot"):
        page.wait_for_selector(f"{plot} canvas, {plot} svg")
    screenshot(page, tmp_path, "demo_sweep.png", scroll_to="#sweep")  # the plots and the note at the top

    page.set_viewport_size({"width": 820, "height": 800})
    page.evaluate("() => window.scrollTo(0, 0)")
    click_generate(page)
    assert style(page, "#main", "gridTemplateAreas") == '"prompt" "out" "settings" "tabs"'  # output under the prompt
    assert_above_the_fold(page, 150)
    screenshot(page, tmp_path, "demo_820.png")
    page.get_by_role("tab", name="Compare with autoregressive").click()
    page.locator("#compare_out").evaluate("e => e.scrollIntoView({block: 'center'})")
    screenshot(page, tmp_path, "demo_compare_820.png")
    page.get_by_role("tab", name="Exit-layer sweep").click()
    page.wait_for_timeout(500)  # the plots redraw at the new width
    screenshot(page, tmp_path, "demo_sweep_820.png", scroll_to="#sweep")
    assert "Traceback" not in capfd.readouterr().err

    label, other = next((label, path) for label, path in demo.menu()  # another model: its own settings
                        if batcher.resolve(path).resolve() != batcher.resolve(demo_checkpoint).resolve())
    model, _ = demo.models.get(other)
    page.click("#model input")
    page.get_by_role("option", name=label).click()
    page.wait_for_selector(f"#info :text('{Path(other).name}')")
    page.wait_for_selector(f"#exit_layer input[type=number][max='{model.params.n_layers}']")
    assert_controls_show_the_stored_setting(page, model)
