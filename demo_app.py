"""
Watch self-speculative decoding happen: a Gradio app over layerskip.generate_stream.

    python demo_app.py                                   # http://127.0.0.1:7860, the shipped LayerSkip model
    python demo_app.py --checkpoint out/toy/model.pt     # serve this checkpoint too (repeat for several)
    python demo_app.py --host 0.0.0.0 --port 8080        # serve on the network (--share: a gradio.live link)

Every round is drawn as it happens: the drafts the early exit got right (green), the verifier's own token, a
correction (blue) or a bonus token (violet), and the rejected drafts (a red count, or struck through). Beside it:
live statistics, a timed comparison with autoregressive decoding, the logit lens of the paper's Fig. 2a, and
acceptance and speedup by exit layer. The exit, d and stop rule start at the checkpoint's stored setting, and so do
the API's defaults. Here: the flags, the models, the events and the page's layout; demo_views.py draws what the
events show, through demo/templates.html and demo/style.css.

Only checkpoints/*.pt and those given with --checkpoint are served: the page and API are public, and a typed path
must not probe the server's files or fill its memory. The events are methods of Demo over plain values (tests call
them directly); they take the widgets' values as sent, and the settings.Settings made of them refuses a bad one (its
range from settings.RANGES) in one line of plain text. Generation is an API endpoint too:
gradio_client.Client(url).submit(prompt="def f(x):", api_name="/generate").result().
"""
import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Optional

import demo_views as views
import layerskip as ls
from batcher import Batcher, Busy, Models, resolve, shipped, timed
from common import ArgumentParser, int_range, interleaved_runs, plural
from demo_views import REJECTED_VIEWS, fill
from model_io import chat_prompt
from settings import RANGES, STRATEGIES, Range, Settings, recommended

DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # selected at start; the menu lists every checkpoints/*.pt
MAX_NEW_TOKENS = Range(1, 512, whole=True, meaning="the context window may allow fewer")  # per generation
MAX_PROMPT_CHARS = 20_000  # longer prompts are refused before tokenizing; the context window decides the rest
SWEEP_TOKENS, SWEEP_REPEATS, COMPARE_REPEATS = 32, 5, 3  # the sweep's tokens a run; timed passes of sweep, Compare
STOP_RULES = {"fixed": "fixed d", "threshold": "confidence threshold", "cost": "cost model"}  # the API takes the keys
RULE_DEFAULTS = dict(draft_threshold=0.5, draft_cost=0.15, draft_gamma=1.0)  # a rule's boxes where none is stored
RUN_BUTTONS = ("go", "compare", "lens", "sweep")  # disabled until the model panel has loaded
# common.round_pieces' "token" (a round without drafts) as what it is; self-speculative: a bonus after 0 drafts
TOKEN_KIND = {"autoregressive": "full", "early_exit": "early_exit", "self_speculative": "bonus"}


@dataclass
class Config:
    """The demo's flags (main)."""
    checkpoint: list = field(default_factory=lambda: [DEFAULT_CHECKPOINT])  # served too; the first is selected
    allow_any_checkpoint: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "cpu"
    threads: Optional[int] = None
    batch_size: int = 8  # requests decoded together; 1: one at a time
    max_queue: int = 64  # requests that may wait


# ---------------------------------------------------------------------------------------------------------
# The controls' values as a Settings, which checks them against settings.RANGES.


def given(name: str, value, bound: Range):
    """A box's value in its range; an empty box (or an API caller's null) is refused."""
    if value is None:
        raise ValueError(f"{name} is empty: give {bound.span()}")
    return bound.check(name, value)


def read_settings(model, strategy="self_speculative", exit_layer=None, num_speculations=None, stop_rule=None,
                  draft_threshold=None, draft_cost=None, draft_gamma=None, **sampling) -> Settings:
    """The controls as a Settings: strategy, exit, d and stop rule by settings.recommended (none given: the stored
    setting), the values given over it, and sampling (temperature, top_p, seed, the logits processors, eos_id).
    stop_rule, a key of STOP_RULES, says which rule's boxes are read; None reads them all."""
    rule = dict(draft_threshold=draft_threshold, draft_cost=draft_cost, draft_gamma=draft_gamma)  # None: all read
    if stop_rule == "fixed":
        rule = dict(draft_threshold=0, draft_cost=0)  # 0 = off: every round drafts d
    elif stop_rule == "threshold":
        rule = dict(draft_threshold=given("draft_threshold", draft_threshold, RANGES["draft_threshold"]))
    elif stop_rule == "cost":
        rule = dict(draft_cost=given("draft_cost", draft_cost, RANGES["draft_cost"]),
                    draft_gamma=given("draft_gamma", draft_gamma, RANGES["draft_gamma"]))
    elif stop_rule is not None:
        raise ValueError(f"stop_rule must be one of {', '.join(STOP_RULES)}, got {stop_rule!r}")
    if stop_rule in ("threshold", "cost") and not rule[f"draft_{stop_rule}"]:  # its 0 would turn the rule off
        raise ValueError(f"the {stop_rule} stop rule needs draft_{stop_rule} above 0, got 0")
    mine = dict(exit_layer=exit_layer, num_speculations=num_speculations, **rule)
    s = recommended(model, strategy, **{k: mine.get(k) for k in ("exit_layer", "num_speculations", "draft_threshold",
                                                                 "draft_cost", "draft_gamma")})
    s |= {k: v for k, v in mine.items() if v is not None}  # as given: recommended reads 0 as "the default"
    s |= {k: v if k == "eos_id" else given(k, v, RANGES[k]) for k, v in sampling.items()}
    # Settings checks each value against RANGES; Range.check also makes 2.0 the 2 a whole number must be
    return Settings(**{k: RANGES[k].check(k, v) if k in RANGES else v for k, v in s.items()}).check(
        model.params.n_layers)


def control_values(model, exit_layer=None) -> dict:
    """The exit, d and stop-rule controls: the stored setting, or at another exit recommended's defaults there (the
    stored d and rule were tuned at the stored exit); RULE_DEFAULTS in the boxes of the rules not chosen."""
    s = stored = recommended(model, "self_speculative")
    if exit_layer not in (None, stored["exit_layer"]):
        s = recommended(model, "self_speculative", exit_layer)
    rule = "cost" if s.get("draft_cost") else "threshold" if s.get("draft_threshold") else "fixed"
    return dict(exit_layer=s["exit_layer"], num_speculations=s["num_speculations"], stop_rule=rule,
                **{k: s.get(k) or v for k, v in RULE_DEFAULTS.items()})


def failed(error, outputs: int) -> tuple:
    """Bad input: every output left as it is on screen, and why in the error place, one line of plain text (the
    API's callers read it as it is)."""
    import gradio as gr
    return (*[gr.update()] * outputs, " ".join(str(error).split()))


def rule_updates(values: dict, shown_only: bool = False):
    """gr.update()s for (stop rule, threshold, draft cost, gamma): their values and which boxes show (the chosen
    rule's); shown_only: which boxes show, their values kept."""
    import gradio as gr
    rule = values["stop_rule"]
    shown = dict(draft_threshold=rule == "threshold", draft_cost=rule == "cost", draft_gamma=rule == "cost")
    return (gr.update(**({} if shown_only else dict(value=rule))),
            *[gr.update(visible=on, **({} if shown_only else dict(value=values[k]))) for k, on in shown.items()])


def rule_changed(stop_rule):
    """The stop-rule radio: show the boxes of the chosen rule (no model runs)."""
    return rule_updates({"stop_rule": stop_rule}, shown_only=True)[1:]


def sweep_exits(L: int) -> list[int]:
    """The exits the sweep times: every one; above 16 layers the first half (deeper drafts cost too much to pay
    off) and exit L, the sanity check."""
    return list(range(1, L + 1)) if L <= 16 else list(range(1, L // 2 + 1)) + [L]


def example_prompts() -> list[str]:
    """A few short HumanEval problems (without their leading blank lines) and Shakespeare passages."""
    from data.prepare import load_prompts
    code = [re.sub(r"\A(?:[ \t]*\n)+", "", p) for p in sorted(load_prompts("humaneval"), key=len)[:3]]
    return code + ["\n".join(p.splitlines()[:3]) + "\n" for p in load_prompts("shakespeare")[:3]]


def timing(s: Settings) -> dict:
    """A Settings as common.interleaved_runs' keyword arguments (it gives the EOS and seed 0 itself)."""
    return {k: v for k, v in s.as_dict().items() if k not in ("eos_id", "seed")}


# ---------------------------------------------------------------------------------------------------------
# The events.


class Demo:
    """The app: its config, its models, its batcher (None with batch_size 1), its events and page."""

    def __init__(self, config: Config = None):
        self.config = config or Config()
        self.models = Models(self.config.checkpoint, self.config.allow_any_checkpoint, self.config.device)
        self.batcher = Batcher(self.config.batch_size, self.config.max_queue) if self.config.batch_size > 1 else None

    def switch_model(self, checkpoint, loaded=None, max_new_tokens=64):
        """The model menu: select `checkpoint`, describe it, set the controls to its setting (control_values) and
        enable the run buttons; gr.update()s for model_outputs (wire). One that fails leaves `loaded`, and says why."""
        import gradio as gr
        try:
            model, tok = self.models.get(checkpoint)
        except (ValueError, OSError) as e:
            return (gr.update(**({"value": loaded} if loaded else {})), loaded,
                    fill("error", message=f"{e}{f' Still using {loaded}.' if loaded else ''}"),
                    *[gr.update()] * (7 + len(RUN_BUTTONS)))
        v, L = control_values(model), model.params.n_layers
        top = min(MAX_NEW_TOKENS.high, model.params.max_seq_len - 1)  # the prompt takes one
        try:
            new = min(given("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS), top)
        except ValueError:  # the box holds a bad value: the default replaces it
            new = min(64, top)
        checkpoint = str(checkpoint).strip()
        return (gr.update(value=checkpoint), checkpoint,
                views.describe(resolve(checkpoint).name, model, tok, read_settings(model)),
                gr.update(maximum=L, value=v["exit_layer"], label=f"exit layer E (1–{L})"),
                gr.update(value=v["num_speculations"]), *rule_updates(v), gr.update(maximum=top, value=new),
                *[gr.update(interactive=True)] * len(RUN_BUTTONS))

    def exit_changed(self, checkpoint, exit_layer):
        """The exit box: d and the stop rule follow it (control_values). gr.update()s for (d, stop rule, threshold,
        draft cost, gamma); none while it holds no exit of a model in memory (this event skips the model queue)."""
        import gradio as gr
        loaded = self.models.is_served(checkpoint) and self.models.loaded.get(str(resolve(checkpoint).resolve()))
        try:
            E = read_settings(loaded[0], "early_exit", given("exit_layer", exit_layer, RANGES["exit_layer"]))
        except (TypeError, ValueError):  # not loaded, or not an exit of this model
            return (gr.update(),) * 5
        v = control_values(loaded[0], E.exit_layer)
        _, *boxes = rule_updates(v, shown_only=True)  # a box shown takes the setting's value; a hidden one keeps its
        return (gr.update(value=v["num_speculations"]), gr.update(value=v["stop_rule"]),
                *[box | ({"value": v[k]} if box["visible"] else {}) for k, box in zip(RULE_DEFAULTS, boxes)])

    def start(self, checkpoint, prompt, max_new_tokens, strategy, drafting, chat=False, **sampling):
        """(model, tokenizer, prompt ids, n, Settings) of a run, every control's value checked (read_settings) and
        the prompt and the context window too (generate_stream checks at the call and runs nothing): bad input
        raises a ValueError."""
        if not isinstance(prompt, str) or not prompt.strip():  # the library sees token ids, not text
            raise ValueError("the prompt is empty: type some text or pick an example")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(prompt):,} characters; the demo takes at most {MAX_PROMPT_CHARS:,}")
        model, tok = self.models.get(checkpoint)
        n = given("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
        s = read_settings(model, strategy, *drafting, eos_id=tok.stop_ids, **sampling)
        if chat not in (True, False):
            raise ValueError(f"chat is true or false, got {chat!r}")
        ids = chat_prompt(tok, prompt)[1] if chat else tok.encode(prompt)  # the model's own template
        ls.generate_stream(model, ids, n, s)
        return model, tok, ids, n, s

    def generate(self, checkpoint, prompt, strategy="self_speculative", exit_layer=None, num_speculations=None,
                 stop_rule=None, draft_threshold=None, draft_cost=None, draft_gamma=None, temperature=0.0, top_p=1.0,
                 max_new_tokens=64, seed=0, rejected="count", repetition_penalty=1.0, no_repeat_ngram_size=0,
                 chat=False, control=None):
        """Generate: yields (text HTML, stats HTML, plain continuation, error text) after every round. Stop sets
        control["stop"] (the session's): decoding ends after the round on screen and says so. Bad input runs
        nothing: one frame leaves the outputs as they are, with the reason in the error place."""
        control = {} if control is None else control
        control["stop"] = False
        try:
            if not isinstance(rejected, str) or rejected not in REJECTED_VIEWS:
                raise ValueError(f"rejected must be one of {', '.join(REJECTED_VIEWS)}, got {rejected!r}")
            model, tok, ids, n, s = self.start(
                checkpoint, prompt, max_new_tokens, strategy,
                (exit_layer, num_speculations, stop_rule, draft_threshold, draft_cost, draft_gamma), chat,
                temperature=temperature, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size)
            # the batcher joins this request into a batch
            stream = (self.batcher.submit(model, ids, n, s) if self.batcher else
                      timed(ls.generate_stream(model, ids, n, s)))
        except (ValueError, OSError, Busy) as e:  # Busy: the batcher's waiting line is full
            yield failed(e, 3)
            return
        prompt_text = tok.decode(ids)  # what the model sees; the pieces continue exactly this text

        def frame(pieces, g, status, text=""):
            return (views.render_text(prompt_text, pieces, s.strategy, rejected),
                    views.render_stats(g, s.strategy, status), text, "")

        pieces, text, g, eos = [], "", ls.Generation([], 0.0, 0, 0, 0), False
        yield frame(pieces, g, "generating…")
        end = min(model.params.max_seq_len, len(ids) + n)  # where generate_stream stops
        for pieces, text, g, eos in views.rounds_as_pieces(stream, tok, ids, end, TOKEN_KIND[s.strategy]):
            yield frame(pieces, g, f"generating… round {g.rounds}", text)
            if control["stop"]:  # checked before decoding the next round: the frame on screen is the last
                break
        if control["stop"]:
            why = f"stopped: Stop pressed after {len(g.tokens)} new tokens ({plural(g.rounds, 'round')})"
        else:
            why = "done: stopped " + ("at the end-of-text token" if eos else "at the context window" if
                                      len(ids) + len(g.tokens) >= model.params.max_seq_len else
                                      f"after {n} new tokens")
        yield frame(pieces, g, views.ending(why, s, pieces), text)

    def compare(self, checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None,
                draft_threshold=None, draft_cost=None, draft_gamma=None, max_new_tokens=64, repetition_penalty=1.0,
                no_repeat_ngram_size=0):
        """Greedy autoregressive vs self-speculative decoding at the controls' setting, COMPARE_REPEATS passes of
        both, interleaved as bench.py times (common.interleaved_runs): (the table HTML, error text)."""
        try:
            model, tok, ids, n, s = self.start(
                checkpoint, prompt, max_new_tokens, "self_speculative",
                (exit_layer, num_speculations, stop_rule, draft_threshold, draft_cost, draft_gamma),
                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
        except (ValueError, OSError) as e:
            return failed(e, 1)
        runs = {"AR": [], "SS": []}
        variants = {"AR": (model, tok, timing(replace(s, strategy="autoregressive"))), "SS": (model, tok, timing(s))}
        for _, _, name, g in interleaved_runs(variants, [prompt], n, COMPARE_REPEATS):
            runs[name].append(g)
        return views.compare_table(runs, s, COMPARE_REPEATS), ""

    def lens(self, checkpoint, prompt, text="", exit_layer=None):
        """The logit lens (paper Fig. 2a) of prompt + text at exit E (None: the stored one): (HTML, error text)."""
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("the prompt is empty: generate something first")
            model, tok = self.models.get(checkpoint)
            E = (control_values(model)["exit_layer"] if exit_layer is None else
                 read_settings(model, "early_exit", exit_layer).exit_layer)
            prompt_ids = tok.encode(prompt)
            ids = tok.encode(tok.decode(prompt_ids) + (text if isinstance(text, str) else ""))
            ids = ids[:model.params.max_seq_len]
            lens = ls.logit_lens(model, ids)
        except (ValueError, OSError) as e:
            return failed(e, 1)
        return views.lens_table(lens, tok, ids, len(prompt_ids), E), ""

    def sweep(self, checkpoint, prompt, exit_layer=None, num_speculations=None, stop_rule=None, draft_threshold=None,
              draft_cost=None, draft_gamma=None, max_new_tokens=SWEEP_TOKENS, repetition_penalty=1.0,
              no_repeat_ngram_size=0, control=None):
        """The exit-layer sweep, a generator: greedy self-speculative decoding with the controls' d, stop rule and
        processors at each exit of sweep_exits, SWEEP_REPEATS passes as bench.py times (common.interleaved_runs).
        The draft cost is a draft's at the controls' exit E0; at exit E it is priced x E / E0 (a draft runs E
        blocks). Yields (acceptance plot, speedup plot, note, error text) after every run; Stop ends it."""
        control = {} if control is None else control
        control["stop"] = False
        try:
            model, tok, ids, n, s = self.start(
                checkpoint, prompt, max_new_tokens, "self_speculative",
                (exit_layer, num_speculations, stop_rule, draft_threshold, draft_cost, draft_gamma),
                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
        except (ValueError, OSError) as e:
            yield failed(e, 3)
            return
        L, n, E0 = model.params.n_layers, min(n, SWEEP_TOKENS), s.exit_layer
        variants = {"AR": replace(s, strategy="autoregressive")} | {  # the draft cost priced by the blocks run
            E: replace(s, exit_layer=E, draft_cost=s.draft_cost and min(1.0, s.draft_cost * E / E0))
            for E in sweep_exits(L)}
        times, acceptance = {name: {} for name in variants}, {}  # run -> pass -> seconds/token; exit -> acceptance

        def results(status, progress=None):
            return (*views.sweep_results(times, acceptance, L, n, views.sweep_setting(s), status, SWEEP_REPEATS,
                                         progress), "")

        runs = interleaved_runs({k: (model, tok, timing(v)) for k, v in variants.items()}, [prompt], n, SWEEP_REPEATS)
        for done, (r, _, name, g) in enumerate(runs, 1):
            times[name][r] = g.time_per_token
            if name != "AR":
                acceptance[name] = g.acceptance_rate  # greedy: the same each pass
            yield results(f"timing… pass {r + 1} of {SWEEP_REPEATS}, " + ("autoregressive" if name == "AR" else
                                                                          f"exit {name} of {L}"),
                          (done, SWEEP_REPEATS * len(variants)))
            if control["stop"]:  # checked before the next run: the frame on screen is the last measured
                runs.close()
                yield results(f"stopped: Stop pressed in pass {r + 1} of {SWEEP_REPEATS}; the medians of what it "
                              "measured")
                return
        yield results("done")

    @staticmethod
    def stop(control):
        """The Stop button: the session's generation or sweep stops after its current step."""
        control["stop"] = True

    # -----------------------------------------------------------------------------------------------------
    # The page: a grid (demo/style.css) of the prompt, the output, the settings and the tabs.

    def menu(self) -> list[tuple[str, str]]:
        """The model menu, (label, path): the shipped checkpoints/*.pt, then the other launch-given ones."""
        items = [(f"{p.stem} (shipped)", f"checkpoints/{p.name}") for p in shipped()]
        known = {resolve(path).resolve() for _, path in items}
        return items + [(str(c), str(c)) for c in self.config.checkpoint if resolve(c).resolve() not in known]

    def build(self):
        """The Blocks app. The controls (and so the API's defaults) start at the first checkpoint's stored setting
        (control_values; one that does not load: exit 1, d = 4); the run buttons wait for the model panel."""
        import gradio as gr
        from types import SimpleNamespace
        choices, first = self.menu(), resolve(self.config.checkpoint[0]).resolve()
        selected = next((path for _, path in choices if resolve(path).resolve() == first), self.config.checkpoint[0])
        try:
            model, _ = self.models.get(self.config.checkpoint[0])
            init = dict(control_values(model), L=model.params.n_layers,
                        max_new=min(64, MAX_NEW_TOKENS.high, model.params.max_seq_len - 1))
        except (ValueError, OSError):
            init = dict(exit_layer=1, num_speculations=4, stop_rule="fixed", **RULE_DEFAULTS, L=32, max_new=64)
        with gr.Blocks(title="LayerSkip: self-speculative decoding") as blocks:
            # the style as a page element: launch(css=...) would need every caller to pass it
            gr.HTML(f"<style>{views.CSS}</style>", elem_id="ls-css")
            gr.HTML(fill("head"), padding=False)
            ui = SimpleNamespace(control=gr.State({}),  # per session: Stop sets control["stop"], runs read it
                                 loaded=gr.State(None))  # per session: the last model that loaded
            with gr.Row(elem_id="main"):
                prompt_and_output(ui, choices, selected, self.config.allow_any_checkpoint)
                settings_and_tabs(ui, init)
            self.wire(blocks, ui)
        blocks.queue(max_size=self.config.max_queue, default_concurrency_limit=1)
        return blocks

    def wire(self, blocks, ui):
        """The events, which check every value themselves (preprocess=False)."""
        model = dict(concurrency_id="model", preprocess=False)  # one queue for all that runs the model
        private = dict(api_visibility="private")
        rule = [ui.stop_rule, ui.threshold, ui.draft_cost, ui.draft_gamma]
        outputs = [ui.checkpoint, ui.loaded, ui.info, ui.exit_layer, ui.num_spec, *rule, ui.max_new,
                   *[getattr(ui, name) for name in RUN_BUTTONS]]
        ui.checkpoint.input(self.switch_model, [ui.checkpoint, ui.loaded, ui.max_new], outputs, api_name="model_info",
                            **model)
        if self.config.allow_any_checkpoint:
            ui.load.click(self.switch_model, [ui.path, ui.loaded, ui.max_new], outputs, **private, **model)
        blocks.load(self.switch_model, [ui.checkpoint, ui.loaded, ui.max_new], outputs, **private, **model)
        free = dict(private, concurrency_limit=None, preprocess=False)  # runs no model: no queue
        ui.exit_layer.input(self.exit_changed, [ui.checkpoint, ui.exit_layer], [ui.num_spec, *rule], **free)
        ui.stop_rule.input(rule_changed, [ui.stop_rule], rule[1:], **free)
        drafting, processors = [ui.exit_layer, ui.num_spec, *rule], [ui.repetition, ui.ngram]
        gen = dict(inputs=[ui.checkpoint, ui.prompt, ui.strategy, *drafting, ui.temperature, ui.top_p, ui.max_new,
                           ui.seed, ui.rejected, *processors, ui.chat, ui.control],
                   outputs=[ui.out, ui.stats, ui.text, ui.error], show_progress="hidden")
        # generation: one request at a time (--batch_size 1), or as many at once as may wait, joined into batches
        gen |= model if self.batcher is None else dict(concurrency_id="generate",
                                                       concurrency_limit=self.config.max_queue, preprocess=False)
        generated = ui.go.click(self.generate, api_name="generate", **gen)
        ui.prompt.submit(self.generate, **private, **gen)
        lens = dict(inputs=[ui.checkpoint, ui.prompt, ui.text, ui.exit_layer], outputs=[ui.lens_out, ui.lens_error])
        lens_after = generated.then(self.lens, show_progress="hidden", **private, **lens, **model)
        cancel = [lens_after, ui.lens.click(self.lens, api_name="logit_lens", **lens, **model),
                  ui.compare.click(self.compare, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors],
                                   [ui.compare_out, ui.compare_error], api_name="compare", **model)]
        ui.sweep.click(self.sweep, [ui.checkpoint, ui.prompt, *drafting, ui.max_new, *processors, ui.control],
                       [ui.acceptance_plot, ui.speedup_plot, ui.sweep_note, ui.sweep_error], api_name="sweep",
                       show_progress="hidden", **model)
        # generation and the sweep stop themselves after the step on screen, and say so; the rest is cancelled
        ui.stop.click(self.stop, [ui.control], None, concurrency_limit=None, cancels=cancel, **private)
        # the view of rejected drafts (and their legend entry) is a class on the output: no new decoding
        ui.rejected.change(None, [ui.rejected], None, js="(v) => document.querySelectorAll('#out .ls-out').forEach("
                           "e => { e.classList.remove('rej-count', 'rej-text', 'rej-hidden'); "
                           "e.classList.add('rej-' + v); })")


def button(label, elem_id, **kw):
    import gradio as gr
    return gr.Button(label, elem_id=elem_id, interactive=elem_id not in RUN_BUTTONS, **kw)


def error_box(elem_id):
    """Where an event's bad input is said: one line of plain text (the API's last output), hidden while empty."""
    import gradio as gr
    return gr.Textbox("", placeholder=" ", show_label=False, container=False, interactive=False, lines=1,
                      max_lines=4, elem_id=elem_id, elem_classes=["ls-errbox"])


def box(value, label, name, elem_id=None, high=None, **kw):
    """A number box over the range of setting `name` (RANGES; its off value included); Gradio's sliders clamp."""
    import gradio as gr
    r = MAX_NEW_TOKENS if name == "max_new_tokens" else RANGES[name]
    return gr.Number(value, label=label, minimum=r.low if r.off is None else r.off, maximum=high or r.high,
                     step=1 if r.whole else 0.05, precision=0 if r.whole else None, elem_id=elem_id or name,
                     min_width=100, **kw)


def prompt_and_output(ui, choices, selected, allow_any):
    """The model menu, the prompt (the first example in it), the buttons; the error place, statistics, output."""
    import gradio as gr
    ui.examples = example_prompts()
    with gr.Column(elem_id="col_prompt"):
        ui.checkpoint = gr.Dropdown(choices, value=selected, label="model", show_label=False, container=False,
                                    allow_custom_value=True, elem_id="model")
        if allow_any:
            with gr.Row():
                ui.path = gr.Textbox(label="or a checkpoint path", placeholder="out/toy/model.pt", scale=3)
                ui.load = gr.Button("Load", scale=1, min_width=60)
        ui.info = gr.HTML(elem_id="info", padding=False)
        ui.prompt = gr.Textbox(ui.examples[0], label="prompt", lines=4, max_lines=6, elem_id="prompt")
        with gr.Row():
            ui.go, ui.stop = button("Generate", "go", variant="primary"), button("Stop", "stop", variant="stop")
    with gr.Column(elem_id="col_out"):
        ui.error = error_box("error")  # bad input: said here, the output stays as it was
        ui.stats = gr.HTML(views.render_stats(ls.Generation([], 0.0, 0, 0, 0), "self_speculative", "press Generate"),
                           elem_id="stats", padding=False)
        ui.out = gr.HTML(views.render_text("", [], "self_speculative"), elem_id="out", padding=False)
        ui.rejected = gr.Radio([(label, key) for key, label in REJECTED_VIEWS.items()], value="count",
                               label="rejected drafts, shown as", elem_id="rejected")
        with gr.Accordion("plain text", open=False):
            ui.text = gr.Textbox(label="generated continuation", lines=4, buttons=["copy"], elem_id="text")


def settings_and_tabs(ui, init):
    """The decoding settings from `init` (Demo.build), the stop rule and its boxes, the logits processors, the
    examples; the tabs of compare, logit lens and sweep."""
    import gradio as gr
    rule = init["stop_rule"]
    with gr.Column(elem_id="col_settings"):
        ui.strategy = gr.Radio(list(STRATEGIES), value="self_speculative", label="strategy", elem_id="strategy")
        ui.chat = gr.Checkbox(False, label="chat: the prompt as a user message, in the model's chat template",
                              elem_id="chat", container=False)
        with gr.Row():  # the exit, d, and the boxes of the stop rule chosen below
            ui.exit_layer = box(init["exit_layer"], f"exit layer E (1–{init['L']})", "exit_layer", high=init["L"])
            ui.num_spec = box(init["num_speculations"], "drafts per round d (at most)", "num_speculations", "num_spec")
            ui.threshold = box(init["draft_threshold"], "draft threshold", "draft_threshold", "threshold",
                               visible=rule == "threshold")
            ui.draft_cost = box(init["draft_cost"], "draft cost (verifications)", "draft_cost", visible=rule == "cost")
            ui.draft_gamma = box(init["draft_gamma"], "calibration γ", "draft_gamma", visible=rule == "cost")
        ui.stop_rule = gr.Radio([(label, key) for key, label in STOP_RULES.items()], value=rule,
                                label="stop rule: when a round stops drafting", elem_id="stop_rule",
                                info="fixed d: always d drafts · confidence threshold: stop at a draft less sure "
                                     "than that · cost model: stop once one more draft is not worth its cost")
        with gr.Row():
            ui.max_new = box(init["max_new"], "max new tokens", "max_new_tokens", "max_new")
            ui.temperature = box(0, "temperature (0 = greedy)", "temperature")
            ui.top_p, ui.seed = box(1, "top-p", "top_p"), box(0, "seed", "seed")
        with gr.Accordion("logits processors: curb loops (drafts and verifier alike)", open=False,
                          elem_id="processors"), gr.Row():
            ui.repetition = box(1.0, "repetition penalty (1 = off)", "repetition_penalty")
            ui.ngram = box(0, "no-repeat n-gram size (0 = off)", "no_repeat_ngram_size")
        gr.Examples(ui.examples, inputs=[ui.prompt], label="examples: HumanEval and Shakespeare")
    with gr.Column(elem_id="col_tabs"):
        with gr.Tab("Compare with autoregressive"):
            ui.compare, ui.compare_error = button("Run both (greedy)", "compare"), error_box("compare_error")
            ui.compare_out = gr.HTML(elem_id="compare_out")
        with gr.Tab("Logit lens"):
            ui.lens, ui.lens_error = button("Show the logit lens of the text", "lens"), error_box("lens_error")
            ui.lens_out = gr.HTML(elem_id="lens_out")
        with gr.Tab("Exit-layer sweep"):
            ui.sweep = button(f"Sweep exit layers ({SWEEP_REPEATS} passes × {SWEEP_TOKENS} tokens)", "sweep")
            ui.sweep_error = error_box("sweep_error")
            with gr.Row():  # measured exits only, as dots: a line would invent the exits between them
                plot = dict(x="exit_layer", x_title="exit layer E", x_axis_format="d", height=220, min_width=200)
                ui.acceptance_plot = gr.ScatterPlot(y="acceptance", y_title="acceptance rate", y_lim=[0, 1.08],
                                                    label="acceptance rate by exit", elem_id="acceptance_plot", **plot)
                ui.speedup_plot = gr.ScatterPlot(y="speedup", y_title="speedup ×", label="speedup by exit",
                                                 elem_id="speedup_plot", **plot)
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
    parser.add_argument("--threads", type=int_range(1, os.cpu_count() or 1), help="torch CPU threads (default on "
                        "CPU: 1; with another process busy, 2 made decoding 15-50x slower)")
    parser.add_argument("--batch_size", type=int_range(1, 256), default=Config.batch_size,
                        help=f"generation requests that arrive together decode as one batch of at most this many "
                             f"(default {Config.batch_size}; 1 = one at a time)")
    parser.add_argument("--max_queue", type=int_range(1, 10_000), default=Config.max_queue,
                        help=f"requests that may wait at once; more are refused as busy (default {Config.max_queue})")
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
