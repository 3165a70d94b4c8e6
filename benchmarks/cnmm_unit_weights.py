"""Greedy's networks at mean-field weights (p_e) and at weight 1 (greedy-unit), with and
without BN re-estimation, on calib as well as holdout: is the weight-1 gain seen on holdout
also there on calib, so that choosing greedy-unit+bn is not read off the reported split?
Both variants are the same networks, whose order was chosen on calib, so the comparison
between them on calib is fair (their absolute calib accuracy is not).

    python benchmarks/cnmm_unit_weights.py cnmm_r6_kd.cifar10 --data-dir ../shared/data \
        --path benchmarks/records/calibrate/cnmm_r6_kd.cifar10.json \
        --record benchmarks/records/eval/cnmm_r6_kd-unit-weights.json > benchmarks/cnmm_unit_weights.md
"""
import argparse

from anycost.models.cnmm import bn_statistics_loader
from anycost.data import load_dataset
from anycost.eval import evaluate_classifier
from anycost.models.cnmm import PruneSpec, check_path, reestimate_bn
from anycost.records import make_record, read_record, write_json_atomic
from anycost.zoo import resolve_model

SPLITS = ("calib", "holdout")
VARIANTS = ("greedy", "greedy+bn", "greedy-unit", "greedy-unit+bn")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="CNMM: zoo name, .pt or run folder")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--path", required=True, help="calibrate record whose greedy_path to use")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    data = load_dataset("cifar10", data_dir=a.data_dir)
    model = resolve_model(a.model)
    meta = model.pretrained_cfg
    path = check_path(model, read_record(a.path)["results"]["greedy_path"])
    loader = bn_statistics_loader(data, data.mean, data.std, train_augment=meta.get("train_augment"))
    bn_batches = [b for _, b in zip(range(a.batches), loader)]  # the same batches for every network
    rows = []
    for spec in path[::2] + ([path[-1]] if len(path) % 2 == 0 else []):
        row = {"macs": model.spec_macs(spec), "edges": spec.edges}
        for v in VARIANTS:
            net = model.build_pruned(PruneSpec(spec.edges, unit_weights=v.startswith("greedy-unit")))
            if v.endswith("+bn"):
                reestimate_bn(net, bn_batches, a.batches)
            row[v] = {s: evaluate_classifier(net, data.get(s), data.mean, data.std)["top1"] for s in SPLITS}
        rows.append(row)
    print(f"`{a.model}`, greedy order of `{a.path}`; top-1 (%) on calib / holdout\n")
    print("| MACs (M) | " + " | ".join(VARIANTS) + " |\n|---:|" + "---:|" * len(VARIANTS))
    for r in rows:
        print(f"| {r['macs'] / 1e6:.2f} | " + " | ".join(f"{r[v]['calib']:.2f} / {r[v]['holdout']:.2f}" for v in VARIANTS) + " |")
    write_json_atomic(a.record, make_record("eval", vars(a), {"rows": rows}))


if __name__ == "__main__":
    main()
