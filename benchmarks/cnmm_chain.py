"""The cheapest network of a residual CNMM (stem -> the two always-on diagonal edges -> head)
taken out of each jointly trained mixture, against the same network trained alone.

The network trained alone is ``cnmm_r6`` with every optional edge's probability at zero, so
training never runs them (30 epochs of the `cpu` recipe, like the static ResNets):

    anycost train cnmm_r6 --recipe cpu30 --epochs 30 --data-dir ../shared/data \
        --out runs/cifar10-cpu/cnmm_r6_chain --set 'model_kwargs={"init_logit": -100.0, "keep_max": 1.0}'
    python benchmarks/cnmm_chain.py cnmm_r6.cifar10 cnmm_r6b.cifar10 runs/cifar10-cpu/cnmm_r6_chain \
        --data-dir ../shared/data --record benchmarks/records/eval/cnmm_r6-chain.json > benchmarks/cnmm_chain.md

Every model is measured on `calib` and `holdout`, no BN re-estimation; nothing is chosen
from either. Writes a markdown table to stdout and a JSON record.
"""
import argparse

import torch

from anycost.data import load_dataset
from anycost.eval import OperatingPoint, evaluate_curve
from anycost.models.cnmm import PruneSpec, ResCNMM
from anycost.records import make_record, write_json_atomic
from anycost.zoo import resolve_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="residual CNMMs: zoo names, checkpoints or run folders")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--record", help="write a JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sd = load_dataset("cifar10", args.data_dir)
    rows = []
    for name in args.models:
        m = resolve_model(name)
        meta = m.pretrained_cfg
        if not isinstance(m, ResCNMM):
            raise SystemExit(f"{name} is not a residual CNMM")
        chain = PruneSpec(sorted(e for e, k in enumerate(m.mandatory.tolist()) if k))
        op = OperatingPoint("chain", {"prune": chain.to_dict()})
        mean, std = meta.get("mean", sd.mean), meta.get("std", sd.std)
        cal, hold = (evaluate_curve(m, sd.get(split), mean, std, [op], batch_size=500).points[0]
                     for split in ("calib", "holdout"))
        rows.append({"model": name, "macs": hold.macs_mean, "calib": cal.accuracy, "holdout": hold.accuracy})
    print("| cheapest network of | MACs (M) | calib top-1 (%) | holdout top-1 (%) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['macs'] / 1e6:.2f} | {r['calib']:.2f} | {r['holdout']:.2f} |")
    if args.record:
        write_json_atomic(args.record, make_record("cnmm-chain", {"models": args.models}, {"rows": rows}))


if __name__ == "__main__":
    main()
