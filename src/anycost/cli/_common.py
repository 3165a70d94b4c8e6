"""What the command modules share: the user-error type, argument parsers and the
one loader for "a model the user named" (zoo entry, alias, checkpoint or run folder)."""

from __future__ import annotations

import json
from pathlib import Path

EPILOG = "All costs are MACs (multiply-accumulates) per input; FLOPs = 2 x MACs."


class UserError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


def parse_set(items: list[str] | None, flag: str = "--set") -> dict:
    """KEY=VALUE arguments; VALUE parsed as JSON when it can be, else kept as a string."""
    out = {}
    for it in items or []:
        k, eq, v = it.partition("=")
        if not eq or not k:
            raise UserError(f"{flag} expects KEY=VALUE, got '{it}'")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def label_globs(values: list[str], flag: str, example: str) -> dict[str, str]:
    """LABEL=METHOD_GLOB arguments as {label: glob}."""
    groups = {}
    for g in values:
        label, eq, pattern = g.partition("=")
        if not (eq and label and pattern):
            raise UserError(f"{flag} takes LABEL=METHOD_GLOB (e.g. '{example}'), got '{g}'")
        groups[label] = pattern
    return groups


def load_model(spec: str, device: str = "cpu", zoo_dir: str | None = None):
    """(model in eval mode with its shipped operating points, its config: normalisation,
    input size, dataset, split, source and sha256)."""
    from anycost.zoo import resolve_model

    model = resolve_model(spec, zoo_dir=zoo_dir)
    return model.to(device).eval(), dict(model.pretrained_cfg)


def model_label(spec: str) -> str:
    p = Path(spec)
    if p.name == "last.pt":
        return p.parent.name
    if p.suffix in (".pt", ".json", ".safetensors"):
        return p.stem
    return p.name


def load_data(cfg: dict, dataset: str | None, data_dir: str | None):
    """The model's dataset with its own validation split re-carved (calib/holdout are its halves)."""
    from anycost.data import load_dataset

    dataset = dataset or cfg.get("dataset") or "digits"
    sp = cfg.get("split") or {}
    return load_dataset(dataset, data_dir, sp.get("val_size"), sp.get("split_seed") or 0), dataset


def eval_split(cfg: dict, dataset: str | None, data_dir: str | None, split: str):
    """The images of one split. 'test' reads only the test files (test_batch + batches.meta)."""
    from anycost.data import load_cifar

    dataset = dataset or cfg.get("dataset") or "digits"
    if dataset in ("cifar10", "cifar100") and split == "test":
        if not data_dir:
            raise UserError(f"{dataset} needs --data-dir")
        return load_cifar(data_dir, dataset, "test"), dataset
    data, dataset = load_data(cfg, dataset, data_dir)
    return data.get(split), dataset


def check_input_size(ds, cfg: dict, split: str) -> None:
    want = tuple(cfg.get("input_size") or ())
    if want and tuple(ds.images.shape[1:]) != want:
        raise UserError(f"{split} images are {tuple(ds.images.shape[1:])} but the model expects {want}")


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def add_zoo_dir(p, what: str = "where zoo names are looked up first (else $ANYCOST_ZOO, the repository's zoo/, the cache)") -> None:
    p.add_argument("--zoo-dir", help=f"zoo folder: {what}")
