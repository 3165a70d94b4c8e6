"""anycost models: the registered architectures."""

from __future__ import annotations

from ._common import EPILOG

HELP = "list registered model architectures"


def add(sub) -> None:
    m = sub.add_parser("models", help=HELP, epilog=EPILOG,
                       description="List the architectures create_model() knows: family, parameter count and the "
                                   "MACs per input of the most expensive setting (a 32x32 RGB image unless the "
                                   "model fixes its own input size), as infer() reports them.")
    m.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    m.add_argument("--all", action="store_true", help="include the tiny test_* variants (8x8 inputs)")
    m.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    m.set_defaults(func=run)


def run(a) -> int:
    import sys

    from anycost.models import list_models
    from anycost.records import dumps

    rows, failed = [], []
    for n in list_models(a.pattern or "*", include_test=a.all):
        try:
            rows.append(describe(n))
        except Exception as e:  # one broken entry must not hide the others; it is still reported
            failed.append(n)
            print(f"anycost: warning: {n}: cannot be built and measured with its defaults "
                  f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})", file=sys.stderr)
    if a.json:
        print(dumps(rows))
    else:
        print(f"{'model':<22} {'family':<11} {'params':>10} {'input':>9} {'MACs':>11}")
        for r in rows:
            print(f"{r['name']:<22} {r['family']:<11} {r['params']:>10,} {'x'.join(map(str, r['input_size'])):>9} "
                  f"{r['macs'] / 1e6:>9.2f} M")
    return 1 if failed else 0


def describe(name: str) -> dict:
    """One listing row: the model built with its defaults, measured at its own input size
    (a 32x32 RGB image for a model that takes any size)."""
    import torch

    from anycost.models import create_model, model_family

    m = create_model(name).eval()
    size = tuple(m.input_size or (3, 32, 32))
    with torch.no_grad():
        macs = int(m.infer(torch.zeros(1, *size)).macs.item())
    return {"name": name, "family": model_family(name), "params": sum(p.numel() for p in m.parameters()),
            "input_size": list(size), "macs": macs}
