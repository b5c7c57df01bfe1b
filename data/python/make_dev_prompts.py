"""
The dev prompts: what every setting and recipe choice is tuned on, so that the reported sets (HumanEval and
data/python/oneline_prompts.txt) are never looked at before they are reported.

    python data/python/make_dev_prompts.py      # writes data/python/dev_prompts.jsonl (shipped)

They come from the held-out files of the corpus (val.bin's files: no checkpoint trained on them) and look like the
two reported sets: 24 HumanEval-like prompts (a public top-level function's `def` line(s) and its docstring,
dedented) and 16 one-line ones (a `def` line alone, of other functions whose signature fits on one line), the two
kinds interleaved (so that the first 20 hold both). The functions are taken evenly spaced from all candidates in
corpus order, so the choice is fixed by the corpus; the file is shipped because another Python or torch version holds other held-out files.
"""

import ast
import json
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from data.python.prepare import collect, humaneval_signatures, is_val, sources  # noqa: E402

OUT = os.path.join(HERE, "dev_prompts.jsonl")


def candidates(text: str):
    """(docstring prompt, one-line prompt or None) of every public top-level function with a short docstring."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = node.body[0] if node.body else None
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        if not 1 <= doc.end_lineno - node.lineno <= 15 or node.decorator_list:
            continue
        header = "".join(lines[node.lineno - 1:doc.end_lineno])
        one_line = lines[node.lineno - 1] if node.body[0].lineno > node.lineno and \
            lines[node.lineno - 1].rstrip().endswith(":") else None
        yield textwrap.dedent(header), one_line


def evenly(items: list, n: int) -> list:
    return [items[int(i * len(items) / n)] for i in range(n)]


def main():
    docs, _ = collect(sources(), humaneval_signatures())
    found = [c for key, text in docs.items() if is_val(key) for c in candidates(text)]
    docstring = evenly([d for d, _ in found], 24)
    one_line = evenly([o for d, o in found if o and d not in docstring], 16)
    rows = [(i / len(docstring), "docstring", p) for i, p in enumerate(docstring)]
    rows += [((i + 0.5) / len(one_line), "one_line", p) for i, p in enumerate(one_line)]
    with open(OUT, "w", encoding="utf-8") as f:  # the two kinds interleaved, so that the first n hold both
        for _, kind, p in sorted(rows, key=lambda r: r[0]):
            f.write(json.dumps({"kind": kind, "prompt": p}) + "\n")
    print(f"{OUT}: {len(docstring)} docstring and {len(one_line)} one-line prompts from {len(found)} functions of "
          f"the held-out files")


if __name__ == "__main__":
    main()
