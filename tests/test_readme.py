"""What the README states that the code can read back: the suite's size, the shipped models' shape and size, and
the decoding setting stored in the shipped checkpoint (which docs/results.md and the tutorial name too)."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from model_io import load_model

pytestmark = pytest.mark.integration
DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/results.md", "docs/tutorial.md")}
README = DOCS["README.md"]


def test_readme_states_the_size_of_the_suite():
    """"The suite (N tests)" is what `python -m pytest` collects (skipped where an optional dependency is missing)."""
    [stated] = re.findall(r"The suite \((\d+) tests\)", README)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1]
    if "skipped" in summary or "error" in summary:
        pytest.skip(f"not every test file could be collected here ({summary}): the README counts a full install")
    collected = int(re.match(r"(\d+) tests? collected", summary)[1])
    assert int(stated) == collected, f"README says {stated} tests; pytest collects {collected}"


def test_readme_states_the_shipped_models_shape_and_parameter_count():
    """The README's and docs/results.md's layers, width and parameter counts are the shipped checkpoints'."""
    twins = re.findall(r"Both (\d+)-layer twins \(dim (\d+), ([\d.]+)M parameters\)", README)
    pair = re.findall(r"(\d+) layers of\s+width (\d+), ([\d.]+)M parameters", DOCS["docs/results.md"])
    for names, said in ((["layerskip-python-deep", "baseline-python-deep"], twins), (["layerskip-python"], pair)):
        [(layers, dim, millions)] = said
        for name in names:
            model, _ = load_model(ROOT / "checkpoints" / f"{name}.pt")
            n = sum(p.numel() for p in model.parameters())
            assert (model.params.n_layers, model.params.dim, f"{n / 1e6:.1f}") == (int(layers), int(dim), millions)


def test_docs_state_the_stored_setting():
    """Every "exit E, at most d drafts" in the docs, the README's `--draft_cost r --draft_gamma g` and its results
    row "(exit E, cost-model stop rule, d <= d)" are the shipped checkpoint's stored recommendation."""
    model, _ = load_model(ROOT / "checkpoints" / "layerskip-python-deep.pt")
    rec = model.metadata["recommended"]
    stored = (rec["exit_layer"], rec["num_speculations"])
    said = [(int(e), int(d)) for text in DOCS.values()
            for e, d in re.findall(r"exit (\d+), at most\s+(\d+) drafts", text)]
    assert len(said) >= 3 and set(said) == {stored}, said
    [(cost, gamma)] = re.findall(r"--draft_cost ([\d.]+)\s+--draft_gamma ([\d.]+)", README)
    assert (float(cost), float(gamma)) == (rec["draft_cost"], rec["draft_gamma"]) and rec["draft_threshold"] is None
    rows = re.findall(r"\(exit (\d+), cost-model stop rule, d <= (\d+)\)", README)
    assert rows and {(int(e), int(d)) for e, d in rows} == {stored}
