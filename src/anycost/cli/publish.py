"""anycost publish: add a finished training run to a zoo folder."""

from __future__ import annotations

from ._common import EPILOG

HELP = "add a finished training run to a zoo folder (float16 safetensors + JSON)"


def add(sub) -> None:
    x = sub.add_parser("publish", help=HELP, epilog=EPILOG,
                       description="Write a run folder's final weights as float16 safetensors with their metadata "
                                   "(normalisation, classes, validation metrics with their split, MACs, operating "
                                   "points) into a zoo folder, and update its index.")
    x.add_argument("run_dir", help="run folder holding last.pt and record.json")
    x.add_argument("--name", required=True, help="zoo name ARCH.TAG, e.g. resnet20.mine_cifar10")
    x.add_argument("--zoo-dir", required=True, help="target zoo folder")
    x.set_defaults(func=run)


def run(a) -> int:
    from anycost.zoo import export_to_zoo

    out = export_to_zoo(a.run_dir, a.name, a.zoo_dir)
    print(f"published {a.run_dir} -> {out}")
    return 0
