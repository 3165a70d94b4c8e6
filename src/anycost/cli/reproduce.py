"""anycost reproduce: every family trained or reused, calibrated, measured and plotted."""

from __future__ import annotations

from ._common import EPILOG

HELP = "train or reuse every family, calibrate, measure, plot: the whole comparison"


def add(sub) -> None:
    rp = sub.add_parser("reproduce", help=HELP,
                        epilog=EPILOG, description="For each entry of the dataset's suite (static ResNets, early exit, "
                        "network selection, CNMM, LC-Net): use its zoo checkpoint or train it, choose its operating "
                        "points on validation, add it to the zoo folder (default: the user zoo, $ANYCOST_HOME/zoo; the "
                        "package and the repository's zoo/ are only written when given as --zoo-dir); then measure all on the test split if its files are "
                        "present (else the validation holdout), time them at batch 1 and 256, and write "
                        "reproduce_record.json, accuracy_vs_macs.png, wallclock.png and results.md.")
    rp.add_argument("dataset", choices=["cifar10", "digits"])
    rp.add_argument("--recipe", default=None, help="training recipe (default: cpu30 for cifar10, the recipe the committed zoo was trained with; demo for digits)")
    rp.add_argument("--data-dir")
    rp.add_argument("--reuse", action="store_true", help="evaluate committed checkpoints only; train nothing")
    rp.add_argument("--out", default="runs/reproduce")
    rp.add_argument("--zoo-dir", help="zoo folder to read and extend (default: the user zoo, $ANYCOST_HOME/zoo)")
    rp.add_argument("--epochs", type=int, help="override the recipe's epochs (quick trials)")
    rp.add_argument("--no-bench", action="store_true", help="skip the wall-clock measurements")
    rp.add_argument("--latency-runs", type=int, default=30, help="timed batch-1 calls per operating point")
    rp.set_defaults(func=run)


def run(a) -> int:
    from anycost.reproduce import run_reproduce

    recipe = a.recipe or ("cpu30" if a.dataset == "cifar10" else "demo")
    run_reproduce(a.dataset, recipe, a.data_dir, a.reuse, a.out, a.zoo_dir, a.epochs, bench=not a.no_bench,
                  latency_runs=a.latency_runs)
    return 0
