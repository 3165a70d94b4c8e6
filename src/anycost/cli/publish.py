"""anycost publish: add a finished training run to a zoo folder (by default the user zoo)."""

from __future__ import annotations

from ._common import EPILOG

HELP = "add a finished training run to a zoo folder (float16 safetensors + JSON)"


def add(sub) -> None:
    x = sub.add_parser("publish", help=HELP, epilog=EPILOG,
                       description="Write a run folder's final weights as float16 safetensors with their metadata "
                                   "(normalisation, classes, validation metrics with their split, MACs, operating "
                                   "points) into a zoo folder, and update its index. The default folder is the user "
                                   "zoo ($ANYCOST_HOME/zoo, default ~/.cache/anycost/zoo), whose entries load by name. "
                                   "Shipped entries are never replaced or shadowed; a taken name needs --overwrite.")
    x.add_argument("run_dir", help="run folder holding last.pt and record.json")
    x.add_argument("--name", required=True, help="zoo name ARCH.TAG of [a-z0-9_.-] starting with the run's arch, "
                                                 "e.g. resnet20.mine_cifar10")
    x.add_argument("--zoo-dir", help="target zoo folder (default: the user zoo)")
    x.add_argument("--overwrite", action="store_true", help="replace an entry of yours with that name "
                                                            "(shipped entries are never replaced)")
    x.set_defaults(func=run)


def run(a) -> int:
    from anycost.zoo import export_to_zoo

    out = export_to_zoo(a.run_dir, a.name, a.zoo_dir, overwrite=a.overwrite)
    print(f"published {a.run_dir} as {a.name} -> {out}")
    return 0
