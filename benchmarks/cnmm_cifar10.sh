#!/usr/bin/env bash
# PROVENANCE: written for the pre-contract CLI and zoo names (commit 66c48e7: `anycost export`, `calibrate --export`,
# `NAME.cifar10` entries). It records how the committed numbers were made; to re-run it as written,
# check out that commit. The same steps today: `anycost train`, `anycost calibrate --save`, `anycost publish`.
# CNMM on CIFAR-10 (issue 5): train cnmm_d8 once with the `cpu` recipe shortened to CNMM_EPOCHS
# (default 14; resumable; an epoch costs ~1.5x ResNet-20's, so 20 would be ResNet-20's training
# budget and 14 is ~70 % of it), every edge kept with probability at most 0.7 (keep_max),
# prune it with every mechanism at budgets from 100 % down to 15 % of its MACs, with and without
# BN re-estimation on training batches, measure on holdout, export to the zoo, time the
# exported static networks, and draw it against the static and early-exit curves.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
R=benchmarks/records
mkdir -p $R/calibrate $R/eval $R/bench $R/train

# Train one CNMM with the cpu recipe (resumable), prune it with every mechanism on holdout
# (the greedy edge order chosen on calib), export it to the zoo as NAME.cifar10 and time it:
#   cnmm NAME MODEL EPOCHS MODEL_KWARGS_JSON [more `anycost train` arguments]
cnmm() {
  local name=$1 model=$2 epochs=$3 kw=$4 run=runs/cifar10-cpu/$1 flag=""
  shift 4
  [ -f $run/last.pt ] && flag=--resume
  anycost train $model --recipe cpu30 --epochs $epochs --data-dir "$DATA" --out $run $flag \
    --threads ${THREADS:-2} --set "model_kwargs=$kw" "$@"
  cp $run/record.json $R/train/$name.cifar10.json
  anycost calibrate $run --data-dir "$DATA" --name $name --split holdout --export $name.cifar10 \
    --record $R/calibrate/$name.cifar10.json
  anycost bench $name.cifar10 --data-dir "$DATA" --split holdout --threads 2 --record $R/bench/$name.cifar10.json
}

# D8=0 / R6=0 / R6B=0 / R6FT=0 / R6KD=0 / R6KD2=0 / R6SW=0 / R9KD=0 / R6NC=0 / R9LKD=0 (and KD=0, CHAIN=0, BNAUG=0, UNIT=0 below) skip a model's train, calibrate and bench (e.g. to redraw the plot and table only)
if [ "${D8:-1}" = 1 ]; then
  cnmm cnmm_d8 cnmm_d8 ${CNMM_EPOCHS:-14} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.7}'
fi
# The residual grid (ResCNMM, README "our design"): 24 epochs of the cpu recipe at ~2 min each,
# one network of the mixture per batch, every optional edge kept with probability at most 0.6.
if [ "${R6:-1}" = 1 ]; then
  cnmm cnmm_r6 cnmm_r6 24 '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}'
fi
# The same grid and recipe trained by budget sampling (cnmm_r6b): each batch runs the network
# that edge pruning keeps at a random MAC budget, so the networks trained are the ones deployed.
if [ "${R6B:-1}" = 1 ]; then
  cnmm cnmm_r6b cnmm_r6b 24 '{"cost_weight": 0.1, "slim_l1": 0.1}'
  python benchmarks/cnmm_prune_order.py cnmm_r6b.cifar10 --data-dir "$DATA" \
    --record $R/eval/cnmm_r6b-prune-order.json > benchmarks/cnmm_r6b_prune_order.md
fi
# cnmm_r6 trained on (cnmm_r6_ft): 20 more epochs from its final weights, one-cycle at peak lr
# 0.05, same kwargs; 44 epochs in all (R6FT=0 skips)
if [ "${R6FT:-1}" = 1 ]; then
  cnmm cnmm_r6_ft cnmm_r6 20 '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' \
    --lr 0.05 --init-from runs/cifar10-cpu/cnmm_r6
fi
# cnmm_r6_ft trained on once more, distilled from the static ResNet-56 (cnmm_r6_kd): R6KD_EPOCHS
# (default 40) epochs from the zoo's cnmm_r6_ft, one-cycle at peak lr 0.05, bf16 autocast, same
# kwargs, distill 1 at T 4 (R6KD=0 skips)
if [ "${R6KD:-1}" = 1 ]; then
  cnmm cnmm_r6_kd cnmm_r6 ${R6KD_EPOCHS:-40} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' \
    --lr 0.05 --amp bf16 --init-from cnmm_r6_ft.cifar10 --teacher resnet56.cifar10 --distill 1
  # the zoo entry's shipped points, re-measured from its float16 weights
  anycost eval cnmm_r6_kd.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/cnmm_r6_kd.cifar10-holdout.json
fi
# A longer schedule (cnmm_r6_kd2): cnmm_r6_kd trained on for R6KD2_EPOCHS (default 40) more epochs,
# exactly as R6KD (its zoo weights, peak lr 0.05, bf16, teacher resnet56, distill 1, same kwargs),
# to test whether the flat top of the distilled curves is under-training (R6KD2=0 skips)
if [ "${R6KD2:-1}" = 1 ]; then
  cnmm cnmm_r6_kd2 cnmm_r6 ${R6KD2_EPOCHS:-40} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' \
    --lr 0.05 --amp bf16 --init-from cnmm_r6_kd.cifar10 --teacher resnet56.cifar10 --distill 1
  anycost eval cnmm_r6_kd2.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/cnmm_r6_kd2.cifar10-holdout.json
fi
# cnmm_r6_ft trained on with the sandwich rule (cnmm_r6_sw): as R6KD, but every step also trains
# the full network (every edge at its inference weight) and the cheapest one, loss and
# distillation averaged over the three (kwarg sandwich); R6SW_EPOCHS (default 20) epochs, as a
# step costs about twice R6KD's (R6SW=0 skips)
if [ "${R6SW:-1}" = 1 ]; then
  cnmm cnmm_r6_sw cnmm_r6 ${R6SW_EPOCHS:-20} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6, "sandwich": true}' \
    --lr 0.05 --amp bf16 --init-from cnmm_r6_ft.cifar10 --teacher resnet56.cifar10 --distill 1
fi
# A deeper residual grid (cnmm_r9_kd): cnmm_r9's longest path is ResNet-20 deep where cnmm_r6's
# is ResNet-14 deep (the flat top of r6's curves). Trained from scratch, distilled as R6KD
# (teacher resnet56, distill 1, bf16), R9KD_EPOCHS (default 40) epochs of cpu30 at its own lr,
# same kwargs (R9KD=0 skips)
if [ "${R9KD:-1}" = 1 ]; then
  cnmm cnmm_r9_kd cnmm_r9 ${R9KD_EPOCHS:-40} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' \
    --amp bf16 --teacher resnet56.cifar10 --distill 1
  anycost eval cnmm_r9_kd.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/cnmm_r9_kd.cifar10-holdout.json
fi
# No cost term (cnmm_r6_nc): under cost weight 0.1, cnmm_r6_kd2 learned keep probabilities of
# ~0.05 for all its 32x32 and 16x16 edges (its 8x8 blocks stay near the 0.6 cap), and cnmm_r9_kd
# for its 16->8 diagonals, the only way from the higher resolutions into the 8x8 output
# (benchmarks/cnmm_probabilities.md): is the cost term what leaves an 8x8 stack?
# The same grid and kwargs with cost_weight 0, trained from scratch and distilled as R9KD
# (teacher resnet56, distill 1, bf16, cpu30 at its lr), R6NC_EPOCHS (default 40) epochs; the
# calibrated (greedy) order, not the cost term, then picks what each budget keeps (R6NC=0 skips)
if [ "${R6NC:-1}" = 1 ]; then
  cnmm cnmm_r6_nc cnmm_r6 ${R6NC_EPOCHS:-40} '{"cost_weight": 0.0, "slim_l1": 0.1, "keep_max": 0.6}' \
    --amp bf16 --teacher resnet56.cifar10 --distill 1
  anycost eval cnmm_r6_nc.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/cnmm_r6_nc.cifar10-holdout.json
fi
# Late down-sampling (cnmm_r9l_kd): in cnmm_r9 the always-on diagonals down-sample at depths 1
# and 2, so every network of the mixture has an 8x8 trunk from depth 2 on and the higher
# resolutions only join it through optional 16->8 diagonals, whose learned probabilities fell
# to ~0.06 (benchmarks/cnmm_probabilities.md); greedy then kept 8x8 stacks. cnmm_r9l starts
# the 16x16 scale at depth 3 and the 8x8 one at depth 6 (its longest trunk: 2 blocks at 32x32,
# a diagonal and 2 at 16x16, a diagonal and 3 at 8x8: ResNet-20's 40.55 M MACs). Trained as
# R9KD (from scratch, teacher resnet56, distill 1, bf16, same kwargs) but R9LKD_EPOCHS (default
# 30) epochs, as an epoch here took ~90 s against R9KD's ~61 (R9LKD=0 skips)
if [ "${R9LKD:-1}" = 1 ]; then
  cnmm cnmm_r9l_kd cnmm_r9l ${R9LKD_EPOCHS:-30} '{"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' \
    --amp bf16 --teacher resnet56.cifar10 --distill 1
  anycost eval cnmm_r9l_kd.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/cnmm_r9l_kd.cifar10-holdout.json
fi
# Control for R6KD: static ResNets distilled the same way (30 epochs of cpu30, bf16, teacher
# resnet56, distill 1), one per depth in KD_DEPTHS, to see how much of the distilled CNMM's gain
# distillation alone gives (KD=0 skips)
if [ "${KD:-1}" = 1 ]; then
  for d in ${KD_DEPTHS:-8 14 20 32}; do
    run=runs/cifar10-cpu/resnet${d}_kd flag=""
    [ -f $run/last.pt ] && flag=--resume
    anycost train resnet$d --recipe cpu30 --amp bf16 --teacher resnet56.cifar10 --distill 1 --data-dir "$DATA" \
      --out $run $flag --threads ${THREADS:-2}
    cp $run/record.json $R/train/resnet${d}_kd.cifar10.json
    anycost eval $run --data-dir "$DATA" --split holdout --record $R/eval/resnet${d}_kd.cifar10-holdout.json
  done
fi
# The cheapest network (stem -> two diagonal edges -> head) trained alone, 30 epochs like the
# static ResNets (every optional edge at probability zero), against the same network taken out
# of each mixture (CHAIN=0 skips)
if [ "${CHAIN:-1}" = 1 ]; then
  run=runs/cifar10-cpu/cnmm_r6_chain flag=""
  [ -f $run/last.pt ] && flag=--resume
  anycost train cnmm_r6 --recipe cpu30 --epochs 30 --data-dir "$DATA" --out $run $flag --threads ${THREADS:-2} \
    --set 'model_kwargs={"init_logit": -100.0, "keep_max": 1.0}'
  cp $run/record.json $R/train/cnmm_r6_chain.cifar10.json
  python benchmarks/cnmm_chain.py cnmm_r6.cifar10 cnmm_r6b.cifar10 $run --data-dir "$DATA" \
    --record $R/eval/cnmm_r6-chain.json > benchmarks/cnmm_chain.md
fi

# The older residual-grid zoo models re-calibrated with BN statistics re-estimated on augmented
# training batches (their original records used plain ones), into -bnaug records beside the
# originals; no --export, so the zoo entries keep their points (BNAUG=0 skips)
if [ "${BNAUG:-1}" = 1 ]; then
  for name in cnmm_r6_ft cnmm_r6 cnmm_r6b; do
    anycost calibrate $name.cifar10 --data-dir "$DATA" --name $name --split holdout \
      --record $R/calibrate/$name.cifar10-bnaug.json
  done
fi
# greedy-unit (greedy's networks with kept edges at weight 1) for the distilled grids trained
# before it existed: every mechanism again, from their zoo entries, reusing the greedy order of
# their calibrate records (the search took 7 and 37 min), into -unit records; the zoo entries
# ship this new set of points, and the eval records are re-measured from them (UNIT=0 skips)
if [ "${UNIT:-1}" = 1 ]; then
  for name in cnmm_r6_kd cnmm_r9_kd; do
    anycost calibrate $name.cifar10 --data-dir "$DATA" --name $name --split holdout \
      --greedy-path $R/calibrate/$name.cifar10.json --export $name.cifar10 --record $R/calibrate/$name.cifar10-unit.json
    anycost eval $name.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/$name.cifar10-holdout.json
  done
  # the weight-1 gain on calib as well as holdout (both weightings of the same networks)
  python benchmarks/cnmm_unit_weights.py cnmm_r6_kd.cifar10 --data-dir "$DATA" --path $R/calibrate/cnmm_r6_kd.cifar10.json \
    --record $R/eval/cnmm_r6_kd-unit-weights.json > benchmarks/cnmm_unit_weights.md
fi

static=$(ls $R/eval/resnet{8,14,20,32,56}.cifar10-holdout.json)
others=$R/calibrate/select_resnet8_resnet14_resnet20.cifar10.json  # the best other family, for scale
# the KD control: ResNet-8, -14 and -20 make the distilled frontier of the gap tables (the
# README's numbers); ResNet-32, trained last, is drawn in the plots and compared in the README
distilled=$(ls $R/eval/resnet{8,14,20}_kd.cifar10-holdout.json 2>/dev/null || true)
distilled_all=$(ls $R/eval/resnet*_kd.cifar10-holdout.json 2>/dev/null || true)
cnmms=$(ls $R/calibrate/cnmm_{d8,r6,r6b,r6_ft,r6_kd,r6_kd2,r6_sw,r9_kd,r6_nc,r9l_kd}.cifar10{,-e30}.json 2>/dev/null || true)  # not every run has an -e30 twin
anycost plot $static $distilled_all $others $cnmms -o benchmarks/cnmm_cifar10.png --static-group 'static, distilled from ResNet-56=*_kd' \
    --exclude '*fixed exit' --exclude '*oracle*' --exclude 'cnmm_d8: channels*' --exclude 'cnmm_d8: both*' \
    --exclude '*: channels' --exclude '*: both' --exclude 'cnmm_r*: *+bn' --exclude 'cnmm_r*: channels*' \
    --exclude '*: greedy-unit' \
  --title "CIFAR-10 holdout: each CNMM trained once, pruned to many budgets (runs: README, CNMM section)"
# the distilled grids alone against both static frontiers: greedy (mean-field weights) and
# greedy-unit with BN re-estimation (the zoo's current points for r6_kd and r9_kd)
kdcnmms=$(ls $R/calibrate/cnmm_{r6_kd,r9_kd}.cifar10-unit.json $R/calibrate/cnmm_{r6_kd2,r6_nc,r9l_kd}.cifar10.json 2>/dev/null || true)
anycost plot $static $distilled_all $kdcnmms -o benchmarks/cnmm_distilled.png --static-group 'static, distilled from ResNet-56=*_kd' \
    --exclude '*: edges*' --exclude '*: channels*' --exclude '*: both*' --exclude '*: greedy+bn' --exclude '*: greedy-unit' \
  --title "CIFAR-10 holdout: distilled CNMMs against static ResNets"
{
  anycost report $static $cnmms --summary
  echo
  anycost report $static $cnmms $(ls $R/bench/cnmm_{d8,d8_e30,r6,r6b,r6_ft,r6_kd,r6_kd2,r6_sw,r9_kd,r6_nc,r9l_kd}.cifar10.json 2>/dev/null)
  echo
  echo "The residual grids' greedy points against the static frontier at equal MACs (linear in MACs between static networks)"
  echo
  anycost report $static $distilled $(ls $R/calibrate/cnmm_{r6,r6_ft,r6_kd,r6_kd2,r6_sw,r9_kd,r6_nc,r9l_kd}.cifar10.json 2>/dev/null) \
    --gap 'cnmm_r*: greedy' --gap-to 'static=resnet*.cifar10' --gap-to 'static distilled=resnet*_kd'
  echo
  echo "The distilled grids' greedy-unit+bn points (kept edges at weight 1, BN re-estimated) against the same frontiers"
  echo
  anycost report $static $distilled $kdcnmms --gap 'cnmm_r*: greedy-unit+bn' \
    --gap-to 'static=resnet*.cifar10' --gap-to 'static distilled=resnet*_kd'
} > benchmarks/cnmm_cifar10.md
# the residual grids' learned keep probabilities by kind of edge (no data needed)
zoo=$(anycost zoo 2>/dev/null)
python benchmarks/cnmm_probabilities.py $(for n in r6 r6_ft r6_kd r6_kd2 r6_sw r9_kd r6_nc r9l_kd; do
  grep -qw "cnmm_$n.cifar10" <<< "$zoo" && echo cnmm_$n.cifar10; done) \
  --record $R/eval/cnmm-probabilities.json > benchmarks/cnmm_probabilities.md
