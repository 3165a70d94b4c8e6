#!/bin/bash
# The training runs behind the fair frontier (#36), as two lanes that can share 2 CPU cores at
# one thread each: about 1.2x the images per second of one 2-thread run (ResNet-32's train record:
# 381 img/s on one thread beside ResNet-56's 213, which is 388 at ResNet-32's MACs, against about
# 640 alone on two); THREADS=2 and one lane finishes that lane first. Every step is skipped once
# done and resumed if interrupted, so
#   nohup benchmarks/frontier_queue.sh a > runs/frontier/a.log 2>&1 &
#   nohup benchmarks/frontier_queue.sh b > runs/frontier/b.log 2>&1 &
# pick up where the last session stopped. Lane a: ResNet-32, exits on it, a 180-epoch
# ResNet-20 (an equal-compute peer for the cascades), then the static networks distilled from
# the strong ResNet-56 (same-teacher peers; it waits for lane b's ResNet-56). Lane b:
# ResNet-56, then the families rebuilt on it. `python benchmarks/frontier.py` ships and evaluates what has finished.
# Env: DATA_DIR (CIFAR-10 batches), THREADS (per lane, default 1).
set -e
cd "$(dirname "$0")/.."
DATA=${DATA_DIR:-../shared/data/cifar-10-batches-py}
R=runs/frontier

finished() { [ -f "$1/record.json" ] && grep -q '"status": "done"' "$1/record.json"; }

step() {  # step OUT_DIR anycost-train-args...
  local out=$1; shift
  if finished "$out"; then return 0; fi
  local r=""; [ -f "$out/last.pt" ] && r="--resume"
  echo "== $(date -u +%FT%TZ) $out"
  anycost train "$@" --data-dir "$DATA" --threads "${THREADS:-1}" --out "$out" --no-progress $r
}

wait_for() {  # wait_for RUN_DIR: block until another lane has finished that run
  until finished "$1"; do sleep 300; done
}

# exits as in ee_resnet56_branch: BranchyNet side branches, self-distillation 0.5 at T=3;
# two stages: heads on the frozen backbone, then a short joint fine-tune at a low lr
ee() { echo "{\"mode\": \"$1\", \"exits\": \"$2\", \"head\": \"branch\", \"distill\": 0.5, \"distill_temp\": 3.0}"; }

case "$1" in
a)
  step $R/r32-cpu90 resnet32 --recipe cpu
  step $R/ee32-heads ee_resnet32 --recipe cpu30 --amp bf16 --epochs 15 --set "model_kwargs=$(ee heads 1+3+5+8)" --init-from $R/r32-cpu90
  step $R/ee32-joint ee_resnet32 --recipe cpu30 --amp bf16 --epochs 10 --lr 0.03 --set "model_kwargs=$(ee joint 1+3+5+8)" --init-from $R/ee32-heads
  step $R/r20-cpu180 resnet20 --recipe cpu --epochs 180
  wait_for $R/r56-cpu90
  for d in 20 8 14 32; do
    step $R/r$d-kd56 resnet$d --recipe cpu --teacher $R/r56-cpu90 --distill 1
  done
  ;;
b)
  step $R/r56-cpu90 resnet56 --recipe cpu
  step $R/ee56-heads ee_resnet56 --recipe cpu30 --amp bf16 --epochs 15 --set "model_kwargs=$(ee heads 2+5+8+13+17)" --init-from $R/r56-cpu90
  step $R/ee56-joint ee_resnet56 --recipe cpu30 --amp bf16 --epochs 10 --lr 0.03 --set "model_kwargs=$(ee joint 2+5+8+13+17)" --init-from $R/ee56-heads
  # L-Net as lnet_resnet56_kd2 (skip target 0.4, distilled from the backbone's own teacher)
  step $R/lnet56 lnet_resnet56 --recipe cpu30 --amp bf16 --epochs 8 --lr 0.05 --init-from $R/r56-cpu90 --teacher $R/r56-cpu90 --distill 2 \
    --set 'model_kwargs={"target": 0.4, "lam": 8, "penalty": "batch", "gate_l2": 0.01}'
  step $R/lcnet56 lcnet_resnet56 --recipe cpu30 --amp bf16 --epochs 5 --lr 0.03 --init-from $R/lnet56 --teacher $R/r56-cpu90 --distill 2 \
    --set 'model_kwargs={"target": 0.3, "lam": 8, "penalty": "batch", "gate_l2": 0.01, "channel_target": 0.5, "channel_lam": 32}' \
    --set 'lr_mult={"predictors": 10}'
  # a CNMM distilled from the strongest teacher, in one run at the cpu recipe (the kd2 chain's
  # grid and cost terms)
  step $R/cnmm56 cnmm_r6 --recipe cpu --teacher $R/r56-cpu90 --distill 1 \
    --set 'model_kwargs={"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}'
  ;;
*) echo "usage: $0 a|b" >&2; exit 2 ;;
esac
