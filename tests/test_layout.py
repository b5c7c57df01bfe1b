"""Imports flow one way: settings.py <- layerskip.py <- model_io.py <- common.py <- the scripts."""

import ast

import pytest

from conftest import ROOT

pytestmark = pytest.mark.cli

LIBRARY = ["settings", "layerskip", "model_io", "common", "batcher"]  # bottom up: each imports only those before it
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in LIBRARY)


def our_imports(path) -> set:
    """The modules of this repository that a file imports, at the top or inside functions."""
    ours = set(LIBRARY + SCRIPTS) | {"data", "benchmarks", "experiments"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in ours}
    return found


def test_imports_flow_one_way():
    """A library module imports only those below it (common.py also data/, for prompt sets), data/ only model_io,
    benchmarks/ and scripts/ the library; scripts import scripts without a cycle; nothing imports experiments/."""
    for i, name in enumerate(LIBRARY):
        assert our_imports(ROOT / f"{name}.py") <= set(LIBRARY[:i]) | ({"data"} if name == "common" else set()), name
    for path in (ROOT / "data").rglob("*.py"):
        assert our_imports(path) <= {"data", "model_io"}, path
    for path in [*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]:
        assert our_imports(path) <= set(LIBRARY) | {"data", "benchmarks"}, path
    graph = {name: our_imports(ROOT / f"{name}.py") for name in SCRIPTS}
    assert all("experiments" not in imported for imported in graph.values())

    def reaches(a, b, seen=()):
        return any(n == b or (n in graph and n not in seen and reaches(n, b, seen + (n,))) for n in graph[a])
    assert not [name for name in SCRIPTS if reaches(name, name)]
