"""The Gradio demo: its event functions called directly, the served app driven by gradio_client, and the page
driven in a real browser (Debian's Chromium through Playwright)."""

import os
import re
import shutil
import subprocess
import sys
import threading
from html import unescape

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
    }
    for message, args in cases.items():
        updates = list(demo_app.generate(*args))
        assert len(updates) == 1 and 'class="ls-error"' in updates[0][1] and message in updates[0][1], message
    assert "no checkpoint chosen" in demo_app.compare("", VERSE) and "ls-error" in demo_app.lens(ck, "")
    df, note = demo_app.sweep(str(corrupt), VERSE)
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
    df, note = demo_app.sweep(ck, VERSE, 4, 16)
    assert list(df.exit_layer.unique()) == ["1", "2", "3", "4"] and len(df) == 8
    acc = df[df.metric == "acceptance rate"].value
    assert acc.between(0, 1).all() and acc.iloc[-1] == 1.0  # exit L drafts with the full model: all accepted
    assert "Fastest: exit layer" in note


# ---------------------------------------------------------------------------------------------------------
# The served app


@pytest.fixture(scope="module")
def demo_checkpoint(tiny_checkpoint):
    """The app's start-up model: the tiny one, or $LAYERSKIP_DEMO_CHECKPOINT for a README screenshot."""
    return os.environ.get("LAYERSKIP_DEMO_CHECKPOINT") or str(tiny_checkpoint)


@pytest.fixture(scope="module")
def app_url(demo_checkpoint):
    """The demo served headless on a free local port."""
    demo = demo_app.build_demo(demo_checkpoint)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url
    demo.close()


def test_gradio_client_streams_and_matches_generate(app_url, tiny_checkpoint):
    """Over HTTP, /generate streams growing updates whose last text equals generate.py's (and
    layerskip.generate's); three clients at once (queued behind one model lock) all get their own answer."""
    from gradio_client import Client

    def run(prompt, strategy, exit_layer, results, i):
        job = Client(app_url, verbose=False).submit(str(tiny_checkpoint), prompt, strategy, exit_layer, 3, 0.0,
                                                    1.0, 20, 0, True, api_name="/generate")
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


def test_browser_shows_coloured_tokens_stats_and_lens(app_url, demo_checkpoint, tmp_path):
    """In Chromium: type a prompt, press Generate, and see accepted, verifier and struck-through rejected
    tokens reading as the generated text, the stats cards, and the logit lens; screenshot to
    $LAYERSKIP_SCREENSHOT (docs/demo.png for the README) or a temporary file."""
    chromium = browser_or_fail()
    from playwright.sync_api import sync_playwright

    model, tok = demo_app.get_model(demo_checkpoint)
    rec = getattr(model, "metadata", {}).get("recommended", {})  # the app starts from a stored recommendation
    want, g = expected(demo_checkpoint, CODE, 64, strategy="self_speculative", exit_layer=rec.get("exit_layer", 2),
                       num_speculations=rec.get("num_speculations", 4))
    shot = os.environ.get("LAYERSKIP_SCREENSHOT") or str(tmp_path / "demo.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)  # a loaded CI machine is slow; the test waits, it does not time
            page.goto(app_url)
            L = model.params.n_layers
            page.wait_for_selector(f"#exit_layer input[type=range][max='{L}']")  # the slider fits the model's L
            page.fill("#prompt textarea", CODE)
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
            assert shown == tok.decode(tok.encode(CODE)) + want
            stats = page.locator("#stats").inner_text()
            assert "acceptance rate" in stats and f"{g.accepted / g.drafted:.0%}" in stats and "tokens/s" in stats
            page.get_by_role("tab", name="Logit lens").click()
            page.wait_for_selector("#lens_out tr.exit")  # filled in after generation, chosen exit marked
            page.screenshot(path=shot, full_page=True)
            page.locator("label:has-text('show rejected drafts')").click()  # hide them: pure CSS, no new run
            page.wait_for_function("() => getComputedStyle(document.querySelector('#out .ls-tok.rejected'))"
                                   ".display === 'none'")
        finally:
            browser.close()
    assert os.path.getsize(shot) > 20_000
