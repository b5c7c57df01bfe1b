"""docs/tutorial.md runs and prints what it shows; docs/exercises.md's checkers pass on the reference solutions and
fail on a planted wrong answer to each exercise."""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from functools import partial

import pytest

from conftest import ROOT


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mt = load(ROOT / "docs" / "make_tutorial.py", "make_tutorial")
EXERCISES = ROOT / "tests" / "exercises"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # a small model on a busy machine: one thread is far faster
EXERCISE_FILES = sorted(path.name for path in EXERCISES.glob("test_ex*.py"))
PLANTED = load(EXERCISES / "planted_wrong.py", "planted")


def tutorial():
    return mt.parse(mt.DOC.read_text())


def step(items, number):
    """The blocks of the tutorial's section `number`."""
    return [b for b in mt.blocks(items) if b.heading.startswith(f"{number}.")]


# ---------------------------------------------------------------------------------------------------------
# The tutorial


def test_every_block_runs_in_the_quick_mode_and_prints_what_the_document_shows():
    """All blocks run top to bottom in a fresh process (TUTORIAL_FAST=1: fewer steps, prompts, samples) and every
    untagged block (formulas, logit lens, greedy decoding, the hand-made round) prints exactly the document's
    output. Writes only to a temporary folder."""
    proc = subprocess.run([sys.executable, "docs/make_tutorial.py", "--check", "--fast"], cwd=ROOT, env=ONE_THREAD,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    n = len(mt.blocks(tutorial()))
    exact = sum(b.tag == "" for b in mt.blocks(tutorial()))
    assert f"{n} blocks ran" in proc.stdout and f"{exact} compared exactly" in proc.stdout and "0 differ" in proc.stdout


def test_the_formula_steps_and_the_hand_made_round_are_compared_in_the_quick_mode():
    """Steps 2 and 3 (eq. 1-6) and step 6 (the round by hand, the loop, greedy == autoregressive) are untagged
    blocks with output in the document, so the quick check compares all of them exactly."""
    items = tutorial()
    for number in (2, 3, 6):
        assert step(items, number) and all(b.tag == "" and b.output for b in step(items, number)), number
    assert "identical to autoregressive decoding: True" in step(items, 6)[-1].output
    assert "the library's first round is ours: True" in step(items, 6)[-1].output


def test_a_changed_formula_fails_the_check(tmp_path):
    """The document cannot rot: with eq. 6's e(l) = l(l+1)/2 changed to l^2/2 in layerskip (patched at start-up of
    the fresh process), both blocks of step 3 print something else than the document, and step 2 does not."""
    (tmp_path / "sitecustomize.py").write_text(
        "import layerskip\n"
        "def early_exit_scale(n_layers, e_scale):\n"
        "    L = n_layers\n"
        "    return [e_scale * l * l / 2 for l in range(L - 1)] + [(L - 1) + e_scale * (L - 2) * (L - 1) / 2]\n"
        "layerskip.early_exit_scale = early_exit_scale\n")
    items = tutorial()
    todo = [mt.blocks(items)[0], mt.Block("L = 32\n", "", "", "L"), step(items, 2)[0]] + step(items, 3)
    outputs, _, _, _ = mt.run(todo, True, tmp_path / "figures", tmp_path / "runs",
                           env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    changed = [b.heading for _, b, _ in mt.differences(todo, outputs, fast=True)]
    assert changed == ["3. The early-exit loss"] * 2


def test_generator_keeps_the_document_and_masks_only_numbers():
    """Parsing and rendering the document gives it back byte for byte (the generator changes outputs only);
    measured lines are compared with their numbers masked."""
    text = mt.DOC.read_text()
    assert mt.render(mt.parse(text)) == text
    assert mt.masked("exit  2:   7.2 ms/token,  9.3x the full model") == "exit #: # ms/token, #x the full model"
    block = mt.Block("", "timing", "1.5 ms\n", "x")
    assert mt.differences([block], ["2.25 ms\n"], fast=False) == []
    assert len(mt.differences([block], ["2.25 s\n"], fast=False)) == 1
    assert mt.differences([block], ["anything\n"], fast=True) == []  # the quick mode does not compare timings


def test_notebook_is_the_document():
    """docs/tutorial.ipynb holds the document's cells and outputs (regenerated with it), after a cell that moves
    to the repository root; so the quick check of the blocks checks the notebook's code too."""
    notebook = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text())
    assert notebook == mt.notebook(tutorial()), "out of date: python docs/make_tutorial.py --notebook"
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code[1:] == [b.code.strip("\n") for b in mt.blocks(tutorial())]
    assert notebook["nbformat"] == 4 and all(c["cell_type"] in ("code", "markdown") for c in notebook["cells"])


def test_committed_figures_exist():
    """Every figure the document shows is committed under docs/tutorial/, and a block writes each of them."""
    text = mt.DOC.read_text()
    for name in ["logit_lens.png", "toy_exit_losses.png", "sampling.png", "choosing_e_and_d.png"]:
        assert f"](tutorial/{name})" in text and f'FIGURES / "{name}"' in text
        assert (ROOT / "docs" / "tutorial" / name).stat().st_size > 10_000


@pytest.mark.skipif(os.environ.get("LAYERSKIP_SLOW") != "1",
                    reason="the full tutorial takes minutes: LAYERSKIP_SLOW=1 python -m pytest tests/test_tutorial.py")
def test_the_full_tutorial_prints_what_the_document_shows():
    """The full run (two toy trainings, 1,000 samples, the speed sweep) prints exactly the document's outputs,
    apart from measured times, which are compared with their numbers masked."""
    proc = subprocess.run([sys.executable, "docs/make_tutorial.py", "--check"], cwd=ROOT, env=ONE_THREAD,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------
# The exercises


def grade(solution, tmp_path) -> dict:
    """{checker file: (passed, failed)} of `pytest tests/exercises --solution solution`, run in a fresh process."""
    report = tmp_path / f"{solution.stem}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXERCISES),
                    "--solution", str(solution), f"--junitxml={report}"], cwd=ROOT, env=ONE_THREAD, capture_output=True,
                   timeout=600)
    counts = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("classname").split(".")[-1] + ".py"
        failed = case.find("failure") is not None or case.find("error") is not None
        passed, n_failed = counts.get(name, (0, 0))
        counts[name] = (passed + (not failed), n_failed + failed)
    return counts


def test_checkers_fail_on_a_planted_wrong_answer_to_each_exercise(tmp_path):
    """Every exercise's checker fails on planted_wrong.py, whose answer to each exercise has one classic mistake.
    (That they pass on reference_solutions.py, the default, the suite shows: it collects tests/exercises.)"""
    wrong = grade(EXERCISES / "planted_wrong.py", tmp_path)
    assert sorted(wrong) == EXERCISE_FILES and len(EXERCISE_FILES) == 7
    for name in EXERCISE_FILES:
        assert wrong[name][1] >= 1, f"{name}: the planted wrong answer passes"


@pytest.mark.parametrize("mistake", PLANTED.TRAINING_LOSS_MISTAKES)
def test_the_training_loss_checker_catches_every_planted_mistake(mistake):
    """Exercise 3's checker fails on each of six ways to get the training forward wrong (rescaling by 1/(1-p), the
    exits unweighted, block 0 never run, exit l read as exit E, one draw per batch, the draw keyed by E)."""
    checker = load(EXERCISES / "test_ex3_training_loss.py", "ex3")
    wrong = partial(PLANTED.wrong_training_loss, mistake=mistake)
    with pytest.raises(AssertionError):
        checker.test_the_same_loss_as_the_models_forward(solved=lambda _: wrong)


def test_template_and_reference_define_the_same_functions():
    """The template a student copies names every function the checkers call, with the reference's parameters."""
    template = load(EXERCISES / "solution_template.py", "template")
    reference = load(EXERCISES / "reference_solutions.py", "reference")
    names = ["layer_dropout_rates", "exit_loss_weights", "training_loss", "greedy_verify", "self_speculative_round",
             "speculative_accept", "predicted_speedup"]
    for name in names:
        assert list(inspect.signature(getattr(template, name)).parameters) == \
               list(inspect.signature(getattr(reference, name)).parameters), name
        assert f"def {name}(" in (ROOT / "docs" / "exercises.md").read_text(), name
