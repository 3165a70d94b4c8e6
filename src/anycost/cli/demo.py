"""anycost demo: the main job on the embedded digits, offline."""

from __future__ import annotations

from pathlib import Path

from ._common import EPILOG, UserError

HELP = "offline demo: train small models on the embedded digits, table + plot"


def add(sub) -> None:
    d = sub.add_parser("demo", help=HELP, epilog=EPILOG,
                       description="Train small models of every family on scikit-learn's 8x8 digits (shipped "
                                   "with the package; no download), measure them on the validation split, print "
                                   "an accuracy-vs-MACs table and write demo.png and demo_record.json.")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--epochs", type=int, help="epochs per model (default: the demo recipe's)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run)


def run(a) -> int:
    from anycost.demo import run_demo

    if a.epochs is not None and a.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {a.epochs}")
    if a.seed < 0:
        raise UserError(f"--seed must be >= 0, got {a.seed}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise UserError(f"--out {a.out} is a file; give a folder for the demo's outputs")

    run_demo(a.out, epochs=a.epochs, seed=a.seed)
    return 0
