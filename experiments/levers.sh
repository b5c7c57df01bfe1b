#!/usr/bin/env bash
# The acceptance levers of issue 17 at equal compute: every run continues the shipped pair for the same 150 steps
# (4,096 tokens of real data each, plus a window batch of on-policy text for the LayerSkip runs), from the same
# on-policy text, written by the shipped model (seed 3: windows no earlier round used). Then each is scored on the
# dev prompts (experiments/levers.py) and its last layer against the twin (eval.py on the 134 held-out files).
#
#   bash experiments/levers.sh         # ~1.5 hours on 2 cores, two runs side by side; outputs under out/levers/
#
# What ran for the record in experiments/levers/: the twin, ce, kl and ce-aligned runs and their scores (tvd and
# kl-aligned were left out for time; kl had already lost to plain cross-entropy).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
O=out/levers
mkdir -p $O
[ -f data/python/onpolicy3.bin ] || python onpolicy.py --checkpoint checkpoints/layerskip-python-deep.pt \
    --out data/python/onpolicy3.bin --seed 3

COMMON="--preset python-deep --lr 3e-4 --warmup_iters 10 --max_iters 150 --seed 7 --eval_interval 150"
LS="$COMMON --init_from checkpoints/layerskip-python-deep.pt --p_max 0 --e_scale 0 --exit_always 4
    --exit_always_weight 0.6 --onpolicy_data data/python/onpolicy3.bin"
run() { name=$1; shift; [ -f $O/$name/model.pt ] || python train.py "$@" --out_dir $O/$name > $O/$name.log 2>&1; }

run twin $COMMON --init_from checkpoints/baseline-python-deep.pt --p_max 0 --e_scale 0 &
run ce $LS &                                   # one more on-policy round, as rounds 1 and 2
wait
run kl $LS --onpolicy_loss kl &                # the last layer's whole distribution instead of its argmax
run tvd $LS --onpolicy_loss tvd &
wait
run ce-aligned $LS --onpolicy_aligned &        # windows that start with a sample, loss on greedy tokens only
run kl-aligned $LS --onpolicy_loss kl --onpolicy_aligned &
wait

# Score: dev-set acceptance and predicted speedups (one cost set for all), and every last layer against the twin's
# on 16 held-out files (eval.py's windows)
for m in shipped ce kl tvd ce-aligned kl-aligned; do
    ckpt=$O/$m/model.pt twin=$O/twin/model.pt
    [ $m = shipped ] && ckpt=checkpoints/layerskip-python-deep.pt twin=checkpoints/baseline-python-deep.pt
    [ -f $ckpt ] || continue
    python experiments/levers.py --checkpoint $ckpt --costs experiments/levers/costs.json \
        --trajectories $O/$m.traj.json --json $O/$m.dev.json > $O/$m.dev.md
    python eval.py --checkpoints $ckpt $twin --n_prompts 2 --out_dir $O/plots-$m --json $O/$m.eval.json \
        --threads 1 > $O/$m.eval.md
done
mkdir -p experiments/levers/scores
for m in shipped ce kl tvd ce-aligned kl-aligned; do
    for f in $m.dev.md $m.dev.json $m.eval.md $m.eval.json; do [ -f $O/$f ] && cp $O/$f experiments/levers/scores/; done
    [ -f $O/$m.log ] && cp $O/$m.log experiments/levers/scores/$m.train.log
done
python experiments/lever_table.py > experiments/levers/table.md
