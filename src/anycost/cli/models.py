"""anycost models: the registered architectures."""

from __future__ import annotations

import json

from ._common import EPILOG

HELP = "list registered model architectures"


def add(sub) -> None:
    m = sub.add_parser("models", help=HELP, epilog=EPILOG,
                       description="List the architectures create_model() knows: family, parameter count and the "
                                   "MACs per input of the most expensive setting (a 32x32 RGB image unless the "
                                   "model fixes its own input size), as infer() reports them.")
    m.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    m.add_argument("--all", action="store_true", help="include the tiny test_* variants")
    m.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    m.set_defaults(func=run)


def run(a) -> int:
    import torch

    from anycost.models import create_model, list_models, model_family

    rows = []
    for n in list_models(a.pattern or "*", include_test=a.all):
        m = create_model(n)
        size = m.input_size or (3, 32, 32)
        macs = int(m.infer(torch.zeros(1, *size)).macs.item())
        rows.append({"name": n, "family": model_family(n), "params": sum(p.numel() for p in m.parameters()),
                     "input_size": list(size), "macs": macs})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<22} {'family':<11} {'params':>10} {'input':>9} {'MACs':>11}")
    for r in rows:
        print(f"{r['name']:<22} {r['family']:<11} {r['params']:>10,} {'x'.join(map(str, r['input_size'])):>9} "
              f"{r['macs'] / 1e6:>9.2f} M")
    return 0
