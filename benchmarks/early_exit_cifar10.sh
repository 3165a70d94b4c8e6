#!/usr/bin/env bash
# PROVENANCE: written for the pre-contract CLI and zoo names (commit 66c48e7: `anycost export`, `calibrate --export`,
# `NAME.cifar10` entries). It records how the committed numbers were made; to re-run it as written,
# check out that commit. The same steps today: `anycost train`, `anycost calibrate --save`, `anycost publish`.
# Early exit and network selection on CIFAR-10 (issue 4). Needs the static zoo models
# (benchmarks/static_cifar10.sh). Trains (resumable, ~1 h each when not done yet) a two-stage
# multi-exit ResNet-20 (heads only, on the frozen zoo resnet20) and a jointly trained one.
# Policies are chosen on `calib` (first half of val) and measured on `holdout` (second half).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
R=benchmarks/records
mkdir -p $R/calibrate $R/eval $R/bench $R/train

# train (resumable), choose operating points on calib, export to the zoo, measure on holdout
ee_model() {  # model run-dir zoo-name label train-args...
  local model=$1 run=$2 name=$3 label=$4; shift 4
  local flag=""; [ -f $run/last.pt ] && flag=--resume
  anycost train $model --recipe cpu30 --data-dir "$DATA" --out $run $flag "$@"
  cp $run/record.json $R/train/$name.json
  anycost calibrate $run --data-dir "$DATA" --name "$label" --export $name --record $R/calibrate/$name.json
  anycost eval $name --data-dir "$DATA" --split holdout --record $R/eval/$name-holdout.json
  anycost bench $name --data-dir "$DATA" --split holdout --threads 2 --record $R/bench/$name.json
}

# two-stage: heads only, on the frozen zoo resnet20 (the recipe shortened to EE_EPOCHS epochs)
if [ -f src/anycost/zoo/resnet20.cifar10.pt ]; then
  ee_model ee_resnet20 runs/cifar10-cpu/ee_resnet20_heads ee_resnet20_heads.cifar10 "ee_resnet20 (two-stage)" \
    --epochs ${EE_EPOCHS:-10} --init-from resnet20.cifar10 --set 'model_kwargs={"mode": "heads"}'
fi
# jointly trained from scratch, the full recipe: exits after blocks 1, 2, 3 and 5 of 9, and
# self-distillation of the early exits from the last one
ee_model ee_resnet20 runs/cifar10-cpu/ee_resnet20 ee_resnet20.cifar10 "ee_resnet20 (joint)" \
  --set 'model_kwargs={"mode": "joint", "exits": "stage+1+3", "distill": 0.5, "distill_temp": 3.0}'
# the same with exits at the stage ends only (the committed run trained with --device cuda)
ee_model ee_resnet20 runs/cifar10-cpu/ee_resnet20_stage ee_resnet20_stage.cifar10 "ee_resnet20 (joint, stage exits)" \
  --set 'model_kwargs={"mode": "joint", "exits": "stage", "distill": 0.5, "distill_temp": 3.0}'
# two-stage on the deeper zoo resnet56: an exit every 3 blocks (8 exits and the last)
if [ -f src/anycost/zoo/resnet56.cifar10.pt ]; then
  ee_model ee_resnet56 runs/cifar10-cpu/ee_resnet56_heads ee_resnet56_heads.cifar10 "ee_resnet56 (two-stage)" \
    --epochs ${EE_EPOCHS:-10} --init-from resnet56.cifar10 --set 'model_kwargs={"mode": "heads", "exits": "every3"}'
fi
# two-stage on resnet56 with BranchyNet-style side branches (about one residual block each) after
# blocks 2, 5, 8, 13 and 17 of 27, then a joint fine-tune of the whole model from that run
# (both in bfloat16 autocast: 1.8x faster per step on this CPU)
if [ -f src/anycost/zoo/resnet56.cifar10.pt ]; then
  BRANCH='"exits": "2+5+8+13+17", "head": "branch", "distill": 0.5, "distill_temp": 3.0'
  ee_model ee_resnet56 runs/cifar10-cpu/ee_resnet56_branch ee_resnet56_branch.cifar10 "ee_resnet56 (two-stage, branch heads)" \
    --epochs 15 --amp bf16 --init-from resnet56.cifar10 --set "model_kwargs={\"mode\": \"heads\", $BRANCH}"
  ee_model ee_resnet56 runs/cifar10-cpu/ee_resnet56_branch_joint ee_resnet56_branch_joint.cifar10 \
    "ee_resnet56 (joint fine-tune, branch heads)" --epochs 10 --lr 0.03 --amp bf16 \
    --init-from runs/cifar10-cpu/ee_resnet56_branch --set "model_kwargs={\"mode\": \"joint\", $BRANCH}"
fi

# network selection over the static zoo ResNets that exist, cheapest first
for cascade in "${CASCADE:-resnet8 resnet14 resnet20}" "resnet8 resnet20 resnet56" "resnet8 resnet14 resnet20 resnet56" \
    "resnet8 resnet14 resnet20 resnet32 resnet56"; do
  members=()
  for m in $cascade; do
    [ -f src/anycost/zoo/$m.cifar10.pt ] && members+=("$m.cifar10")
  done
  if [ ${#members[@]} -ge 2 ]; then
    name="select_$(IFS=_; echo "${members[*]//.cifar10/}").cifar10"
    anycost calibrate --cascade "${members[@]}" --data-dir "$DATA" --metrics maxprob --name "selection ${members[*]//.cifar10/}" \
      --export "$name" --record $R/calibrate/$name.json
    anycost eval "$name" --data-dir "$DATA" --split holdout --record $R/eval/$name-holdout.json
    anycost bench "$name" --data-dir "$DATA" --split holdout --threads 2 --record $R/bench/$name.json
  fi
done

# one plot and one table against the static family (all measured on holdout)
static=$(ls $R/eval/resnet{8,14,20,32,56}.cifar10-holdout.json 2>/dev/null || true)
ee=$(ls $R/calibrate/ee_*.json $R/calibrate/select_*.json)
# the plot keeps max-prob thresholds and learned policies of the main models (every curve is in the .md)
anycost plot $static $ee -o benchmarks/early_exit_cifar10.png \
  --exclude '*(entropy)' --exclude '*(margin)' --exclude '*fixed exit' --exclude '*oracle*' \
  --exclude 'ee_resnet20 (two-stage)*' --exclude 'selection resnet8 resnet20:*' \
  --exclude 'selection resnet8 -> resnet14 -> resnet20 -> resnet56:*' --exclude 'ee_resnet56 (joint fine-tune)*' \
  --exclude 'ee_resnet56 (two-stage):*' --exclude 'selection resnet8 resnet14 resnet20:*' \
  --title "CIFAR-10 (holdout): early exit and network selection vs static ResNets"
{
  anycost report $static $ee --summary
  echo
  anycost report $static $ee --summary --reference resnet20.cifar10
  echo
  anycost report $static $ee --summary --reference resnet56.cifar10
  echo
  anycost report $static $ee $(ls $R/bench/resnet*.cifar10.json $R/bench/ee_*.json $R/bench/select_*.json 2>/dev/null)
} > benchmarks/early_exit_cifar10.md
