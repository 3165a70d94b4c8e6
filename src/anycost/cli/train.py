"""anycost train: train a registered model from a recipe."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ._common import EPILOG, UserError, check_device, parse_set, set_threads

HELP = "train a model from a recipe"


def add(sub) -> None:
    t = sub.add_parser("train", help=HELP, epilog=EPILOG,
                       description="Train a registered model. A recipe (packaged name or .json path) gives the "
                                   "defaults; flags and --set key=value override them. Each epoch writes "
                                   "last.pt and record.json to the run folder atomically; --resume continues "
                                   "exactly where the last completed epoch left off. A folder that holds a run "
                                   "is never reused silently: --resume or --overwrite says what to do with it, "
                                   "and a folder another process trains into is refused.")
    t.add_argument("model", nargs="?", help="registered model name (see `anycost models`); default: the recipe's")
    t.add_argument("--recipe", default="cpu", help="packaged recipe (cpu, cpu30, paper, demo) or path to a .json (default: cpu)")
    t.add_argument("--dataset", choices=["cifar10", "cifar100", "digits", "folder"])
    t.add_argument("--data-dir", help="CIFAR batches folder or its parent; for 'folder', one sub-folder per class")
    t.add_argument("--download", action="store_true", help="download CIFAR into --data-dir first (needs internet; never implicit)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--val-size", type=int, help="images carved off the training files for validation")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the recipe's, else cpu)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--seed", type=int)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the training step")
    t.add_argument("--amp", choices=["bf16", "none"], help="bfloat16 autocast for the training forward (weights and "
                                                           "evaluation stay float32)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any TrainConfig field (repeatable)")
    t.add_argument("--init-from", help="start from a trained model (zoo name, .pt or run folder); its weights go "
                                       "into the new model's backbone, e.g. resnet20.cifar10 for ee_resnet20")
    t.add_argument("--teacher", help="distil from this frozen model (zoo name, .pt or run folder)")
    t.add_argument("--distill", type=float, help="weight of the distillation term T^2 KL(teacher || student) added "
                                                 "to the loss (default 1 with --teacher); --set distill_temp=T sets T (4)")
    t.add_argument("--out", help="run folder (default: runs/MODEL-DATASET-RECIPE-sSEED)")
    t.add_argument("--resume", action="store_true", help="continue the run folder's unfinished run from its last.pt; "
                   "settings that change the result must be as before (see --force)")
    t.add_argument("--force", action="store_true", help="with --resume: resume even though settings that change "
                   "the result differ; the record lists each change under forced_changes")
    t.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a finished or "
                   "unfinished run (its last.pt and record.json are replaced)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=run)


def run(a) -> int:
    from anycost.train import TrainConfig, train

    cfg = TrainConfig.from_dict(config_dict(a))  # every value checked here, before any work
    check_device(cfg.device)
    set_threads(cfg.threads)
    if a.download:
        from anycost.data import download_cifar

        if cfg.dataset not in ("cifar10", "cifar100") or not a.data_dir:
            raise UserError("--download works for cifar10/cifar100 and needs --data-dir (where to put the files)")
        cfg = dataclasses.replace(cfg, data_dir=str(download_cifar(a.data_dir, cfg.dataset)))
    rec = train(cfg, resume=a.resume, overwrite=a.overwrite, force=a.force)
    fin = rec["results"]["final"] or {}
    msg = f"done: {cfg.model} on {cfg.dataset}, {rec['results']['epochs_done']} epochs"
    if "val_acc" in fin:
        msg += f", val top-1 {fin['val_acc']:.2f}%"
    print(f"{msg}; run folder {cfg.out_dir}")
    return 0


def config_dict(a) -> dict:
    """The recipe, then the flags, then --set: the TrainConfig fields as given."""
    from anycost.train import load_recipe

    d = load_recipe(a.recipe)
    overrides = {"model": a.model, "dataset": a.dataset, "data_dir": a.data_dir, "epochs": a.epochs,
                 "batch_size": a.batch_size, "lr": a.lr, "device": a.device, "threads": a.threads,
                 "seed": a.seed, "compile": a.compile, "amp": a.amp, "val_size": a.val_size, "init_from": a.init_from,
                 "teacher": a.teacher, "distill": a.distill}
    d.update({k: v for k, v in overrides.items() if v is not None})
    if a.teacher and a.distill is None and not d.get("distill"):
        d["distill"] = 1.0
    if a.amp == "none":  # a recipe's bf16 switched off
        d["amp"] = None
    d.update(parse_set(a.set))
    if a.no_progress:
        d["progress"] = False
    if a.out is not None:
        d["out_dir"] = a.out
    elif "out_dir" not in d:  # from the recipe or --set, else named after the run
        d["out_dir"] = f"runs/{d.get('model', 'model')}-{d.get('dataset', 'data')}-{Path(a.recipe).stem}-s{d.get('seed', 0)}"
    return d
