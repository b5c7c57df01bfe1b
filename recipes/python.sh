#!/usr/bin/env bash
# Rebuilds the first shipped pair: checkpoints/layerskip-python.pt and its baseline twin
# checkpoints/baseline-python.pt (12 layers, dim 192, 6 heads / 3 KV heads, tied embeddings, 5.7M parameters),
# trained for 1,600 steps on the Python standard library alone with a 4,096-piece tokenizer. The twins differ
# only in the LayerSkip knobs (p_max 0.1, e_scale 0.5, rotational curriculum R=4 vs all off).
#
# Times on the build machine (AMD EPYC, 2 cores, torch 2.13.0 CPU): about 70 (LayerSkip) and 80 (baseline)
# minutes for 1,600 steps of 4,096 tokens, the twins side by side with one thread each. (The shipped LayerSkip run
# was stopped at step 1,200 and continued with --resume, which gives the same weights as an uninterrupted run.)
#
# Usage: bash recipes/python.sh        (outputs under out/; the last steps overwrite checkpoints/)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

python data/python/prepare.py --stdlib_only --vocab_size 4096 --out_dir data/python-stdlib
python train.py --preset python --out_dir out/python-layerskip &
python train.py --preset python --p_max 0 --e_scale 0 --out_dir out/python-baseline &
wait

cp out/python-layerskip/model.pt checkpoints/layerskip-python.pt
cp out/python-baseline/model.pt checkpoints/baseline-python.pt
python bench.py --checkpoint checkpoints/layerskip-python.pt --baseline checkpoints/baseline-python.pt \
    --threads 2 --auto --store --sweep_exits 1 2 3 4 5 6 8
