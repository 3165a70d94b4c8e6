#!/usr/bin/env bash
# PROVENANCE: written for the pre-contract CLI and zoo names (commit 66c48e7: `anycost export`, `calibrate --export`,
# `NAME.cifar10` entries). It records how the committed numbers were made; to re-run it as written,
# check out that commit. The same steps today: `anycost train`, `anycost calibrate --save`, `anycost publish`.
# Static CIFAR-10 baselines with the `cpu` recipe (26 epochs each), then export to the zoo
# and measure on the validation halves. Long: run in the background, e.g.
#   nohup bash benchmarks/static_cifar10.sh > runs/static.log 2>&1 &
# A stopped run continues where it left off (--resume is automatic when last.pt exists).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
for m in ${MODELS:-resnet20 resnet8 resnet14 resnet32 resnet56}; do
  out=runs/cifar10-cpu/$m
  flag=""; [ -f "$out/last.pt" ] && flag=--resume
  anycost train "$m" --recipe cpu30 --data-dir "$DATA" --out "$out" $flag
  anycost export "$out" --name "$m.cifar10"
  mkdir -p benchmarks/records/train
  cp "$out/record.json" "benchmarks/records/train/$m.cifar10.json"
  for split in val holdout; do
    anycost eval "$m.cifar10" --data-dir "$DATA" --split $split --record "benchmarks/records/eval/$m.cifar10-$split.json"
  done
  anycost bench "$m.cifar10" --threads 2 --record "benchmarks/records/bench/$m.cifar10.json"
done
