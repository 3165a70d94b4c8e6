"""What the command modules share: the user-error type, argument parsers, the checks every
command makes before it starts work (device, threads, output files) and the one loader for
"a model the user named" (zoo entry, alias, checkpoint or run folder)."""

from __future__ import annotations

import json
import os
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
    """The images of one split of the model's dataset, carved as in its training."""
    from anycost.data import load_split

    dataset = dataset or cfg.get("dataset") or "digits"
    sp = cfg.get("split") or {}
    return load_split(dataset, data_dir, split, sp.get("val_size"), sp.get("split_seed") or 0), dataset


def check_input_size(ds, cfg: dict, split: str) -> None:
    want = tuple(cfg.get("input_size") or ())
    if want and tuple(ds.images.shape[1:]) != want:
        raise UserError(f"{split} images are {tuple(ds.images.shape[1:])} but the model expects {want}")


def check_same_input(cfg: dict, other: dict, name: str, other_name: str) -> None:
    """Refuse to compare two models that do not take the same inputs: input size, number of
    classes and normalisation."""
    from anycost.data import same_normalization

    for what, x, y in (("input size", tuple(cfg.get("input_size") or ()), tuple(other.get("input_size") or ())),
                       ("classes", cfg.get("num_classes"), other.get("num_classes"))):
        if x != y:
            raise UserError(f"{other_name} does not take {name}'s inputs: {what} {y} against {x}")
    na, nb = ({k: c[k] for k in ("mean", "std") if c.get(k) is not None} for c in (cfg, other))
    if not same_normalization(na, nb):
        raise UserError(f"{other_name} normalises its inputs differently from {name} ({nb} against {na})")


def set_threads(n: int | None, flag: str = "--threads") -> None:
    """Fix torch's CPU thread count (None: leave torch's); 0 or a negative count is a mistake,
    not "the default", so it is refused before any work."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"{flag} must be a thread count >= 1 (leave it out for torch's default), got {n!r}")
    import torch

    torch.set_num_threads(n)


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse, before any work, a device this machine cannot run on: a malformed name, CUDA
    without a CUDA device, or a CUDA index past the last device."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} '{device}' is not a device; use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"{flag} {device}: no CUDA device is available on this machine; use --device cpu")
        if d.index is not None and d.index >= n:
            raise UserError(f"{flag} {device}: this machine has {n} CUDA device{'s' if n > 1 else ''} "
                            f"(cuda:0 to cuda:{n - 1})")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} {device}: no MPS device is available on this machine; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{flag} '{device}': anycost runs on cpu, cuda (cuda:N) or mps")


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing folder,
    a path under a file, or a folder without write permission. Returns the path."""
    p = Path(path)
    if not str(path).strip():
        raise UserError(f"{flag} needs a file path, got '{path}'")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path, e.g. {p / 'record.json'}")
    parent = next(a for a in [*p.parents, Path(".")] if a.exists())
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {parent}")
    return p


def add_zoo_dir(p, what: str = "where zoo names are looked up first (then $ANYCOST_ZOO, the user zoo in $ANYCOST_HOME, the shipped zoo, the download cache)") -> None:
    p.add_argument("--zoo-dir", help=f"zoo folder: {what}")


def record_set(paths: list[str], flag: str = "--train-records"):
    """The :class:`~anycost.traincost.RecordSet` of train records in these files and folders;
    a missing path or a file that is not a train record is a user error."""
    from anycost.records import RecordError
    from anycost.traincost import RecordSet

    try:
        return RecordSet.from_paths(paths)
    except (OSError, ValueError, RecordError) as e:
        raise UserError(f"{flag}: {e}") from None
