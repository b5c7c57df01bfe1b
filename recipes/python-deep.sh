#!/usr/bin/env bash
# Rebuilds the shipped 32-layer pair: checkpoints/layerskip-python-deep.pt and its baseline twin
# checkpoints/baseline-python-deep.pt (32 layers, dim 128, 4 heads / 2 KV heads, 2048-piece vocabulary, tied
# embeddings, 6.0M parameters), trained on the stdlib + torch corpus (data/python, built on first use).
#
# Both twins see the same data, tokenizer and steps (1,000 + 900 + 300 + 200 + 100 + 150 steps of 4,096 tokens) and
# differ only in the LayerSkip knobs. The LayerSkip model: pretraining with the recipe (p_max 0.1, e_scale 1.0,
# rotational curriculum R=4), then two phases that give the draft exit, exit 4, a fixed share of the loss (the
# two-exit loss of the LayerSkip fine-tuning scripts), then three on-policy phases (not in the paper) that train
# exit 4 on the model's own greedy text. The baseline twin continues with its plain loss for the same steps.
# What each phase did, and why: experiments/history.md.
#
# Times on the build machine (AMD EPYC, 2 cores, torch 2.13.0 CPU), each pair run side by side with one thread
# each (OMP_NUM_THREADS=1): pretraining 1 h 27 min (LayerSkip, 4.4 s per step) and 1 h 15 min (baseline); phase 1
# 1 h 13 min and 1 h 00 min; phase 2 24 and 19 min; on-policy rounds 15 and 13 min, then 4 and 6 min, then 21 and
# 32 min (round 3 shared the cores with other runs); writing the 2,048 on-policy samples 6 to 24 min; the --auto
# sweep about 20 min. About 6 hours in all when the twins share the two cores, as here.
#
# Usage: bash recipes/python-deep.sh        (outputs under out/; the last step overwrites checkpoints/)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

# 1. Pretraining: the recipe vs the same model without it
python train.py --preset python-deep --out_dir out/deep-layerskip &
python train.py --preset python-deep --p_max 0 --e_scale 0 --out_dir out/deep-baseline &
wait

# 2. Phase 1: exit 4 gets half the loss, the rest is eq. 6 under the curriculum
python train.py --preset python-deep --init_from out/deep-layerskip/ckpt.pt --out_dir out/ft-layerskip \
    --exit_always 4 --exit_always_weight 0.5 --lr 1e-3 --warmup_iters 20 --max_iters 900 --seed 2 &
python train.py --preset python-deep --init_from out/deep-baseline/ckpt.pt --out_dir out/ft-baseline \
    --p_max 0 --e_scale 0 --lr 1e-3 --warmup_iters 20 --max_iters 900 --seed 2 &
wait

# 3. Phase 2: exit 4 gets 70%
python train.py --preset python-deep --init_from out/ft-layerskip/ckpt.pt --out_dir out/ft2-layerskip \
    --exit_always 4 --exit_always_weight 0.7 --lr 5e-4 --warmup_iters 10 --max_iters 300 --seed 3 &
python train.py --preset python-deep --init_from out/ft-baseline/ckpt.pt --out_dir out/ft2-baseline \
    --p_max 0 --e_scale 0 --lr 5e-4 --warmup_iters 10 --max_iters 300 --seed 3 &
wait

# 4. On-policy round 1: the phase-2 model continues 2,048 training windows greedily; exit 4 learns that text
#    (plus exit 4 and the last layer, 60/40, on real data; no layer dropout)
python onpolicy.py --checkpoint out/ft2-layerskip/model.pt --out data/python/onpolicy.bin
python train.py --preset python-deep --init_from out/ft2-layerskip/model.pt --out_dir out/ft4-layerskip \
    --p_max 0 --e_scale 0 --exit_always 4 --exit_always_weight 0.6 --onpolicy_data data/python/onpolicy.bin \
    --lr 6e-4 --warmup_iters 10 --max_iters 200 --seed 5 &
python train.py --preset python-deep --init_from out/ft2-baseline/model.pt --out_dir out/ft4-baseline \
    --p_max 0 --e_scale 0 --lr 6e-4 --warmup_iters 10 --max_iters 200 --seed 5 &
wait

# 5. On-policy round 2: the same on text written by the round-1 model
python onpolicy.py --checkpoint out/ft4-layerskip/model.pt --out data/python/onpolicy2.bin --seed 2
python train.py --preset python-deep --init_from out/ft4-layerskip/model.pt --out_dir out/ft5-layerskip \
    --p_max 0 --e_scale 0 --exit_always 4 --exit_always_weight 0.6 --onpolicy_data data/python/onpolicy2.bin \
    --lr 3e-4 --warmup_iters 10 --max_iters 100 --seed 6 &
python train.py --preset python-deep --init_from out/ft4-baseline/model.pt --out_dir out/ft5-baseline \
    --p_max 0 --e_scale 0 --lr 3e-4 --warmup_iters 10 --max_iters 100 --seed 6 &
wait

# 6. On-policy round 3: the lever that won on the dev prompts at equal compute (experiments/levers/): text written
#    by the round-2 model, read as whole samples whose greedy tokens alone count (--onpolicy_aligned), 150 steps
python onpolicy.py --checkpoint out/ft5-layerskip/model.pt --out data/python/onpolicy3.bin --seed 3
python train.py --preset python-deep --init_from out/ft5-layerskip/model.pt --out_dir out/ft6-layerskip \
    --p_max 0 --e_scale 0 --exit_always 4 --exit_always_weight 0.6 --onpolicy_data data/python/onpolicy3.bin \
    --onpolicy_aligned --lr 3e-4 --warmup_iters 10 --max_iters 150 --seed 7 --eval_interval 150 &
python train.py --preset python-deep --init_from out/ft5-baseline/model.pt --out_dir out/ft6-baseline \
    --p_max 0 --e_scale 0 --lr 3e-4 --warmup_iters 10 --max_iters 150 --seed 7 --eval_interval 150 &
wait

# 7. Ship, then store the fastest exit, d and stop rule, chosen on the dev prompts (bench.py --auto tunes on
#    data/python/dev_prompts.jsonl, never on the reported HumanEval or one-line prompts)
cp out/ft6-layerskip/model.pt checkpoints/layerskip-python-deep.pt
cp out/ft6-baseline/model.pt checkpoints/baseline-python-deep.pt
python bench.py --auto --store --prompts dev --baseline '' --sweep_exits 3 4 5 6 --sweep_specs 3 4 6 \
    --sweep_thresholds 0.2 0.3 0.5 --out_dir docs/results
