"""The strong static frontier (issue #36): ship and measure each finished `cpu`-recipe run.

    python benchmarks/frontier.py --data-dir ../shared/data/cifar-10-batches-py [--runs runs/frontier]

For every finished run folder ``RUNS/r{depth}-cpu90`` (trained by
``anycost train resnet{depth} --recipe cpu --out RUNS/r{depth}-cpu90``), in order:
copy its train record to ``benchmarks/records/train/resnet{depth}.cpu_cifar10.json`` (the
training compute the reports compare with), ship it as zoo entry ``resnet{depth}.cpu_cifar10``
(weights in ``zoo/``, record in the package) and evaluate it on the holdout half of the
validation split into ``benchmarks/records/eval/``. Unfinished runs are skipped; each step is
skipped when its output exists, so the script can be re-run as more runs finish.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py (or that folder itself)")
    ap.add_argument("--runs", default="runs/frontier", help="folder of the run folders (default: runs/frontier)")
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 14, 20, 32, 56])
    ap.add_argument("--cascade", type=int, nargs="+", action="append", default=[], metavar="DEPTH",
                    help="also a cascade over these shipped depths, cheapest first (no training: thresholds and "
                         "a learned policy chosen on calib), shipped as cascade.cpu_r8_r14_..._cifar10 (repeatable)")
    a = ap.parse_args()
    from anycost.data import load_dataset
    from anycost.zoo import RELEASE_URL, export_to_zoo, load_model_file, shipped_names

    for d in a.depths:
        run, name = Path(a.runs) / f"r{d}-cpu90", f"resnet{d}.cpu_cifar10"
        rec_file = run / "record.json"
        if not rec_file.is_file() or json.loads(rec_file.read_text())["results"]["status"] != "done":
            print(f"{name}: {run} has no finished run; skipped")
            continue
        train_rec = ROOT / "benchmarks/records/train" / f"{name}.json"
        if not train_rec.exists():
            shutil.copy(rec_file, train_rec)
        if name not in shipped_names():
            model = load_model_file(run)  # shipped entries carry their point measured on calib
            model.calibrate(load_dataset("cifar10", a.data_dir, val_size=None, split_seed=0), "calib")
            export_to_zoo(run, name, ROOT / "zoo", meta_dir=ROOT / "src/anycost/zoo", url=f"{RELEASE_URL}{name}.safetensors",
                          extra_meta={"recipe": "cpu"}, model=model)
            print(f"{name}: shipped")
        evaluate(name, a.data_dir)
    for depths in a.cascade:
        cascade(depths, a.data_dir)
    return 0


def cascade(depths: list[int], data_dir: str) -> None:
    """Network selection over the strong static networks: calibrated on calib, measured on holdout."""
    from anycost.zoo import shipped_names

    name = "cascade.cpu_" + "_".join(f"r{d}" for d in depths) + "_cifar10"
    members = [f"resnet{d}.cpu_cifar10" for d in depths]
    if name not in shipped_names():
        subprocess.run(["anycost", "calibrate", "--cascade", *members, "--data-dir", data_dir, "--option",
                        'metrics=["maxprob"]', "--save", name, "--zoo-dir", str(ROOT / "src/anycost/zoo"),
                        "--record", str(ROOT / "benchmarks/records/calibrate" / f"{name}.json")], check=True)
    evaluate(name, data_dir)


def evaluate(name: str, data_dir: str) -> None:
    """The zoo entry's holdout record, unless it exists."""
    ev = ROOT / "benchmarks/records/eval" / f"{name}-holdout.json"
    if not ev.exists():
        subprocess.run(["anycost", "eval", name, "--data-dir", data_dir, "--split", "holdout", "--record", str(ev),
                        "--threads", "2"], check=True)


if __name__ == "__main__":
    sys.exit(main())
