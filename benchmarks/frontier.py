"""The strong static frontier and the families rebuilt on it (issue #36): ship and measure
each finished run of ``benchmarks/frontier_queue.sh``.

    python benchmarks/frontier.py --data-dir ../shared/data/cifar-10-batches-py [--runs runs/frontier]

For every entry of ``SHIP`` whose run folder under ``RUNS`` has finished, in order: copy its
train record (and those of its earlier stages, whose compute it builds on) to
``benchmarks/records/train/``, calibrate it on calib (the family's own search for operating
points; a static network has one), ship it as a zoo entry (weights in ``zoo/``, record in the
package) and evaluate it on the holdout half of the validation split into
``benchmarks/records/eval/``. Unfinished runs are skipped; each step is skipped when its output
exists, so the script can be re-run as more runs finish.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The strong static network of each depth. ResNet-56 gets 64 epochs of the `cpu` recipe, not 90:
# runs do not outlive a 180-minute session on the project's 2-core machines, and 90 of its
# epochs (with their validation passes) would take about 160 of those minutes, leaving none
# to ship it and build the families on it.
STATIC = {d: f"resnet{d}.cpu_cifar10" for d in (8, 14, 20, 32)} | {56: "resnet56.cpu64_cifar10"}

# zoo name, run folder, earlier stages' run folders (their records are copied as NAME-STAGE.json)
SHIP = [(f"resnet{d}.cpu_cifar10", f"r{d}-cpu90", []) for d in (8, 14, 20, 32)] + [
    ("resnet56.cpu64_cifar10", "r56-cpu64", []),
    ("resnet20.cpu180_cifar10", "r20-cpu180", []),
    ("ee_resnet32.cpu_cifar10", "ee32-joint", ["ee32-heads"]),
    ("ee_resnet56.cpu_cifar10", "ee56-joint", ["ee56-heads"]),
    ("lnet_resnet56.cpu_cifar10", "lnet56", []),
    ("lcnet_resnet56.cpu_cifar10", "lcnet56", []),
    ("cnmm_r6.cpu_cifar10", "cnmm56", []),
] + [(f"resnet{d}.cpu_kd_cifar10", f"r{d}-kd56", []) for d in (8, 14, 20, 32)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py (or that folder itself)")
    ap.add_argument("--runs", default="runs/frontier", help="folder of the run folders (default: runs/frontier)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="ship only these entries of SHIP")
    ap.add_argument("--cascade", type=int, nargs="+", action="append", default=[], metavar="DEPTH",
                    help="also a cascade over these shipped depths, cheapest first (no training: thresholds and "
                         "a learned policy chosen on calib), shipped as cascade.cpu_r8_r14_..._cifar10 (repeatable)")
    a = ap.parse_args()
    from anycost.data import load_dataset
    from anycost.zoo import RELEASE_URL, export_to_zoo, load_model_file, shipped_names

    for name, run_name, stages in SHIP:
        if a.only and name not in a.only:
            continue
        if name in shipped_names() and (ROOT / "benchmarks/records/eval" / f"{name}-holdout.json").exists():
            print(f"{name}: shipped and measured")
            continue
        run = Path(a.runs) / run_name
        done = [Path(a.runs) / r for r in (*stages, run_name)]
        if not all(_finished(r) for r in done):
            print(f"{name}: {run} (or an earlier stage) has not finished; skipped")
            continue
        for r, stem in zip(done, [f"{name}-{s.split('-')[-1]}" for s in stages] + [name]):
            train_rec = ROOT / "benchmarks/records/train" / f"{stem}.json"
            if not train_rec.exists():
                shutil.copy(r / "record.json", train_rec)
        if name not in shipped_names():
            model = load_model_file(run)  # shipped entries carry their points measured on calib
            model.calibrate(load_dataset("cifar10", a.data_dir, val_size=None, split_seed=0), "calib", progress=True)
            extra = {"recipe": "cpu"} if name.startswith("resnet") else {}
            export_to_zoo(run, name, ROOT / "zoo", meta_dir=ROOT / "src/anycost/zoo", url=f"{RELEASE_URL}{name}.safetensors",
                          extra_meta=extra, model=model)
            print(f"{name}: shipped")
        evaluate(name, a.data_dir)
    for depths in a.cascade:
        cascade(depths, a.data_dir)
    return 0


def _finished(run: Path) -> bool:
    rec = run / "record.json"
    return rec.is_file() and json.loads(rec.read_text())["results"]["status"] == "done"


def cascade(depths: list[int], data_dir: str) -> None:
    """Network selection over the strong static networks: calibrated on calib, measured on holdout."""
    from anycost.zoo import shipped_names

    name = "cascade.cpu_" + "_".join(f"r{d}" for d in depths) + "_cifar10"
    members = [STATIC[d] for d in depths]
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
