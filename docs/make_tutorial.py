"""
Runs the code blocks of docs/tutorial.md top to bottom, in one fresh Python process (as a notebook kernel would),
and writes the document with what each block printed right after the block, and the same cells as a notebook,
into --out_dir (default out/tutorial: tutorial.md, tutorial.ipynb, and the figures the blocks draw in tutorial/).

    python docs/make_tutorial.py                  # run the tutorial: out/tutorial/tutorial.md, .ipynb, figures
    python docs/make_tutorial.py --out_dir docs   # regenerate the committed outputs, figures, notebook and time
    python docs/make_tutorial.py --check          # run everything, compare with the document, write nothing
    python docs/make_tutorial.py --check --fast   # the quick mode the test suite runs (TUTORIAL_FAST=1)
    python docs/make_tutorial.py --notebook       # after editing prose only: rewrite docs/tutorial.ipynb, run nothing

How a block's output is compared, by the word after ```python in its fence:
    ```python          printed exactly the same in both modes (formulas, greedy decoding: deterministic)
    ```python full     the same in the full run only (the quick mode trains fewer steps, draws fewer samples)
    ```python timing   measured times: the full run compares it with every number masked
The blocks find the quick mode, the figure folder and the training folder in TUTORIAL_FAST, TUTORIAL_FIGURES and
TUTORIAL_RUNS, through docs/tutorial_helpers.py; --check points the last two at a temporary folder, so a check
never touches the committed files.
"""

import argparse
import difflib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import ArgumentParser, fail  # noqa: E402  (after the path: this script lives in docs/)

DOC = ROOT / "docs" / "tutorial.md"
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
TAGS = ("", "full", "timing")
TIME_LINE = re.compile(r"<!-- time -->.*?<!-- /time -->")


@dataclass
class Block:
    code: str
    tag: str  # "", "full" or "timing"
    output: str  # what the document shows after it ("" = nothing printed)
    heading: str  # the section it sits in, for messages


def parse(text: str) -> list:
    """The document as a list of markdown strings and Blocks. A ```text fence right after a ```python block is
    that block's output; every other fence (bash, text elsewhere) stays markdown."""
    lines = text.splitlines(keepends=True)
    items, md, heading, i = [], [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if not line.startswith("```"):
            md.append(line)
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"the fence on line {i + 1} of the tutorial is never closed")
        words = line[3:].split()
        if not words or words[0] != "python":
            md += lines[i:end + 1]
            i = end + 1
            continue
        tag = " ".join(words[1:])
        if tag not in TAGS:
            raise ValueError(f"line {i + 1}: unknown block tag {tag!r}; use one of: python, python full, python timing")
        code, i, output = "".join(lines[i + 1:end]), end + 1, ""
        k = i
        while k < len(lines) and not lines[k].strip():
            k += 1
        if k < len(lines) and lines[k].rstrip() == "```text":
            close = next(j for j in range(k + 1, len(lines)) if lines[j].rstrip() == "```")
            output, i = "".join(lines[k + 1:close]), close + 1
        items.append("".join(md))
        items.append(Block(code, tag, output, heading))
        md = []
    items.append("".join(md))
    return [item for item in items if item != ""]


def render(items: list) -> str:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        out.append(f"```python{' ' + item.tag if item.tag else ''}\n{item.code}```\n")
        if item.output:
            out.append(f"```text\n{item.output}```\n")
    return "".join(out)


def blocks(items: list) -> list:
    return [item for item in items if isinstance(item, Block)]


# ---------------------------------------------------------------------------------------------------------
# Running: a fresh process executes the blocks in one namespace and sends back what each printed.


def run_child(blocks_file: str, outputs_file: str):
    """In the fresh process: run every block, writing the outputs so far after each (a failure keeps them)."""
    os.chdir(ROOT)
    todo = json.loads(Path(blocks_file).read_text())
    namespace, outputs, seconds = {"__name__": "__main__"}, [], []
    for n, b in enumerate(todo):
        buffer, start = StringIO(), time.perf_counter()
        try:
            with redirect_stdout(buffer):
                exec(compile(b["code"], f"<tutorial block {n + 1} ({b['heading']})>", "exec"), namespace)
        except BaseException:
            print(f"block {n + 1} of {len(todo)} ({b['heading']}) failed; it had printed:\n{buffer.getvalue()}",
                  file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
        outputs.append(buffer.getvalue())
        seconds.append(time.perf_counter() - start)
        Path(outputs_file).write_text(json.dumps({"outputs": outputs, "seconds": seconds}))


def run(todo: list, fast: bool, figures, runs, env=None) -> tuple[list, list, float, float]:
    """Run the blocks in a fresh process; return what each printed, the seconds each took, and the wall-clock and
    CPU seconds of the whole run (the process's start, imports and training subprocesses included). A failing
    block raises RuntimeError with its traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        blocks_file, outputs_file = Path(tmp) / "blocks.json", Path(tmp) / "outputs.json"
        blocks_file.write_text(json.dumps([{"code": b.code, "heading": b.heading} for b in todo]))
        env = {**os.environ, **(env or {}), "TUTORIAL_FAST": "1" if fast else "0", "TUTORIAL_FIGURES": str(figures),
               "TUTORIAL_RUNS": str(runs), "MPLBACKEND": "Agg"}
        start, cpu = time.perf_counter(), cpu_seconds()
        proc = subprocess.run([sys.executable, __file__, "--child", str(blocks_file), str(outputs_file)],
                              env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        total, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        result = json.loads(outputs_file.read_text())
        return result["outputs"], result["seconds"], total, cpu


def cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and theirs, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step_times(todo: list, seconds: list) -> str:
    """Seconds per section, for the console."""
    by_step = {}
    for b, s in zip(todo, seconds):
        by_step[b.heading] = by_step.get(b.heading, 0.0) + s
    return "\n".join(f"  {s:6.1f} s  {heading}" for heading, s in by_step.items())


# ---------------------------------------------------------------------------------------------------------
# Comparing


def masked(text: str) -> str:
    """Measured numbers vary from run to run: replace every number by '#' and runs of spaces by one."""
    return "\n".join(" ".join(re.sub(r"\d+(\.\d+)?", "#", line).split()) for line in text.splitlines())


def compared(block: Block, fast: bool):
    """How this block's output is compared in this mode: 'exact', 'masked' or None (not compared)."""
    if block.tag == "":
        return "exact"
    if fast:
        return None
    return "exact" if block.tag == "full" else "masked"


def differences(todo: list, outputs: list, fast: bool) -> list:
    """(block, unified diff) for every compared block whose new output differs from the document's."""
    found = []
    for n, (b, new) in enumerate(zip(todo, outputs)):
        how = compared(b, fast)
        old = b.output
        if how == "masked":
            old, new = masked(old), masked(new)
        if how and old != new:
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "document", "this run", lineterm="")
            found.append((n, b, "\n".join(diff)))
    return found


# ---------------------------------------------------------------------------------------------------------
# Writing: the document, the measured time at its top, and the notebook


NOTEBOOK_PREAMBLE = """\
# Work from the repository root (a notebook opened in docs/ starts there), as the tutorial's paths assume.
import os, sys
if os.path.basename(os.getcwd()) == "docs":
    os.chdir("..")
sys.path.insert(0, os.getcwd())
"""


def notebook(items: list) -> dict:
    """The tutorial as a Jupyter notebook (nbformat 4): markdown cells, and code cells with their outputs."""
    def source(text):
        return text.strip("\n").splitlines(keepends=True)

    def code_cell(code, output, n):
        stream = {"output_type": "stream", "name": "stdout", "text": output.splitlines(keepends=True)}
        outputs = [stream] if output else []
        return {"cell_type": "code", "execution_count": n, "metadata": {}, "outputs": outputs, "source": source(code)}

    cells, n = [code_cell(NOTEBOOK_PREAMBLE, "", None)], 0
    for item in items:
        if isinstance(item, Block):
            n += 1
            cells.append(code_cell(item.code, item.output, n))
        elif item.strip():
            cells.append({"cell_type": "markdown", "metadata": {}, "source": source(item)})
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def notebook_text(items: list) -> str:
    return json.dumps(notebook(items), indent=1, ensure_ascii=False) + "\n"


def time_line(seconds: float, cpu: float, load: float) -> str:
    cores = os.cpu_count()
    name = platform.processor() or platform.machine()
    try:
        name = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    def minutes(t):
        m, s = divmod(round(t), 60)
        return f"{m} min {s:02d} s"
    return (f"<!-- time -->{minutes(seconds)} on {cores} CPU cores ({name}; {minutes(cpu)} of CPU time; 15-minute "
            f"load average {load:.1f} at the end, this run included), measured by the last regeneration<!-- /time -->")


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="compare with the document instead of writing it")
    p.add_argument("--fast", action="store_true", help="the quick mode (with --check only)")
    p.add_argument("--notebook", action="store_true",
                   help="only rewrite docs/tutorial.ipynb from the document as it is (after editing its prose)")
    p.add_argument("--out_dir", default="out/tutorial", help="where the document, the notebook and the figures "
                   "(in tutorial/) go (default out/tutorial; docs rewrites the committed ones)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(*args.child)
    if args.fast and not args.check:
        p.error("--fast runs a shrunken tutorial whose outputs must not be written: use it with --check")
    try:
        items = parse(DOC.read_text())
    except ValueError as e:
        fail(f"{DOC.relative_to(ROOT)}: {e}")
    if args.notebook:
        NOTEBOOK.write_text(notebook_text(items))
        return 0
    todo = blocks(items)
    out_dir = Path(args.out_dir).resolve()  # the blocks run from the repository root
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out_dir {args.out_dir}: is a file; give a folder")
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures" if args.check else out_dir / "tutorial"
        runs = Path(tmp) / "runs" if args.check else ROOT / "out" / "tutorial"
        try:
            outputs, block_seconds, seconds, cpu = run(todo, args.fast, figures, runs)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"seconds by step:\n{step_times(todo, block_seconds)}")
        if args.check:
            found = differences(todo, outputs, args.fast)
            for n, b, diff in found:
                print(f"block {n + 1} ({b.heading}) prints something else than the document:\n{diff}\n")
            kinds = [compared(b, args.fast) for b in todo]
            print(f"{len(todo)} blocks ran in {seconds:.0f} s; {kinds.count('exact')} compared exactly, "
                  f"{kinds.count('masked')} with numbers masked, {kinds.count(None)} not compared (full run only); "
                  f"{len(found)} differ")
            return 1 if found else 0
    for b, out in zip(todo, outputs):
        b.output = out
    text = TIME_LINE.sub(time_line(seconds, cpu, os.getloadavg()[2]), render(items))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DOC.name).write_text(text)
    (out_dir / NOTEBOOK.name).write_text(notebook_text(parse(text)))
    print(f"{out_dir / DOC.name}: {len(todo)} blocks in {seconds:.0f} s ({cpu:.0f} s of CPU); figures in "
          f"{figures}/; {out_dir / NOTEBOOK.name} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
