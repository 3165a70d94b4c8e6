"""Does BN re-estimation on un-augmented training batches hurt a network trained with
augmentation? A static network (no pruning) isolates the effect: its statistics as trained,
re-estimated on 20 augmented batches, and on 20 plain ones, all measured on holdout.

    python benchmarks/bn_reestimate.py resnet20.cifar10 --data-dir ../shared/data \
        --record benchmarks/records/eval/bn-reestimate-resnet20.json
"""
import argparse

from anycost.models.cnmm import bn_statistics_loader
from anycost.data import load_dataset
from anycost.eval import evaluate_classifier
from anycost.models.cnmm import reestimate_bn
from anycost.records import make_record, write_json_atomic
from anycost.zoo import resolve_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="zoo name, .pt or run folder")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--split", default="holdout")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    data = load_dataset("cifar10", data_dir=a.data_dir)
    ds = data.get(a.split)
    model = resolve_model(a.model)
    meta = model.pretrained_cfg
    results = {"as trained": evaluate_classifier(model, ds, data.mean, data.std)["top1"]}
    for label, aug in (("augmented batches", True), ("plain batches", False)):
        model = resolve_model(a.model)

        loader = bn_statistics_loader(data, data.mean, data.std, augment=aug, train_augment=meta.get("train_augment"))
        reestimate_bn(model, loader, a.batches)
        results[label] = evaluate_classifier(model, ds, data.mean, data.std)["top1"]
    for k, v in results.items():
        print(f"{a.model}: BN {k}: {v:.2f} % on {a.split}")
    write_json_atomic(a.record, make_record("eval", vars(a), {"top1": results}))


if __name__ == "__main__":
    main()
