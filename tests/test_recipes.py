"""recipes/ rebuilds the shipped checkpoints: every script command in them must still parse."""

import importlib
import shlex

import pytest

from conftest import ROOT

SCRIPTS = ("train", "onpolicy", "bench")


def recipe_commands():
    """(recipe, argv) for every `python SCRIPT.py ...` line of recipes/*.sh, continuation lines joined."""
    found = []
    for path in sorted((ROOT / "recipes").glob("*.sh")):
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line.split("#")[0], posix=True)
            if words and words[-1] == "&":
                words = words[:-1]
            if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py") and "/" not in words[1]:
                found.append((path.name, words[1:]))  # the scripts at the top; data/*/prepare.py builds corpora
    return found


def test_recipes_name_every_shipped_checkpoint():
    """Each shipped checkpoint is written by exactly one recipe, and every recipe runs train.py."""
    shipped = sorted(p.name for p in (ROOT / "checkpoints").glob("*.pt"))
    written = sorted(line.split()[-1].split("/")[-1] for p in (ROOT / "recipes").glob("*.sh")
                     for line in p.read_text().splitlines() if line.startswith("cp ") and "checkpoints/" in line)
    assert written == shipped
    scripts = {name: {argv[0] for n, argv in recipe_commands() if n == name} for name, _ in recipe_commands()}
    assert all("train.py" in s for s in scripts.values()) and len(scripts) == len(list((ROOT / "recipes").glob("*.sh")))


@pytest.mark.parametrize("recipe, argv", recipe_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_recipe_command_parses(recipe, argv):
    """The command's flags are accepted by the script's own argument parser and checks (nothing runs)."""
    script = argv[0][:-3]
    assert script in SCRIPTS, f"{recipe}: a command of an unknown script {argv[0]}"
    module = importlib.import_module(script)
    module.parse_args(argv[1:])
