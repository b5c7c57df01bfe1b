"""recipes/ rebuilds the shipped checkpoints: each is copied into checkpoints/ by one recipe, and every script
command in the recipes still parses."""

import importlib
import shlex

import pytest

from conftest import ROOT

pytestmark = pytest.mark.cli
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))


def commands(path) -> list:
    """The argv of every `python SCRIPT.py ...` line of a recipe (lines joined, comments and & dropped; not data/)."""
    lines = path.read_text().replace("\\\n", " ").splitlines()
    words = [shlex.split(line.split("#")[0]) for line in lines]
    return [w[1:-1] if w[-1] == "&" else w[1:] for w in words
            if len(w) >= 2 and w[0] == "python" and w[1].endswith(".py") and "/" not in w[1]]


def test_each_shipped_checkpoint_comes_from_one_recipe_that_trains():
    shipped = sorted(p.name for p in (ROOT / "checkpoints").glob("*.pt"))
    copied = sorted(line.split()[-1].split("/")[-1] for p in RECIPES for line in p.read_text().splitlines()
                    if line.startswith("cp ") and "checkpoints/" in line)
    assert copied == shipped
    assert all("train.py" in {argv[0] for argv in commands(p)} for p in RECIPES)


@pytest.mark.parametrize("argv", [argv for p in RECIPES for argv in commands(p)], ids=" ".join)
def test_recipe_command_parses(argv):
    """The flags are accepted by the script's own parser and checks (nothing runs)."""
    assert argv[0] in ("train.py", "onpolicy.py", "bench.py"), argv[0]
    importlib.import_module(argv[0][:-3]).parse_args(argv[1:])
