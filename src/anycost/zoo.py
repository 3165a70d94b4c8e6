"""Model zoo: trained checkpoints committed inside the package, loadable by name
(``create_model("resnet20", pretrained="cifar10")`` or ``anycost eval resnet20.cifar10``).

A zoo file holds the weights in float16 (a CIFAR ResNet-56 stays under 2 MB; the models
run in float32 after loading), the model's constructor arguments, its normalisation
statistics and classes, its validation metrics and, for adaptive families, the operating
points calibrated on validation. ``index.json`` lists every entry for ``anycost zoo``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from anycost.checkpoint import CheckpointError, file_sha256, load_checkpoint, load_state_dict_strict, save_atomic
from anycost.records import write_json_atomic

ZOO_FORMAT = "anycost-zoo-v1"


def zoo_dir() -> Path:
    return Path(str(resources.files("anycost").joinpath("zoo")))


def read_index(directory: str | os.PathLike | None = None) -> dict:
    import json

    p = Path(directory or zoo_dir()) / "index.json"
    if not p.is_file():
        return {}
    return json.loads(p.read_text())


def list_pretrained() -> list[str]:
    return sorted(read_index())


def _build(meta: dict, state: dict, source: str, **kwargs) -> nn.Module:
    from anycost.models import create_model

    ctor = {"num_classes": meta["num_classes"], "in_chans": meta["input_size"][0], **meta.get("model_kwargs", {})}
    for k, v in kwargs.items():
        if k in ctor and ctor[k] != v:
            raise CheckpointError(f"{source} was trained with {k}={ctor[k]!r}; cannot load it with {k}={v!r}")
        ctor[k] = v
    model = create_model(meta["model_name"], **ctor)
    load_state_dict_strict(model, state, source)
    model.pretrained_cfg = {
        "mean": meta["normalization"]["mean"], "std": meta["normalization"]["std"],
        "input_size": tuple(meta["input_size"]), "num_classes": meta["num_classes"],
        "classes": meta.get("classes"), "dataset": meta.get("dataset"), "source": source,
        "operating_points": meta.get("operating_points", []), "metrics": meta.get("metrics", {}),
    }
    return model.eval()


def load_pretrained(name: str, **kwargs) -> nn.Module:
    path = zoo_dir() / f"{name}.pt"
    if not path.is_file():
        have = ", ".join(list_pretrained()) or "none yet"
        raise KeyError(f"no pretrained model '{name}' in the zoo (available: {have})")
    return load_model_file(path, **kwargs)[0]


def train_augmentation(config: dict) -> dict:
    """The augmentation a training config used (keys of :class:`~anycost.data.BatchLoader`), so
    that re-estimating a pruned network's BatchNorm statistics can replay it. Zoo entries
    exported before this was recorded lack it; readers fall back to crop and flip."""
    return {"augment": bool(config.get("augment", True)), "flip": bool(config.get("flip", True)),
            "pad": config.get("pad"), "cutout": int(config.get("cutout") or 0)}


def load_model_file(path: str | os.PathLike, **kwargs) -> tuple[nn.Module, dict]:
    """A zoo file or a training checkpoint (``last.pt``) -> (model in eval mode, meta)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    ck = load_checkpoint(path)
    fmt = ck.get("format")
    if fmt == ZOO_FORMAT:
        meta, state = ck["meta"], ck["state_dict"]
    elif fmt == "anycost-train-v1":
        meta, state = dict(ck["meta"]), ck["model"]
        meta.setdefault("dataset", ck["config"].get("dataset"))
        meta.setdefault("split", {"val_size": ck["config"].get("val_size"), "split_seed": ck["config"].get("split_seed")})
        meta.setdefault("train_augment", train_augmentation(ck["config"]))
    else:
        raise CheckpointError(f"{path}: not an anycost checkpoint (format {fmt!r})")
    try:
        model = _build(meta, state, str(path), **kwargs)
    except KeyError as e:
        if "unknown model" in str(e):
            raise
        raise CheckpointError(f"{path}: checkpoint metadata lacks {e}") from None
    meta = dict(meta, sha256=file_sha256(path), path=str(path))
    return model, meta


CASCADE_FORMAT = "anycost-cascade-v1"


def load_cascade(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """A cascade spec (JSON): member models by zoo name or path, plus calibrated operating points."""
    import json

    from anycost.selection import Cascade

    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable cascade spec ({e})") from None
    if spec.get("format") != CASCADE_FORMAT:
        raise CheckpointError(f"{path}: not an anycost cascade spec")
    def member(m: str):  # a zoo name next to the spec (its own zoo folder), else anywhere resolve_model looks
        local = path.parent / f"{m}.pt"
        return load_model_file(local) if local.is_file() else resolve_model(m)

    members = [member(m) for m in spec["members"]]
    metas = [m for _, m in members]
    for m in metas[1:]:
        if m["normalization"] != metas[0]["normalization"] or list(m["input_size"]) != list(metas[0]["input_size"]):
            raise CheckpointError(f"{path}: cascade members disagree on input normalisation or size")
    casc = Cascade([n for n, _ in members], tuple(metas[0]["input_size"]), list(spec["members"]))
    meta = {k: metas[0][k] for k in ("normalization", "input_size", "num_classes", "classes", "dataset", "split") if k in metas[0]}
    meta.update(operating_points=spec.get("operating_points", []), calibrated_on=spec.get("calibrated_on"),
                members=spec["members"], sha256=file_sha256(path), path=str(path), model_name="cascade")
    casc.pretrained_cfg = meta
    return casc.eval(), meta


def resolve_model(spec: str, **kwargs) -> tuple[nn.Module, dict]:
    """A zoo name ('resnet20.cifar10'), a checkpoint file, a run folder or a cascade spec."""
    p = Path(spec)
    if p.exists():
        return load_cascade(p) if p.suffix == ".json" else load_model_file(p, **kwargs)
    z = zoo_dir() / f"{spec}.pt"
    if z.is_file():
        return load_model_file(z, **kwargs)
    if (zoo_dir() / f"{spec}.json").is_file():
        return load_cascade(zoo_dir() / f"{spec}.json")
    have = ", ".join(list_pretrained()) or "none yet"
    raise KeyError(f"'{spec}' is neither a file, a run folder nor a zoo model (zoo: {have})")


def export_to_zoo(run_dir: str | os.PathLike, name: str, directory: str | os.PathLike | None = None,
                  extra_meta: dict | None = None, model: nn.Module | None = None) -> Path:  # noqa: C901
    """Write a run's final weights (float16) and metadata as zoo entry ``name``; update index.json."""
    from anycost.cost import module_macs
    from anycost.models import model_family
    import json

    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir / "last.pt")
    if ck.get("format") != "anycost-train-v1":
        raise CheckpointError(f"{run_dir / 'last.pt'}: not a training checkpoint")
    rec_path = run_dir / "record.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    meta = dict(ck["meta"], dataset=ck["config"]["dataset"],
                split={"val_size": ck["config"].get("val_size"), "split_seed": ck["config"].get("split_seed")},
                train_augment=train_augmentation(ck["config"]))
    meta.update(extra_meta or {})
    if model is None:
        model = _build(meta, ck["model"], str(run_dir))
    final = (rec.get("results") or {}).get("final") or ck["history"][-1]
    macs = module_macs(model, tuple(meta["input_size"]))
    meta["metrics"] = {"val_acc": final.get("val_acc"), "val_top5": final.get("val_top5"), "macs": macs,
                       "epochs": ck["epoch"], "train_seconds": ck.get("train_seconds"),
                       "commit": (rec.get("git") or {}).get("commit")}
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    d = Path(directory or zoo_dir())
    out = save_atomic({"format": ZOO_FORMAT, "name": name, "meta": meta, "state_dict": state}, d / f"{name}.pt")
    index = read_index(d)
    index[name] = {"family": model_family(meta["model_name"]), "model": meta["model_name"], "dataset": meta["dataset"],
                   "val_acc": meta["metrics"]["val_acc"], "macs": macs, "epochs": ck["epoch"],
                   "size_bytes": out.stat().st_size, "sha256": file_sha256(out),
                   "operating_points": len(meta.get("operating_points", []))}
    write_json_atomic(d / "index.json", dict(sorted(index.items())))
    return out


def set_operating_points(name: str, ops: list[dict], calibrated_on: str, directory: str | os.PathLike | None = None) -> Path:
    """Store calibrated operating points in an existing zoo entry (a .pt file)."""
    d = Path(directory or zoo_dir())
    path = d / f"{name}.pt"
    ck = load_checkpoint(path)
    if ck.get("format") != ZOO_FORMAT:
        raise CheckpointError(f"{path}: not a zoo file")
    ck["meta"]["operating_points"] = ops
    ck["meta"]["calibrated_on"] = calibrated_on
    save_atomic(ck, path)
    index = read_index(d)
    if name in index:
        index[name].update(size_bytes=path.stat().st_size, sha256=file_sha256(path), operating_points=len(ops))
        write_json_atomic(d / "index.json", dict(sorted(index.items())))
    return path


def export_cascade(name: str, members: list[str], ops: list[dict], calibrated_on: str, macs: list[int],
                   dataset: str | None, directory: str | os.PathLike | None = None) -> Path:
    d = Path(directory or zoo_dir())
    out = write_json_atomic(d / f"{name}.json", {"format": CASCADE_FORMAT, "members": members, "operating_points": ops,
                                                  "calibrated_on": calibrated_on})
    index = read_index(d)
    index[name] = {"family": "selection", "model": "cascade(" + " -> ".join(members) + ")", "dataset": dataset,
                   "val_acc": None, "macs": max(macs), "epochs": None, "size_bytes": out.stat().st_size,
                   "sha256": file_sha256(out), "operating_points": len(ops)}
    write_json_atomic(d / "index.json", dict(sorted(index.items())))
    return out
