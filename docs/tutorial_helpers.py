"""
What the tutorial's blocks need that is not LayerSkip: where their figures and toy models go, the test suite's
quick mode, two toy trainings side by side, and timing in turns. docs/make_tutorial.py sets the environment.

    TUTORIAL_FIGURES   where the figures go (default out/tutorial/figures)
    TUTORIAL_RUNS      where step 4 trains (default out/tutorial)
    TUTORIAL_FAST=1    the quick mode of tests/test_tutorial.py: fewer training steps, prompts, samples, repeats
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

FAST = os.environ.get("TUTORIAL_FAST") == "1"
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", "out/tutorial/figures"))
RUNS = Path(os.environ.get("TUTORIAL_RUNS", "out/tutorial"))
FIGURES.mkdir(parents=True, exist_ok=True)


def size(full, quick):
    """`full`, or `quick` in the test suite's quick mode (which compares only the blocks that do not use it)."""
    return quick if FAST else full


def train_side_by_side(runs: dict, steps: int) -> dict:
    """`python train.py --preset toy --max_iters steps --out_dir RUNS/name [flags]` for every run name -> flags at
    once, one thread each, the validation loss at every exit measured 20 times; returns each run's log.jsonl
    records. A failed run raises with its output."""
    if not Path("data/shakespeare/train.bin").exists():  # build the corpus once, before two runs race to build it
        subprocess.run([sys.executable, "data/shakespeare/prepare.py"], check=True, stdout=subprocess.DEVNULL)
    procs = {}
    for name, flags in runs.items():
        out = RUNS / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        command = [sys.executable, "train.py", "--preset", "toy", "--out_dir", str(out), "--max_iters", str(steps),
                   "--eval_interval", str(steps // size(20, quick=2)), "--threads", "1"] + flags
        command += size([], quick=["--eval_iters", "1"])
        procs[name] = subprocess.Popen(command, stdout=open(out / "stdout.txt", "w"), stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError((RUNS / name / "stdout.txt").read_text())
    return {name: [json.loads(line) for line in open(RUNS / name / "log.jsonl")] for name in runs}


def time_in_turns(pieces: dict, repeats: int) -> dict:
    """The median seconds of each function of `pieces` (name -> function of no argument): every repeat calls all
    of them in turn, so that a slow spell of a shared machine does not land on one of them alone."""
    times = {name: [] for name in pieces}
    for _ in range(repeats):
        for name, fn in pieces.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
