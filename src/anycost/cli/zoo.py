"""anycost zoo: the pretrained entries (weights outside the package, fetched and verified on use)."""

from __future__ import annotations

import json

from ._common import EPILOG, add_zoo_dir

HELP = "list pretrained models"


def add(sub) -> None:
    z = sub.add_parser("zoo", help=HELP, epilog=EPILOG,
                       description="List the zoo's entries: name (use it with anycost.load(NAME), `anycost eval NAME` "
                                   "or create_model(ARCH, pretrained=TAG)), family, top-1 with the split it was "
                                   "measured on, MACs of the most expensive setting, calibrated operating points, "
                                   "epochs and weights size. Your own entries (the user zoo, $ANYCOST_HOME/zoo, default "
                                   "~/.cache/anycost/zoo, and --zoo-dir / $ANYCOST_ZOO) are listed with the shipped ones.")
    add_zoo_dir(z, "listed with the shipped entries (else $ANYCOST_ZOO); the user zoo is always listed")
    z.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    z.set_defaults(func=run)


def run(a) -> int:
    from anycost.zoo import list_weights

    entries = list_weights(zoo_dir=a.zoo_dir)
    if a.json:
        print(json.dumps([w.to_dict() for w in entries], indent=1))
        return 0
    if not entries:
        print("the zoo is empty")
        return 0
    print(f"{'name':<40} {'family':<11} {'top-1':>14} {'MACs':>10} {'points':>6} {'epochs':>6} {'size':>8}")
    for w in entries:
        acc = w.top1()
        acc = f"{acc[0]:.2f}% {acc[1]}" if acc else "-"
        epochs = "-" if w.epochs is None else w.epochs
        print(f"{w.name:<40} {w.family:<11} {acc:>14} {(w.macs or 0) / 1e6:>8.2f} M {len(w.operating_points):>6} "
              f"{epochs:>6} {w.size / 1e6:>6.2f}MB")
    return 0
