"""Scripts run with their default output flags write only into out/, which git ignores: every file a run opens for
writing or renames into place is recorded by an audit hook (other work in the same tree cannot disturb the check)."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import bench
import eval as evaluate
from conftest import ROOT
from docs import make_tutorial  # docs/ has no __init__.py: Python imports it as a namespace package

pytestmark = pytest.mark.cli

_recording = []  # the list the audit hook appends to while a `written()` block runs; the hook stays installed


def _audit(event, args):
    if not _recording:
        return
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1], args[2] or 0
        if (mode and any(c in mode for c in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            _recording[-1].append(Path(os.fsdecode(args[0])))
    elif event in ("os.rename", "os.replace"):
        _recording[-1].append(Path(os.fsdecode(args[1])))


sys.addaudithook(_audit)


@contextmanager
def written(monkeypatch):
    """Run the block from the repository root and collect every path it writes, made absolute."""
    paths = []
    monkeypatch.chdir(ROOT)
    _recording.append(paths)
    try:
        yield paths
    finally:
        _recording.remove(paths)
        paths[:] = [p if p.is_absolute() else ROOT / p for p in paths]


def tracked_or_unignored(paths) -> list:
    """The paths inside the repository that git does not ignore (tracked files are never ignored)."""
    inside = sorted({str(p.resolve().relative_to(ROOT.resolve())) for p in paths
                     if p.resolve().is_relative_to(ROOT.resolve())})
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], input="\n".join(inside), cwd=ROOT, text=True,
                             capture_output=True).stdout.split("\n")
    return [p for p in inside if p not in ignored]


def test_the_recorder_sees_a_tracked_file_being_written(monkeypatch, tmp_path):
    """The control: opening README.md for appending is recorded and reported as not ignored; out/ is ignored."""
    with written(monkeypatch) as paths:
        with open("README.md", "a"):
            pass
        (ROOT / "out").mkdir(exist_ok=True)
        Path("out/written-by-test_outputs.txt").write_text("x")
    os.remove(ROOT / "out/written-by-test_outputs.txt")
    assert tracked_or_unignored(paths) == ["README.md"] and len(paths) == 2


def test_eval_bench_sweep_and_auto_write_only_into_out(tiny_checkpoint, monkeypatch, capsys):
    """eval.py and bench.py --sweep (small workloads) write their plots and CSV under out/; bench.py --auto on the
    shipped model finds and measures a setting but writes nothing into checkpoints/ (only --store does)."""
    shipped = ROOT / "checkpoints/layerskip-python-deep.pt"
    before = shipped.stat().st_mtime_ns
    small = ["--baseline", "", "--sweep_specs", "1", "--sweep_thresholds", "0.5", "--n_prompts", "1",
             "--sweep_prompts", "1", "--max_new_tokens", "4", "--repeats", "1"]
    with written(monkeypatch) as paths:
        evaluate.main(["--checkpoints", str(tiny_checkpoint), "--data", "shakespeare", "--windows", "2",
                       "--block_size", "32", "--n_prompts", "1", "--max_new_tokens", "4", "--prompts", "shakespeare",
                       "--threads", "1"])
        bench.main(["--checkpoint", str(tiny_checkpoint), "--sweep", "--sweep_exits", "1"] + small)
        bench.main(["--auto", "--sweep_exits", "4"] + small)
    assert ROOT / "out/bench/sweep.csv" in paths  # the sweep's CSV at least (plots need matplotlib)
    assert shipped.stat().st_mtime_ns == before and not [p for p in paths if "checkpoints" in p.parts]
    assert f"not stored (add --store to write it into {shipped.relative_to(ROOT)})" in capsys.readouterr().out
    assert tracked_or_unignored(paths) == []


def test_the_tutorial_generator_writes_into_out_by_default(monkeypatch):
    """docs/make_tutorial.py (blocks stubbed) writes its tutorial, notebook and figures under out/tutorial/."""
    seen = {}

    def run(todo, fast, figures, runs, env=None):  # what the blocks would print, without running them
        seen["figures"] = Path(figures)
        return [b.output for b in todo], [0.0] * len(todo), 1.0, 1.0

    monkeypatch.setattr(make_tutorial, "run", run)
    with written(monkeypatch) as paths:
        assert make_tutorial.main([]) == 0
    assert seen["figures"] == ROOT / "out/tutorial/tutorial"
    assert {ROOT / "out/tutorial/tutorial.md", ROOT / "out/tutorial/tutorial.ipynb"} <= set(paths)
    assert tracked_or_unignored(paths) == []
