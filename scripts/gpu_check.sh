#!/usr/bin/env bash
# The checks that need a GPU, unattended, on a machine with one CUDA GPU, in at most 8 minutes:
#
#   bash scripts/gpu_check.sh OUT_FOLDER    run every step; OUT_FOLDER gets each step's log and summary.md
#   bash scripts/gpu_check.sh --list        print the steps and their commands, run nothing
#
# Steps: the machine (nvidia-smi, torch and CUDA versions), the Python packages (pip from PyPI for any that are
# missing, never torch: install the build for your GPU first), tests/test_cuda.py, and a short decoding benchmark
# of the shipped 32-layer model on the GPU. Each step has a time limit, a failed step does not stop the others,
# and summary.md says which passed. PYTHON=... picks the interpreter (default python3). Exit code: the number of
# failed steps.
set -u
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
ROOT="$(dirname "$(dirname "$SELF")")"
PY=${PYTHON:-python3}

STEPS=(env deps tests bench)
# bench.py's flags for the GPU benchmark (kept short: 10 prompts x 64 tokens x 2 passes): --list prints them,
# step_bench runs them
BENCH_ARGS="--checkpoint checkpoints/layerskip-python-deep.pt --baseline checkpoints/baseline-python-deep.pt \
--reference '' --prompts humaneval --n_prompts 10 --max_new_tokens 64 --repeats 2"
declare -A LIMIT=([env]=20 [deps]=40 [tests]=300 [bench]=110)  # seconds; 470 in all
declare -A WHAT=(
  [env]="nvidia-smi; $PY: torch, its CUDA, the GPU, transformers"
  [deps]="import numpy sentencepiece tqdm safetensors pytest transformers tokenizers; $PY -m pip install (PyPI) those missing"
  [tests]="$PY -m pytest -q -rs tests/test_cuda.py"
  [bench]="$PY tests/test_cuda.py bench $BENCH_ARGS --json OUT_FOLDER/bench.json"
)
MODULES="numpy sentencepiece tqdm safetensors pytest transformers tokenizers"  # their pip names are the same

usage() { echo "usage: bash scripts/gpu_check.sh OUT_FOLDER | --list" >&2; exit 2; }

step_env() {
  nvidia-smi || echo "nvidia-smi: not found or failed"
  "$PY" -c '
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability(),
          "| NCCL", ".".join(map(str, torch.cuda.nccl.version())), "| bf16:", torch.cuda.is_bf16_supported())
try:
    import transformers
    print("transformers", transformers.__version__)
except ImportError:
    print("transformers: not installed")
import torch.cuda; assert torch.cuda.is_available(), "no CUDA GPU visible to torch"'
}

step_deps() {
  local missing
  missing=$("$PY" -c 'import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])' $MODULES) || return 1
  if [ -z "$missing" ]; then echo "all present: $MODULES"; return 0; fi
  echo "missing: $missing; trying pip (PyPI only; fails fast without a network)"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --retries 0 --timeout 10 $missing
}

step_tests() { "$PY" -m pytest -q -rs tests/test_cuda.py; }

step_bench() { eval "\"\$PY\" tests/test_cuda.py bench $BENCH_ARGS --json \"\$OUT/bench.json\""; }

list_steps() {
  local i=1
  for s in "${STEPS[@]}"; do
    echo "$i. $s: ${WHAT[$s]}  (at most ${LIMIT[$s]} s)"
    i=$((i + 1))
  done
}

# One step, alone, under its time limit (the script runs itself once per step).
if [ "${1:-}" = "--step" ] && [ $# -eq 3 ]; then
  export OUT=$3 PYTHONUNBUFFERED=1
  cd "$ROOT" && "step_$2"
  exit
fi
[ $# -eq 1 ] || usage
case $1 in
  --list) list_steps; exit 0 ;;
  -*) usage ;;
esac

OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check.sh: cannot create $1" >&2; exit 2; }
cd "$ROOT" || exit 2
summary="$OUT/summary.md"
{
  echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), host $(hostname)"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
} > "$summary"
failed=()
for s in "${STEPS[@]}"; do
  echo "== $s: ${WHAT[$s]}"
  start=$(date +%s)
  timeout --kill-after=10 "${LIMIT[$s]}" bash "$SELF" --step "$s" "$OUT" > "$OUT/$s.log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  if [ $rc -eq 0 ]; then result=passed
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result="FAILED (time limit ${LIMIT[$s]} s)"; failed+=("$s")
  else result="FAILED (exit $rc)"; failed+=("$s"); fi
  tail -n 5 "$OUT/$s.log"
  echo "-- $s: $result in $took s"
  echo "| $s | $result | $took | $s.log |" >> "$summary"
done
{
  echo
  if [ ${#failed[@]} -eq 0 ]; then echo "All ${#STEPS[@]} steps passed."
  else echo "Failed: ${failed[*]} (see their logs)."; fi
  if [ -f "$OUT/tests.log" ]; then
    echo; echo "## tests/test_cuda.py"; echo; echo '```'; tail -n 25 "$OUT/tests.log"; echo '```'
  fi
  if [ -f "$OUT/bench.log" ]; then
    echo; echo "## Decoding on the GPU (bench.py)"; echo
    if [ -f "$OUT/bench.json" ]; then grep -E '^\||identical|speedup|machine|loaded on' "$OUT/bench.log"
    else echo '```'; tail -n 10 "$OUT/bench.log"; echo '```'; fi
  fi
} >> "$summary"
echo "summary: $summary"
exit ${#failed[@]}
