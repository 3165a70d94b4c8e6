"""The ``anycost`` command: a thin layer over the Python API.

A user mistake prints one line on stderr and exits 2 (no traceback); ``--traceback``
shows the full one for bug reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = "All costs are MACs (multiply-accumulates) per input; FLOPs = 2 x MACs."


class UserError(Exception):
    pass


def _parse_set(items: list[str] | None) -> dict:
    """--set key=value (value parsed as JSON when it can be, else a string)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--set expects key=value, got '{it}'")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# --------------------------------------------------------------------------- train


def cmd_train(a) -> int:
    from anycost.train import TrainConfig, load_recipe, train

    d = load_recipe(a.recipe)
    overrides = {"model": a.model, "dataset": a.dataset, "data_dir": a.data_dir, "epochs": a.epochs,
                 "batch_size": a.batch_size, "lr": a.lr, "device": a.device, "threads": a.threads,
                 "seed": a.seed, "compile": a.compile, "val_size": a.val_size}
    d.update({k: v for k, v in overrides.items() if v is not None})
    d.update(_parse_set(a.set))
    if a.no_progress:
        d["progress"] = False
    d["out_dir"] = a.out or d.get("out_dir") or f"runs/{d.get('model', 'model')}-{d.get('dataset', 'data')}-{Path(a.recipe).stem}-s{d.get('seed', 0)}"
    cfg = TrainConfig.from_dict(d)
    rec = train(cfg, resume=a.resume)
    fin = rec["results"]["final"] or {}
    msg = f"done: {cfg.model} on {cfg.dataset}, {rec['results']['epochs_done']} epochs"
    if "val_acc" in fin:
        msg += f", val top-1 {fin['val_acc']:.2f}%"
    print(f"{msg}; run folder {cfg.out_dir}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anycost",
        description="Networks whose inference cost is chosen at run time: train, evaluate, calibrate, "
                    "benchmark and plot accuracy against MACs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors (for bug reports)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a recipe", epilog=EPILOG,
                       description="Train a registered model. A recipe (packaged name or .json path) gives the "
                                   "defaults; flags and --set key=value override them. Each epoch writes "
                                   "last.pt and record.json to the run folder atomically; --resume continues "
                                   "exactly where the last completed epoch left off.")
    t.add_argument("model", nargs="?", help="registered model name (see `anycost models`); default: the recipe's")
    t.add_argument("--recipe", default="cpu", help="packaged recipe (cpu, paper, demo) or path to a .json (default: cpu)")
    t.add_argument("--dataset", choices=["cifar10", "cifar100", "digits", "folder"])
    t.add_argument("--data-dir", help="CIFAR batches folder or its parent; for 'folder', one sub-folder per class")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--val-size", type=int, help="images carved off the training files for validation")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the recipe's, else cpu)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--seed", type=int)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the training step")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any TrainConfig field (repeatable)")
    t.add_argument("--out", help="run folder (default: runs/MODEL-DATASET-RECIPE-sSEED)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 0
    from anycost.checkpoint import CheckpointError
    from anycost.data import DataError
    from anycost.records import RecordError

    try:
        return a.func(a) or 0
    except KeyboardInterrupt:
        print("anycost: interrupted (completed epochs are saved; continue with --resume)", file=sys.stderr)
        return 130
    except (UserError, DataError, CheckpointError, RecordError, ValueError, KeyError, FileNotFoundError) as e:
        if a.traceback:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anycost: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
