"""The layout a reader relies on: imports flow one way, layerskip.py holds the method only, no script imports a
script, and the README stays the user's path."""

import ast
import re

from conftest import ROOT

LIBRARY = ["layerskip", "model_io", "common", "batcher"]  # bottom to top: each may import only those before it
SCRIPTS = ["train", "onpolicy", "generate", "demo_app", "eval", "bench", "bench_train", "export"]


def our_imports(path) -> set:
    """The modules of this repository that a file imports, at the top or inside functions."""
    ours = set(LIBRARY + SCRIPTS) | {"data", "experiments"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in ours}
    return found


def test_imports_flow_one_way():
    """layerskip.py imports nothing of ours, model_io.py only layerskip.py, common.py only those two (and the
    corpus package for prompt sets, which may read a checkpoint's tokenizer with model_io); no script imports a
    script, and nothing imports the lab record."""
    for i, name in enumerate(LIBRARY):
        allowed = set(LIBRARY[:i]) | ({"data"} if name == "common" else set())
        assert our_imports(ROOT / f"{name}.py") <= allowed, name
    for name in SCRIPTS:
        assert our_imports(ROOT / f"{name}.py") <= set(LIBRARY) | {"data"}, name
    for path in (ROOT / "data").rglob("*.py"):  # data/ sits between model_io (a checkpoint's tokenizer) and common
        assert our_imports(path) <= {"data", "model_io"}, path


def test_the_method_file_holds_the_method():
    """layerskip.py has no argument-policy helper, no loader re-export, names no script, and keeps the paper's order."""
    source = (ROOT / "layerskip.py").read_text()
    defined = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & {"load_model", "speculation_settings", "check_generation_args", "decoding_settings"}
    assert not re.search(r"\b(train|generate|bench|eval|demo_app|onpolicy|export)\.py\b", source)
    banners = re.findall(r"^# (\d)\. ", source, re.M)
    assert banners == [str(i) for i in range(1, 8)]


def test_readme_is_short_and_its_section_sizes_are_true():
    """The README is at most 250 lines, and its line counts of layerskip.py's sections are today's."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    lines = (ROOT / "layerskip.py").read_text().rstrip("\n").split("\n")
    starts = [i - 1 for i, line in enumerate(lines) if re.match(r"# \d\. ", line)]
    sizes = [b - a for a, b in zip(starts, starts[1:] + [len(lines)])]
    stated = re.search(r"Section sizes: (.*?), plus a (\d+)-line introduction \((\d+) lines in all", readme)
    assert [int(n) for n in re.findall(r"\b(\d+)\b", stated.group(1))] == sizes
    assert int(stated.group(2)) == starts[0] and int(stated.group(3)) == len(lines)
