#!/bin/bash
# The training runs behind the fair frontier (#36), one job per argument, in order:
#   mkdir -p runs/frontier && nohup benchmarks/frontier_queue.sh r56 ee56 > runs/frontier/queue.log 2>&1 &
# Each job trains, then ships its zoo entry and its holdout record (benchmarks/frontier.py --only),
# so the next job can start from it. A job is skipped once its zoo entry is shipped
# (src/anycost/zoo/NAME.json), and a run folder with last.pt is resumed. Run folders (runs/) do not outlive a session on the project's
# machines, so each job is sized to finish inside one 180-minute session on 2 cores, and jobs
# that build on an earlier one start from its shipped zoo entry, not from its run folder.
# Env: DATA_DIR (CIFAR-10 batches), THREADS (default 2).
#
#   job      zoo entry                  run(s) under runs/frontier      about (2 cores, bf16; from past runs' epochs)
#   r32      resnet32.cpu_cifar10       r32-cpu90                       55 min
#   ee32     ee_resnet32.cpu_cifar10    ee32-heads, ee32-joint          25 min
#   r56      resnet56.cpu64_cifar10     r56-cpu64                       110 min (measured: 106)
#   r20x2    resnet20.cpu180_cifar10    r20-cpu180                      110 min
#   ee56     ee_resnet56.cpu_cifar10    ee56-heads, ee56-joint          40 min (measured: 15 x 38 s + 10 x 124-137 s)
#   lnet56   lnet_resnet56.cpu_cifar10  lnet56                          25 min (measured: 8 x 152-155 s)
#   lcnet56  lcnet_resnet56.cpu_cifar10 lcnet56 (from lnet56)           20 min (measured: 5 x 173-175 s)
#   cnmm56   cnmm_r6.cpu_cifar10        cnmm56                          115 min (90 x 73-78 s with the ResNet-56 teacher)
#   kdD      resnetD.cpu_kd_cifar10     rD-kd56, D in 8 14 20 32        70 / 85 / 105 / 135 min
# Shared cores stretch these: an lnet56 epoch took 976 s beside a calibration and a CI run.
set -e
cd "$(dirname "$0")/.."
DATA=${DATA_DIR:-../shared/data/cifar-10-batches-py}
R=runs/frontier
R56=resnet56.cpu64_cifar10  # the strong ResNet-56, as shipped: teacher and starting point

shipped() { [ -f "src/anycost/zoo/$1.json" ]; }
ship() { python benchmarks/frontier.py --data-dir "$DATA" --only "$@"; }
finished() { [ -f "$1/record.json" ] && grep -q '"status": "done"' "$1/record.json"; }

step() {  # step OUT_DIR anycost-train-args...
  local out=$1; shift
  if finished "$out"; then return 0; fi
  local r=""; [ -f "$out/last.pt" ] && r="--resume"
  echo "== $(date -u +%FT%TZ) $out"
  anycost train "$@" --data-dir "$DATA" --threads "${THREADS:-2}" --out "$out" --no-progress $r
}

# exits as in ee_resnet56_branch: BranchyNet side branches, self-distillation 0.5 at T=3;
# two stages: heads on the frozen backbone, then a short joint fine-tune at a low lr
ee() { echo "{\"mode\": \"$1\", \"exits\": \"$2\", \"head\": \"branch\", \"distill\": 0.5, \"distill_temp\": 3.0}"; }

entry() {  # the zoo entry a job ships
  case "$1" in
  r32) echo resnet32.cpu_cifar10 ;;
  r56) echo $R56 ;;
  r20x2) echo resnet20.cpu180_cifar10 ;;
  ee32|ee56) echo "ee_resnet${1#ee}.cpu_cifar10" ;;
  lnet56|lcnet56) echo "${1%56}_resnet56.cpu_cifar10" ;;
  cnmm56) echo cnmm_r6.cpu_cifar10 ;;
  kd8|kd14|kd20|kd32) echo "resnet${1#kd}.cpu_kd_cifar10" ;;
  *) echo "unknown job '$1' (see the table at the top of $0)" >&2; return 2 ;;
  esac
}

job() {  # train a job's runs (the caller skips a job whose entry is shipped)
  case "$1" in
  r32) step $R/r32-cpu90 resnet32 --recipe cpu ;;
  ee32)
    step $R/ee32-heads ee_resnet32 --recipe cpu30 --amp bf16 --epochs 15 --set "model_kwargs=$(ee heads 1+3+5+8)" --init-from resnet32.cpu_cifar10
    step $R/ee32-joint ee_resnet32 --recipe cpu30 --amp bf16 --epochs 10 --lr 0.03 --set "model_kwargs=$(ee joint 1+3+5+8)" --init-from $R/ee32-heads ;;
  r56) step $R/r56-cpu64 resnet56 --recipe cpu --epochs 64 ;;
  r20x2) step $R/r20-cpu180 resnet20 --recipe cpu --epochs 180 ;;
  ee56)
    step $R/ee56-heads ee_resnet56 --recipe cpu30 --amp bf16 --epochs 15 --set "model_kwargs=$(ee heads 2+5+8+13+17)" --init-from $R56
    step $R/ee56-joint ee_resnet56 --recipe cpu30 --amp bf16 --epochs 10 --lr 0.03 --set "model_kwargs=$(ee joint 2+5+8+13+17)" --init-from $R/ee56-heads ;;
  # L-Net as lnet_resnet56_kd2 (skip target 0.4, distilled from the backbone itself)
  lnet56) step $R/lnet56 lnet_resnet56 --recipe cpu30 --amp bf16 --epochs 8 --lr 0.05 \
    --init-from $R56 --teacher $R56 --distill 2 --set 'model_kwargs={"target": 0.4, "lam": 8, "penalty": "batch", "gate_l2": 0.01}' ;;
  lcnet56) step $R/lcnet56 lcnet_resnet56 --recipe cpu30 --amp bf16 --epochs 5 --lr 0.03 \
    --init-from lnet_resnet56.cpu_cifar10 --teacher $R56 --distill 2 \
    --set 'model_kwargs={"target": 0.3, "lam": 8, "penalty": "batch", "gate_l2": 0.01, "channel_target": 0.5, "channel_lam": 32}' \
    --set 'lr_mult={"predictors": 10}' ;;
  # a CNMM distilled from the strongest teacher in one run (the kd2 chain's grid and cost terms)
  cnmm56) step $R/cnmm56 cnmm_r6 --recipe cpu --teacher $R56 --distill 1 \
    --set 'model_kwargs={"cost_weight": 0.1, "slim_l1": 0.1, "keep_max": 0.6}' ;;
  kd*) local d=${1#kd}
    step $R/r$d-kd56 resnet$d --recipe cpu --teacher $R56 --distill 1 ;;
  esac
}

[ $# -gt 0 ] || { echo "usage: $0 JOB... (see the table at the top of $0)" >&2; exit 2; }
for j in "$@"; do entry "$j" > /dev/null || exit 2; done  # every name checked before hours of training
for j in "$@"; do
  e=$(entry "$j")
  shipped "$e" || job "$j"
  ship "$e"
done
