"""Table of the `cpu30`-recipe sweep (ResNet-20, CIFAR-10): what each run changed against the
recipe, and where it ended. Reads the train records only.

    python benchmarks/recipe_sweep.py benchmarks/records/train/recipe_sweep/*.json > benchmarks/recipe_sweep.md
"""
import sys
from dataclasses import asdict

from anycost.records import read_record
from anycost.train import TrainConfig, load_recipe

KEYS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "warmup", "schedule", "cutout", "amp", "seed")


def main(paths: list[str]) -> None:
    recipe = asdict(TrainConfig()) | load_recipe("cpu30")  # what a run with only --recipe cpu30 resolves to
    print("| run | changed against `cpu30` | epochs done | val top-1 (%) | best epoch val (%) | final train acc (%) | train time (min) | device |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for p in paths:
        r = read_record(p)
        cfg, hist = r["config"], r["results"]["history"]
        diff = ", ".join(f"{k} {cfg[k]}" for k in KEYS if k in cfg and cfg[k] != recipe[k])
        hw = r.get("hardware", {})
        dev = hw.get("gpu") or hw.get("cpu", "?")
        last = hist[-1]
        note = "" if r["results"]["status"] == "done" else " (stopped)"
        print(f"| {p.rsplit('/', 1)[-1][:-5]} | {diff or '-'} | {len(hist)}/{cfg['epochs']}{note} | {last['val_acc']:.2f} | "
              f"{max(h['val_acc'] for h in hist):.2f} | {last['train_acc']:.2f} | {r['results']['train_seconds'] / 60:.1f} | {dev} |")


if __name__ == "__main__":
    main(sys.argv[1:])
