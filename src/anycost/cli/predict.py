"""anycost predict: classify image files with a model at one operating point."""

from __future__ import annotations

from ._common import EPILOG, add_zoo_dir

HELP = "classify PNG / JPEG images at one operating point"


def add(sub) -> None:
    x = sub.add_parser("predict", help=HELP, epilog=EPILOG,
                       description="For each image (files, or folders: every PNG / JPEG directly inside, sorted), "
                                   "print the class, its probability, the operating point used and the MACs that "
                                   "image cost. Images are normalised with the model's own mean and std; they must "
                                   "have the model's input size unless --resize is given.")
    x.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    x.add_argument("images", nargs="+", metavar="IMAGE", help="PNG / JPEG file, or a folder of them")
    add_zoo_dir(x)
    g = x.add_mutually_exclusive_group()
    g.add_argument("--op", help="operating point name (see `anycost eval MODEL`); default: the most accurate one")
    g.add_argument("--budget", type=float, metavar="MACS", help="mean MACs per input; the most accurate single "
                                                                "shipped point within it")
    x.add_argument("--resize", action="store_true", help="resize images of another size to the model's input size")
    x.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    x.add_argument("--device", default="cpu")
    x.set_defaults(func=run)


def run(a) -> int:
    from anycost.predict import predict
    from anycost.records import dumps

    rows = predict(a.model, a.images, op=a.op, budget=a.budget, resize=a.resize, zoo_dir=a.zoo_dir, device=a.device)
    if a.json:
        print(dumps(rows))
        return 0
    width = max(len(r["image"]) for r in rows)
    print(f"{'image':<{width}}  {'class':<12} {'prob':>6}  {'operating point':<24} {'MACs':>10}")
    for r in rows:
        print(f"{r['image']:<{width}}  {r['class']:<12} {r['probability']:>6.1%}  {r['operating_point']:<24} "
              f"{r['macs'] / 1e6:>8.3f} M")
    return 0
