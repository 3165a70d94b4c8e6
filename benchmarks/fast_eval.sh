#!/usr/bin/env bash
# Issue #33's benchmarks: evaluation cost of the fast paths against one full pass and against
# real routing, peak memory, two repeated `bench` runs, and `reproduce --reuse` end to end.
# Run on a quiet machine (nothing else on the cores): bash benchmarks/fast_eval.sh
# Timing images: the first 10,000 of the training split (the test batch is held back here);
# accuracies on them mean nothing, only the times and the agreement of the paths do.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
R=benchmarks/records/fast-eval
mkdir -p $R
T="--threads 2"
L="--split train --limit 10000 --data-dir $DATA $T"

# multi-exit ResNet-56: every shipped point from one cached pass (checked on 1,000 images),
# one full pass of the static ResNet-56 for scale, and real routing on 2,000 images (the old path)
anycost eval ee_resnet56.branch_joint_cifar10 $L --record $R/ee56-fast.json
anycost eval resnet56.cpu30_cifar10 $L --record $R/r56-pass.json
anycost eval ee_resnet56.branch_joint_cifar10 --split train --limit 2000 --data-dir $DATA $T --real-routing --record $R/ee56-real-2000.json
anycost eval ee_resnet56.branch_joint_cifar10 --split train --limit 2000 --data-dir $DATA $T --record $R/ee56-fast-2000.json

# CNMM and L-Net: every shipped point, against one pass at the points' mean cost (interpolated
# between the two shipped points whose MACs bracket the mean, each evaluated alone)
anycost eval cnmm_r6.kd2_cifar10 $L --record $R/cnmm-all.json
anycost eval cnmm_r6.kd2_cifar10 $L --op 'greedy-unit 30%' --record $R/cnmm-one.json
anycost eval cnmm_r6.kd2_cifar10 $L --op 'greedy-unit 50%' --record $R/cnmm-two.json
anycost eval lnet_resnet56.kd2_cifar10 $L --record $R/lnet-all.json
anycost eval lnet_resnet56.kd2_cifar10 $L --op 'tau 0.980638' --record $R/lnet-one.json
anycost eval lnet_resnet56.kd2_cifar10 $L --op "$(python -c "import anycost; o = anycost.load('lnet_resnet56.kd2_cifar10').operating_points(); m = sum(p.macs for p in o) / len(o); print(min((p for p in o if p.macs < m), key=lambda p: m - p.macs).name)")" --record $R/lnet-two.json

# bench, twice each: do repeated runs agree?
for i in 1 2; do anycost bench ee_resnet56.branch_joint_cifar10 --data-dir $DATA --split holdout $T --record $R/bench-ee56-$i.json > /dev/null; done
for i in 1 2; do anycost bench resnet20.cpu30_cifar10 --data-dir $DATA --split holdout $T --record $R/bench-r20-$i.json > /dev/null; done

# the whole comparison from the zoo
anycost reproduce cifar10 --reuse --data-dir $DATA --out runs/reproduce-fast
cp runs/reproduce-fast/reproduce_record.json $R/reproduce-reuse.json

python benchmarks/fast_eval_summary.py $R
