"""Which edges to drop first on the residual CNMM: probability order (the default, which may
cut a scale's last exit and every later edge of that scale with it) against probability order
that takes removals cutting nothing else first (``prune_edges(avoid_cascades=True)``).

    python benchmarks/cnmm_prune_order.py cnmm_r6.cifar10 --data-dir ../shared/data \
        --record benchmarks/records/eval/cnmm_r6-prune-order.json > benchmarks/cnmm_prune_order.md

Both orders are measured on `calib` (the split that may choose between them) and on
`holdout` (the split the README reports), no BN re-estimation. Writes a markdown table to
stdout and a JSON record.
"""
import argparse

import torch

from anycost.data import load_dataset
from anycost.eval import OperatingPoint, evaluate_curve
from anycost.records import make_record, write_json_atomic
from anycost.zoo import resolve_model

FRACTIONS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a residual CNMM: zoo name, checkpoint or run folder")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--record", help="write a JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    m = resolve_model(args.model)
    meta = m.pretrained_cfg
    sd = load_dataset("cifar10", args.data_dir)
    mean, std = meta.get("mean", sd.mean), meta.get("std", sd.std)
    rows = []
    for avoid in (False, True):
        ops = [OperatingPoint(f"edges {f:.0%}", {"prune": m.prune_edges(f * m.full_macs(), avoid_cascades=avoid).to_dict()})
               for f in FRACTIONS]
        cal, hold = (evaluate_curve(m, sd.get(split), mean, std, ops, batch_size=500).points
                     for split in ("calib", "holdout"))
        rows += [{"order": "avoid cascades" if avoid else "probability", "fraction": f, "calib": c.accuracy,
                  "holdout": h.accuracy, "macs": h.macs_mean} for f, c, h in zip(FRACTIONS, cal, hold)]
    print("| edge order | budget | MACs (M) | calib top-1 (%) | holdout top-1 (%) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['order']} | {r['fraction']:.0%} | {r['macs'] / 1e6:.2f} | {r['calib']:.2f} | {r['holdout']:.2f} |")
    if args.record:
        write_json_atomic(args.record, make_record("prune-order", {"model": args.model, "fractions": FRACTIONS},
                                                   {"rows": rows}))


if __name__ == "__main__":
    main()
