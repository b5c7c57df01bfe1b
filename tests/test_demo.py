"""The Gradio demo: its event functions called directly, the served app driven by gradio_client, and the page
driven in a real browser (Debian's Chromium through Playwright)."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from html import unescape
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry attempts from the test machine

import layerskip as ls  # noqa: E402
from conftest import ROOT  # noqa: E402

gr = pytest.importorskip("gradio")  # the demo's dependencies are optional (requirements-demo.txt)
import demo_app  # noqa: E402

pytestmark = [  # gradio 6.31's queue still uses pandas options that pandas 3 deprecates: not ours to fix
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

CODE = "def fibonacci(n):\n    if n < 2:"  # on the random tiny model, exit 2 drafts are both accepted and rejected
VERSE = "ROMEO:\nBut soft"
# the browser tests' prompt: CODE on the tiny model; for the README's screenshots ($LAYERSKIP_DEMO_CHECKPOINT, a
# trained model) the start of a HumanEval-style function, as generate.py's default prompt
SHOWN = ('def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
         if os.environ.get("LAYERSKIP_DEMO_CHECKPOINT") else CODE)


def expected(checkpoint, prompt, max_new_tokens, **kw):
    """The continuation layerskip.generate decodes for these settings, as text after the prompt."""
    model, tok = demo_app.get_model(str(checkpoint))
    ids = tok.encode(prompt)
    g = ls.generate(model, ids, max_new_tokens, eos_id=tok.eos_id, **kw)
    return tok.decode(ids + g.tokens)[len(tok.decode(ids)):], g


def generate_py(checkpoint, prompt, *flags):
    """The continuation `python generate.py` prints for these flags (piped: plain text between two rules)."""
    out = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint", str(checkpoint), "--prompt",
                          prompt, *map(str, flags)], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    text = out.split("-" * 80 + "\n")[1]
    assert text.startswith(prompt) and text.endswith("\n")
    return text[len(prompt):-1]


def spans(page_html):
    """(kind, text) of every token span in the output HTML."""
    return [(k, unescape(t)) for k, t in re.findall(r'<span class="ls-tok (\w+)"[^>]*>(.*?)</span>', page_html, re.S)]


@pytest.fixture(autouse=True)
def served(tiny_checkpoint, monkeypatch):
    """The app serves only checkpoints/*.pt and launch-given paths: the tiny one counts as launch-given. Each test
    starts from that alone, whatever earlier tests served."""
    monkeypatch.setattr(demo_app, "_served", set())
    demo_app.serve(tiny_checkpoint)


@pytest.fixture(scope="module")
def recommended_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny model with a stored recommendation (what bench.py --auto writes): exit 3, d=2, threshold 0.3."""
    from model_io import save_checkpoint
    model, tok = ls.load_model(tiny_checkpoint)
    path = tmp_path_factory.mktemp("rec") / "recommended.pt"
    save_checkpoint(path, model, tok, metadata=dict(recommended=dict(exit_layer=3, num_speculations=2,
                                                                     draft_threshold=0.3)))
    return path


# ---------------------------------------------------------------------------------------------------------
# Event functions, called directly


def test_pieces_stream_round_by_round_and_rebuild_the_generated_text(tiny_checkpoint):
    """Each event extends the last by one round, kinds run accepted* rejected* verifier within a round, the
    counts equal generate()'s statistics, and the non-rejected pieces join to generate()'s decoded text."""
    model, tok = demo_app.get_model(str(tiny_checkpoint))
    ids = tok.encode(CODE)
    settings = dict(strategy="self_speculative", exit_layer=2, num_speculations=4)
    want, g = expected(tiny_checkpoint, CODE, 48, **settings)
    events = list(demo_app.decode_pieces(model, tok, ids, 48, **settings))
    assert len(events) == g.rounds
    previous = []
    for r, (pieces, text, stats) in enumerate(events, start=1):
        assert pieces[:len(previous)] == previous and stats["rounds"] == r
        new = [kind for _, kind, rnd in pieces[len(previous):]]
        assert {rnd for _, _, rnd in pieces[len(previous):]} == {r}
        assert new == sorted(new, key=["accepted", "rejected", "verifier"].index)  # drafts first, the verdict last
        assert new.count("verifier") <= 1
        previous = pieces
    pieces, text, stats = events[-1]
    kinds = [kind for _, kind, _ in pieces]
    assert kinds.count("accepted") == g.accepted > 0
    assert kinds.count("rejected") == g.drafted - g.accepted > 0
    assert kinds.count("verifier") == sum(e.token is not None for e in g.events)
    assert text == want == "".join(t for t, kind, _ in pieces if kind != "rejected")
    assert stats["tokens"] == len(g.tokens) == 48


@pytest.mark.parametrize("settings", [
    dict(strategy="autoregressive"),
    dict(strategy="early_exit", exit_layer=1),
    dict(strategy="self_speculative", exit_layer=3, num_speculations=2, temperature=0.9, top_p=0.9, seed=7),
])
def test_generate_event_streams_html_and_ends_on_generates_text(tiny_checkpoint, settings):
    """The Generate handler streams (text HTML, stats HTML, text) and ends on layerskip.generate's decoded text
    for every strategy, greedy or sampled; its spans carry the strategy's kinds."""
    kw = dict(exit_layer=2, num_speculations=4, temperature=0.0, top_p=1.0, seed=0) | settings
    want, g = expected(tiny_checkpoint, VERSE, 24, **kw)
    updates = list(demo_app.generate(str(tiny_checkpoint), VERSE, kw["strategy"], kw["exit_layer"],
                                     kw["num_speculations"], kw["temperature"], kw["top_p"], 24, kw["seed"], True))
    assert len(updates) == g.rounds + 2  # an empty frame, one per round, the final one
    out, stats, text = updates[-1]
    assert text == want
    assert "done" in stats and ">24<" in stats
    kinds = {k for k, _ in spans(out)}
    assert kinds <= set(demo_app.LEGEND[kw["strategy"]]) and kinds


def test_output_is_contiguous_escaped_text(tiny_checkpoint):
    """The HTML is the escaped prompt followed by one span per piece: stripping the tags and rejected spans
    gives back exactly prompt + continuation, with '<' and newlines intact."""
    prompt = "if a < b:\n    return"
    *_, (out, stats, text) = demo_app.generate(str(tiny_checkpoint), prompt, "self_speculative", 2, 4, 0, 1, 32)
    model, tok = demo_app.get_model(str(tiny_checkpoint))
    text_div = out.split('<div class="ls-text">')[1]
    body = re.sub(r'<span class="ls-tok rejected"[^>]*>.*?</span>', "", text_div, flags=re.S)
    assert unescape(re.sub(r"<[^>]+>", "", body)) == tok.decode(tok.encode(prompt)) + text
    assert "if a &lt; b:\n    return" in out and "white-space: pre-wrap" in demo_app.CSS


def test_bad_inputs_become_messages(tiny_checkpoint, tmp_path):
    """Empty or over-long prompts, out-of-range numbers, missing or corrupt checkpoints yield one error
    message each and never raise."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    demo_app.serve(corrupt, tmp_path / "missing.pt")  # as if given at launch: then their errors may say more
    ck = str(tiny_checkpoint)
    cases = {
        "the prompt is empty": (ck, "   "),
        "at most 20,000": (ck, "x" * 20_001),
        "context window holds 256": (ck, "to be or not " * 200),
        "between 1 and 512": (ck, VERSE, "self_speculative", 2, 4, 0, 1, 513),
        "this model has 4 layers, use 1..4": (ck, VERSE, "self_speculative", 9),
        "num_speculations must be at least 1": (ck, VERSE, "self_speculative", 2, 0),
        "unknown strategy": (ck, VERSE, "beam"),
        "no such file": (str(tmp_path / "missing.pt"), VERSE),
        "truncated or corrupt": (str(corrupt), VERSE),
        "no checkpoint chosen": ("", VERSE),
        "draft threshold is a probability": (ck, VERSE, "self_speculative", 2, 4, 0, 1, 32, 0, True, 1.5),
    }
    for message, args in cases.items():
        updates = list(demo_app.generate(*args))
        assert len(updates) == 1 and 'class="ls-error"' in updates[0][1] and message in updates[0][1], message
    assert "no checkpoint chosen" in demo_app.compare("", VERSE) and "ls-error" in demo_app.lens(ck, "")
    [(df, note)] = demo_app.sweep(str(corrupt), VERSE)
    assert df.empty and "corrupt" in note


def test_compare_lens_and_sweep(tiny_checkpoint):
    """Compare shows both timings, the speedup and identical greedy outputs; the lens has one row per exit
    with the chosen one marked; the sweep gives acceptance and speedup for exits 1..L."""
    ck = str(tiny_checkpoint)
    table = demo_app.compare(ck, VERSE, 2, 4, 32)
    assert "✓ identical (32 tokens)" in table and "speedup" in table and "ms/token" in table
    lens = demo_app.lens(ck, VERSE, " and the", 3)
    assert len(re.findall(r'<td class="row-label">exit \d', lens)) == 4 and "exit 3 ◀ E" in lens
    assert "average layers needed" in lens
    *progress, (df, note) = demo_app.sweep(ck, VERSE, 4, 16)
    assert len(progress) == demo_app.SWEEP_REPEATS * 4  # one update per timed pair: the plot fills in as it runs
    assert "<progress" in progress[0][1] and "pass 1 of" in progress[0][1] and list(progress[0][0].exit_layer) == [1, 1]
    assert df.exit_layer.dtype.kind == "i" and list(df.exit_layer.unique()) == [1, 2, 3, 4] and len(df) == 8
    acc = df[df.metric == "acceptance rate"].value
    assert acc.between(0, 1).all() and acc.iloc[-1] == 1.0  # exit L drafts with the full model: all accepted
    assert ("Fastest: exit" in note or "No exit beat" in note) and "Sanity check: exit 4" in note
    rows = re.findall(r"<tr><td>(\d+)</td><td>[\d.]+%</td><td>[\d.]+×</td><td>[\d.]+–[\d.]+×</td><td>(\d+)</td>",
                      note)
    assert rows == [(str(E), str(demo_app.SWEEP_REPEATS)) for E in (1, 2, 3, 4)]  # each exit: median, range, runs


def test_sweep_pairs_every_run_with_an_autoregressive_one_and_takes_medians(tiny_checkpoint, monkeypatch):
    """The sweep times each exit next to its own autoregressive run, all exits in turn, SWEEP_REPEATS times, and
    reports the median ratio with its range: one wild run (here 10x at exit L) moves neither the speedup nor the
    fastest exit; the E=L sanity line and the spread are shown. The controls' draft threshold is used at every
    exit and named in the note; one that is not a probability is refused."""
    calls, thresholds, ratio = [], set(), {1: 0.5, 2: 1.5, 3: 1.2, 4: 1.0}

    def fake_generate(model, ids, n, strategy="autoregressive", exit_layer=None, **kw):
        calls.append(exit_layer if strategy == "self_speculative" else "AR")
        if strategy == "self_speculative":
            thresholds.add(kw["draft_threshold"])
        seconds = 1.0 if strategy == "autoregressive" else 1.0 / ratio[exit_layer]
        if exit_layer == 4 and calls.count(4) == 2:
            seconds = 0.1  # one run caught the machine idle and the paired AR run busy
        return ls.Generation(tokens=[0] * n, seconds=seconds, rounds=n, drafted=n, accepted=n // 2)

    monkeypatch.setattr(ls, "generate", fake_generate)
    *_, (df, note) = demo_app.sweep(str(tiny_checkpoint), VERSE, 4, 16, 0.3)
    assert thresholds == {0.3} and "16 greedy tokens per run, d=4, draft threshold 0.3;" in note
    pairs = calls[1:]  # after one warm-up run: (AR, exit E) pairs, E = 1..L, the order flipped every other pass
    assert len(pairs) == 2 * 4 * demo_app.SWEEP_REPEATS
    assert pairs[:8] == ["AR", 1, "AR", 2, "AR", 3, "AR", 4] and pairs[8:16] == [1, "AR", 2, "AR", 3, "AR", 4, "AR"]
    speedup = dict(zip(df[df.metric == "speedup"].exit_layer, df[df.metric == "speedup"].value))
    assert speedup == pytest.approx(ratio)
    assert "Fastest: exit 2, 1.50×" in note and "it measured 1.00× (runs 1.00–10.00×)" in note
    assert "far from 1×" not in note
    thresholds.clear()
    *_, (_, off) = demo_app.sweep(str(tiny_checkpoint), VERSE, 4, 16, 0)  # 0 = off, as the slider says
    assert thresholds == {None} and "d=4;" in off
    [(df, refused)] = demo_app.sweep(str(tiny_checkpoint), VERSE, 4, 16, 1.5)
    assert df.empty and "the draft threshold is a probability in [0, 1] (0 = off), got 1.5" in refused


def test_stop_ends_generation_after_the_round_on_screen_and_says_so(tiny_checkpoint):
    """Stop (control["stop"]) ends decoding after the round being shown; the last frame keeps that text and
    says it stopped, after how many tokens. A new run clears the request."""
    control = {}
    run = demo_app.generate(str(tiny_checkpoint), VERSE, "self_speculative", 2, 4, 0, 1, 200, 0, True, 0, control)
    frames = [next(run) for _ in range(4)]  # the empty frame and three rounds
    demo_app.stop(control)
    rest = list(run)
    assert len(rest) == 1
    (out, stats, text), shown = rest[0], frames[-1]
    tokens = int(re.search(r'<div class="v">(\d+)</div><div class="k">tokens</div>', shown[1]).group(1))
    assert 3 <= tokens < 200 and text == shown[2] and out == shown[0]
    assert f"stopped: Stop pressed after {tokens} new tokens (3 rounds)" in stats and "generating" not in stats
    *_, (out, stats, text) = demo_app.generate(str(tiny_checkpoint), VERSE, "self_speculative", 2, 4, 0, 1, 20, 0,
                                               True, 0, control)
    assert "done" in stats and control == {"stop": False}
    run = demo_app.sweep(str(tiny_checkpoint), VERSE, 4, 16, control=control)
    next(run)
    demo_app.stop(control)
    (df, note), = list(run)
    assert "stopped: Stop pressed in pass 1" in note and list(df[df.metric == "speedup"].exit_layer) == [1, 2]


def test_switching_model_resets_its_settings_and_a_failed_one_keeps_the_last(tiny_checkpoint, recommended_checkpoint,
                                                                            tmp_path):
    """Selecting a model sets exit, d, threshold to its recommendation (ls.speculation_settings) or exit L//4 and
    d=4, fits the exit and max-new-tokens sliders to it; a checkpoint that fails leaves the last good one
    selected (so Generate uses it) with one error line. Moving the exit applies the rule: the recommended d and
    threshold only at the recommended exit."""
    demo_app.serve(recommended_checkpoint)
    menu, loaded, info, exit_layer, d, threshold, max_new = demo_app.switch_model(str(recommended_checkpoint), None, 64)
    assert loaded == menu["value"] == str(recommended_checkpoint) and "4 layers" in info
    assert (exit_layer["value"], exit_layer["maximum"], d["value"], threshold["value"]) == (3, 4, 2, 0.3)
    assert (max_new["maximum"], max_new["value"]) == (255, 64)  # a 256-token context, not 512
    assert demo_app.exit_changed(loaded, 2) == ({"__type__": "update", "value": 4}, {"__type__": "update", "value": 0})
    assert [u["value"] for u in demo_app.exit_changed(loaded, 3)] == [2, 0.3]

    _, loaded, _, exit_layer, d, threshold, max_new = demo_app.switch_model(str(tiny_checkpoint), loaded, 500)
    assert (exit_layer["value"], d["value"], threshold["value"], max_new["value"]) == (1, 4, 0, 255)  # L//4, d=4

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    for path in (str(bad), "/etc/passwd", ""):
        demo_app.serve(bad)
        menu, still, info, *controls = demo_app.switch_model(path, loaded, 64)
        assert menu["value"] == still == loaded == str(tiny_checkpoint), path
        assert info.count("ls-error") == 1 and f"Still using {loaded}." in info
        assert all(c == {"__type__": "update"} for c in controls)  # the controls keep the good model's settings


def test_unserved_checkpoints_are_refused_alike(tiny_checkpoint, tmp_path):
    """Only checkpoints/*.pt and launch-given paths load: any other path, existing or not, checkpoint or not,
    gets the same one-line refusal from every event and loads nothing."""
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint, copy)
    paths = [str(copy), str(tmp_path / "missing.pt"), "/etc/passwd", "/nonexistent/x.pt", "checkpoints/../README.md",
             "../" * 8 + "etc/hostname", "a\x00b"]
    loaded = set(demo_app._models)
    for path in paths:
        [(out, stats, text)] = demo_app.generate(path, VERSE)
        assert stats == demo_app.error_html(demo_app.REFUSED), path
        assert demo_app.compare(path, VERSE) == demo_app.lens(path, VERSE) == stats
        assert list(demo_app.sweep(path, VERSE))[0][1] == stats
    assert set(demo_app._models) == loaded and "\n" not in demo_app.REFUSED
    assert demo_app.is_served(ROOT / "checkpoints/layerskip-python-deep.pt")  # shipped: whatever checkpoints/*.pt holds
    assert demo_app.is_served("checkpoints/baseline-python-deep.pt")


def test_model_cache_keeps_the_two_most_recently_used(tiny_checkpoint, tmp_path, monkeypatch):
    """At most MAX_MODELS (2) models stay loaded: loading another drops the least recently used."""
    from collections import OrderedDict
    monkeypatch.setattr(demo_app, "_models", OrderedDict())
    paths = []
    for name in "abc":
        paths.append(tmp_path / f"{name}.pt")
        shutil.copy(tiny_checkpoint, paths[-1])
    demo_app.serve(*paths)
    a, b, c = (str(p) for p in paths)
    first_a = demo_app.get_model(a)
    demo_app.get_model(b)
    assert demo_app.get_model(a) is first_a  # a hit, and a is now the most recent
    demo_app.get_model(c)
    assert [Path(k).name for k in demo_app._models] == ["a.pt", "c.pt"] and demo_app.MAX_MODELS == 2
    assert demo_app.get_model(b) is not None and [Path(k).name for k in demo_app._models] == ["c.pt", "b.pt"]


def test_examples_legend_and_flags(tiny_checkpoint, tmp_path, monkeypatch):
    """Examples start with text, not blank lines; the rejected legend entry hides with the rejected drafts;
    --checkpoint (several) serves exactly those besides checkpoints/*.pt, --threads defaults to 1 on CPU."""
    from data.prepare import load_prompts
    assert any(p.startswith("\n") for p in load_prompts("humaneval"))  # as stored: after two blank lines
    examples = demo_app.example_prompts()
    assert len(examples) == 6 and all(e.split("\n", 1)[0].strip() for e in examples)
    page = demo_app.render_text("x", [("a", "rejected", 1)], "self_speculative", show_rejected=False)
    assert 'class="ls-out hide-rejected"' in page and '<span class="key rejected">' in page
    assert ".ls-out.hide-rejected .key.rejected" in demo_app.CSS

    import torch
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(kw))
    monkeypatch.setattr(demo_app, "_served", set())
    monkeypatch.setattr(demo_app, "ALLOW_ANY", False)
    monkeypatch.setattr(demo_app, "DEVICE", "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        other = tmp_path / "other.pt"
        demo_app.main(["--checkpoint", str(tiny_checkpoint), "--checkpoint", str(other)])
        assert torch.get_num_threads() == 1 and launched[-1]["server_name"] == "127.0.0.1"
        assert demo_app.is_served(tiny_checkpoint) and demo_app.is_served(other)
        assert not demo_app.is_served(tmp_path / "third.pt")
        demo_app.main(["--allow_any_checkpoint", "--threads", "2"])
        assert demo_app.ALLOW_ANY and demo_app.is_served(tmp_path / "third.pt") and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------
# The served app


@pytest.fixture(scope="module")
def demo_checkpoint(tiny_checkpoint):
    """The app's start-up model: the tiny one, or $LAYERSKIP_DEMO_CHECKPOINT for a README screenshot."""
    return os.environ.get("LAYERSKIP_DEMO_CHECKPOINT") or str(tiny_checkpoint)


@pytest.fixture(scope="module")
def app_url(demo_checkpoint):
    """The demo served headless on a free local port, on one torch thread as `python demo_app.py` serves it (with
    two, and Chromium busy on the same two cores, the sweep's timings are not the ones a user sees)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        demo = demo_app.build_demo(demo_checkpoint)
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
        yield url
        demo.close()
    finally:
        torch.set_num_threads(threads)


def test_gradio_client_streams_and_matches_generate(app_url, tiny_checkpoint):
    """Over HTTP, /generate streams growing updates whose last text equals generate.py's (and
    layerskip.generate's); three clients at once (queued behind one model lock) all get their own answer."""
    from gradio_client import Client

    def run(prompt, strategy, exit_layer, results, i):
        job = Client(app_url, verbose=False).submit(str(tiny_checkpoint), prompt, strategy, exit_layer, 3, 0.0,
                                                    1.0, 20, 0, True, 0, api_name="/generate")
        for _ in job:  # iterate the stream as a script would
            pass
        results[i] = job.outputs()

    results = {}
    run(CODE, "self_speculative", 2, results, 0)
    outputs = results[0]
    assert len(outputs) >= 4  # streamed, not one final answer
    streamed = [o[2] for o in outputs]
    assert all(a == b[:len(a)] for a, b in zip(streamed, streamed[1:]))  # each update extends the last
    want = expected(tiny_checkpoint, CODE, 20, strategy="self_speculative", exit_layer=2, num_speculations=3)[0]
    assert streamed[-1] == want == generate_py(tiny_checkpoint, CODE, "--exit", 2, "--num_speculations", 3,
                                               "--max_new_tokens", 20, "--seed", 0)

    jobs = [(CODE, "autoregressive", 2), (VERSE, "self_speculative", 1), (VERSE, "early_exit", 3)]
    threads = [threading.Thread(target=run, args=(*job, results, i)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, (prompt, strategy, exit_layer) in enumerate(jobs):
        want = expected(tiny_checkpoint, prompt, 20, strategy=strategy, exit_layer=exit_layer, num_speculations=3)[0]
        assert results[i][-1][2] == want, strategy


def test_api_refuses_unserved_paths_without_telling_whether_they_exist(app_url, tiny_checkpoint, tmp_path):
    """Over HTTP (the public API), /generate and /model_info answer any path outside checkpoints/*.pt and the
    launch-given ones with the same one-line refusal, whether the file exists, is a checkpoint or is missing."""
    from gradio_client import Client
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint, copy)
    client = Client(app_url, verbose=False)
    answers = set()
    for path in (str(copy), str(tmp_path / "missing.pt"), "/etc/passwd", str(ROOT / "README.md")):
        out, stats, text = client.predict(path, VERSE, "self_speculative", 2, 4, 0.0, 1.0, 8, 0, True, 0,
                                          api_name="/generate")
        info = client.predict(path, 64, api_name="/model_info")[1]  # (menu, description, sliders...)
        answers |= {stats, info}
    assert answers == {demo_app.error_html(demo_app.REFUSED)}
    assert str(copy.resolve()) not in demo_app._models


def browser_or_fail():
    """Playwright and Debian's Chromium, or a skip; in CI (CI=true) their absence is a failure."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        message = "needs `pip install playwright` and Debian's chromium (`apt-get install -y chromium`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return chromium


@pytest.fixture
def page(app_url):
    """A 1400x1000 Chromium page (Debian's, through Playwright) on the served app."""
    chromium = browser_or_fail()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)  # a loaded CI machine is slow; the test waits, it does not time
            page.goto(app_url)
            yield page
        finally:
            browser.close()


def screenshot(tmp_path, name):
    """Where a screenshot goes: $LAYERSKIP_SCREENSHOTS/name (docs/ for the README) or a temporary file."""
    return os.path.join(os.environ.get("LAYERSKIP_SCREENSHOTS") or tmp_path, name)


def test_browser_shows_coloured_tokens_stats_and_lens(page, demo_checkpoint, tmp_path):
    """In Chromium: the model's settings fill the controls, Generate sits above the fold; type a prompt, press
    Generate, and see accepted, verifier and struck-through rejected tokens reading as the generated text, the
    stats cards, and the logit lens; hiding rejected drafts hides their legend entry too. Screenshot: demo.png."""
    model, tok = demo_app.get_model(demo_checkpoint)
    s = demo_app.speculation(model)  # the app starts from the stored recommendation, or exit L//4 and d=4
    want, g = expected(demo_checkpoint, SHOWN, 64, strategy="self_speculative", **s)
    shot = screenshot(tmp_path, "demo.png")
    L, top = model.params.n_layers, min(demo_app.MAX_NEW_TOKENS, model.params.max_seq_len - 1)
    page.wait_for_selector(f"#exit_layer input[type=range][max='{L}']")
    page.wait_for_selector(f"#max_new input[type=range][max='{top}']")  # the context window bounds it
    page.wait_for_function("([e, d]) => document.querySelector('#exit_layer input[type=number]').value == e"
                           " && document.querySelector('#num_spec input[type=number]').value == d",
                           arg=[s["exit_layer"], s["num_speculations"]])
    box = page.locator("#go").bounding_box()
    assert box["y"] + box["height"] <= 1000  # above the fold
    page.fill("#prompt textarea", SHOWN)
    page.click("#go")
    page.wait_for_selector("#stats .ls-status:text('done')", timeout=120_000)
    counts = {k: page.locator(f"#out .ls-tok.{k}").count() for k in ("accepted", "verifier", "rejected")}
    assert counts == {"accepted": g.accepted, "verifier": g.rounds, "rejected": g.drafted - g.accepted}
    assert min(counts.values()) > 0
    assert page.locator("#out .ls-tok.rejected").first.evaluate(
        "e => getComputedStyle(e).textDecorationLine") == "line-through"
    shown = page.locator("#out .ls-text").evaluate(
        "e => { const c = e.cloneNode(true); c.querySelectorAll('.rejected').forEach(r => r.remove());"
        " return c.textContent; }")
    assert shown == tok.decode(tok.encode(SHOWN)) + want
    stats = page.locator("#stats").inner_text()
    assert "acceptance rate" in stats and f"{g.accepted / g.drafted:.0%}" in stats and "tokens/s" in stats
    page.get_by_role("tab", name="Logit lens").click()
    page.wait_for_selector("#lens_out tr.exit")  # filled in after generation, chosen exit marked
    page.screenshot(path=shot, full_page=True)
    assert page.locator("#out .key.rejected").is_visible()
    page.locator("label:has-text('show rejected drafts')").click()  # hide them: pure CSS, no new run
    page.wait_for_function("() => getComputedStyle(document.querySelector('#out .ls-tok.rejected'))"
                           ".display === 'none'")
    assert page.locator("#out .key.rejected").is_hidden() and page.locator("#out .key.accepted").is_visible()
    assert os.path.getsize(shot) > 20_000

    label, other = next((label, path) for label, path in demo_app.menu([demo_checkpoint])  # another model: its
                        if demo_app.resolve(path).resolve() != demo_app.resolve(demo_checkpoint).resolve())  # settings
    model, _ = demo_app.get_model(other)
    s = demo_app.speculation(model)
    page.click("#model input")
    page.get_by_role("option", name=label).click()
    page.wait_for_selector(f"#info :text('{Path(other).name}')")
    page.wait_for_selector(f"#exit_layer input[type=range][max='{model.params.n_layers}']")
    assert [page.locator(f"#{c} input[type=number]").input_value() for c in ("exit_layer", "num_spec", "threshold")] \
        == [str(s["exit_layer"]), str(s["num_speculations"]), str(s["draft_threshold"] or 0)]


def test_browser_stop_says_so_and_the_sweep_plots_by_layer(page, demo_checkpoint, tmp_path, monkeypatch):
    """In Chromium: Stop during a generation leaves the text on screen and says it stopped after that many tokens
    (screenshot demo_stopped.png); the exit-layer sweep shows its progress, then medians per exit in layer
    order with their range and the E=L sanity line (screenshot demo_sweep.png)."""
    model, _ = demo_app.get_model(demo_checkpoint)
    L = model.params.n_layers
    page.wait_for_selector(f"#exit_layer input[type=range][max='{L}']")
    page.fill("#prompt textarea", SHOWN)
    render = demo_app.render_text

    def slowly(*args, **kwargs):  # rounds a person can see, so that Stop lands mid-way on any machine (the
        time.sleep(0.2)           # drawing is not part of the timed decoding)
        return render(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(demo_app, "render_text", slowly)
        page.click("#go")
        page.wait_for_function("() => +(document.querySelector('#stats .ls-status').textContent"
                               ".match(/generating… round (\\d+)/) || [0, 0])[1] >= 6")
        page.click("#stop")
        page.wait_for_selector("#stats .ls-status:text('stopped')")
    status = page.locator("#stats .ls-status").inner_text()
    tokens = int(page.locator("#stats .card .v").first.inner_text())
    assert re.fullmatch(rf"stopped: Stop pressed after {tokens} new tokens \(\d+ rounds\).*", status), status
    assert 0 < tokens < 64 and page.locator("#out .ls-tok.accepted, #out .ls-tok.verifier").count() == tokens
    page.screenshot(path=screenshot(tmp_path, "demo_stopped.png"))

    page.get_by_role("tab", name="Exit-layer sweep").click()
    page.click("#sweep")
    page.wait_for_selector("#sweep_note progress", timeout=120_000)  # progress while it runs
    page.wait_for_selector("#sweep_note .ls-status:text('done')", timeout=300_000)
    note = page.locator("#sweep_note").inner_text()
    assert "Sanity check: exit" in note and "median" in note
    exits = page.locator("#sweep_note table tr td:first-child").all_inner_texts()
    assert exits == [str(E) for E in demo_app.sweep_exits(L)]
    page.wait_for_selector("#sweep_plot canvas, #sweep_plot svg")
    page.locator("#sweep").evaluate("e => e.scrollIntoView()")  # the plot and the note at the top
    page.screenshot(path=screenshot(tmp_path, "demo_sweep.png"))
