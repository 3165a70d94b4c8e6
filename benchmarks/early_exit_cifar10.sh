#!/usr/bin/env bash
# Early exit and network selection on CIFAR-10 (issue 4). Needs the static zoo models
# (benchmarks/static_cifar10.sh). Trains the two-stage multi-exit ResNet-20 first (heads
# only, on the frozen zoo resnet20; the `cpu` recipe shortened to EE_EPOCHS epochs; resumable).
# Policies are chosen on `calib` (first half of val) and measured on `holdout` (second half).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
R=benchmarks/records
mkdir -p $R/calibrate $R/eval $R/bench $R/train

run=runs/cifar10-cpu/ee_resnet20_heads
if [ -f src/anycost/zoo/resnet20.cifar10.pt ]; then
  flag=""; [ -f $run/last.pt ] && flag=--resume
  anycost train ee_resnet20 --recipe cpu --data-dir "$DATA" --epochs ${EE_EPOCHS:-10} --init-from resnet20.cifar10 \
    --set 'model_kwargs={"mode": "heads"}' --out $run $flag
  cp $run/record.json $R/train/ee_resnet20_heads.cifar10.json
  anycost calibrate $run --data-dir "$DATA" --name "ee_resnet20 (two-stage)" \
    --export ee_resnet20_heads.cifar10 --record $R/calibrate/ee_resnet20_heads.cifar10.json
  anycost eval ee_resnet20_heads.cifar10 --data-dir "$DATA" --split holdout --record $R/eval/ee_resnet20_heads.cifar10-holdout.json
  anycost bench ee_resnet20_heads.cifar10 --data-dir "$DATA" --split holdout --threads 2 --record $R/bench/ee_resnet20_heads.cifar10.json
fi

# network selection over the static zoo ResNets that exist, cheapest first
members=()
for m in ${CASCADE:-resnet8 resnet14 resnet20}; do
  [ -f src/anycost/zoo/$m.cifar10.pt ] && members+=("$m.cifar10")
done
if [ ${#members[@]} -ge 2 ]; then
  name="select_$(IFS=_; echo "${members[*]//.cifar10/}").cifar10"
  anycost calibrate --cascade "${members[@]}" --data-dir "$DATA" --metrics maxprob --name "selection ${members[*]//.cifar10/}" \
    --export "$name" --record $R/calibrate/$name.json
  anycost eval "$name" --data-dir "$DATA" --split holdout --record $R/eval/$name-holdout.json
  anycost bench "$name" --data-dir "$DATA" --split holdout --threads 2 --record $R/bench/$name.json
fi

# one plot and one table against the static family (all measured on holdout)
static=$(ls $R/eval/resnet*.cifar10-holdout.json 2>/dev/null || true)
anycost plot $static $R/calibrate/*.json -o benchmarks/early_exit_cifar10.png \
  --title "CIFAR-10: early exit and network selection vs static ResNets (measured on holdout)"
anycost report $static $R/calibrate/*.json $(ls $R/bench/resnet*.cifar10.json $R/bench/ee_*.json $R/bench/select_*.json 2>/dev/null) \
  > benchmarks/early_exit_cifar10.md
