"""The model zoo: pretrained entries named ``arch.tag`` (timm style), e.g. ``resnet20.cpu30_cifar10``,
``cnmm_r6.kd_cifar10``, ``cascade.r8_r20_cifar10``.

* ``anycost.load("cnmm_r6.kd_cifar10")``: the model in eval mode with its shipped operating
  points (and their per-point tensors) set, ``model.weights`` its :class:`Weights` record and
  ``model.pretrained_cfg`` the same as a plain dict (plus ``mean``/``std``/``source``);
* ``anycost.create_model(arch, pretrained=tag)`` (``pretrained=True``: the arch's default tag);
* ``list_weights()`` / ``get_weights(name)``: the typed records;
* ``load_model_file`` / ``resolve_model``: a training run folder, a ``last.pt``, a zoo
  ``.safetensors`` with its ``.json`` record, or a zoo name (what the CLI accepts);
* ``export_to_zoo(run_dir, name, ...)``, ``save_model(model, name)``: publish a run or a
  re-calibrated model in this format, by default into the user zoo (``$ANYCOST_HOME/zoo``).

Writing never touches the package or the repository's ``zoo/`` unless given that folder: a
shipped name is never replaced nor shadowed, a taken name only with ``overwrite=True``, and
names are ``arch.tag`` of ``[a-z0-9_.-]`` (:func:`check_name`).

Old names (``cnmm_r6_kd.cifar10``, ``select_resnet8_resnet20.cifar10``, ...) are aliases that
still load, with a ``DeprecationWarning`` naming the new one. Storage, lookup order and
integrity checks: :mod:`anycost.zoo.store`. This layer imports the model registry; the
registry never imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from anycost.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict

from .store import _canonical  # noqa: E402  (name resolution without the alias warning)
from .store import (FORMAT, RELEASE_URL, IntegrityError, Weights, ZooError, ZooNameError, cache_dir, check_name,
                    check_writable, default_name, file_sha256, get_weights, half_state, home_dir, list_weights,
                    package_dir, read_index, read_weights, repo_zoo_dir, save_weights, shipped_names, user_dir,
                    verify_file, weights_path, write_record)

__all__ = ["Weights", "ZooError", "ZooNameError", "IntegrityError", "load", "create_model", "list_weights",
           "get_weights", "list_pretrained", "default_name", "load_model_file", "resolve_model", "export_to_zoo",
           "export_cascade", "publish_entry", "update_entry", "build_cascade", "save_model", "check_save",
           "check_name", "check_writable", "shipped_names", "read_index", "weights_path", "cache_dir", "home_dir",
           "user_dir", "repo_zoo_dir", "package_dir", "train_augmentation", "zoo_dir"]


def zoo_dir() -> Path:
    """The package folder holding the zoo's records (weights are elsewhere: see :mod:`anycost.zoo.store`)."""
    return package_dir()


def list_pretrained() -> list[str]:
    return [w.name for w in list_weights()]


def train_augmentation(config: dict) -> dict:
    """The augmentation a training config used (keys of :class:`~anycost.data.BatchLoader`), so
    that re-estimating a pruned network's BatchNorm statistics can replay it."""
    return {"augment": bool(config.get("augment", True)), "flip": bool(config.get("flip", True)),
            "pad": config.get("pad"), "cutout": int(config.get("cutout") or 0)}


# ---------------------------------------------------------------------------- building


def _ctor_kwargs(w: Weights, kwargs: Mapping[str, Any]) -> dict:
    ctor = {"num_classes": w.num_classes, "in_chans": w.input_size[0], **w.model_kwargs}
    for k, v in kwargs.items():
        if k in ctor and ctor[k] != v:
            raise ValueError(f"'{w.name}' was trained with {k}={ctor[k]!r}; cannot load it with {k}={v!r} "
                             f"(build an untrained model with anycost.models.create_model('{w.arch}', ...) instead)")
        ctor[k] = v
    return ctor


def _attach(model: nn.Module, w: Weights, source: str, sha256: str | None) -> nn.Module:
    model.weights = w
    model.pretrained_cfg = dict(w.to_dict(), input_size=tuple(w.input_size), mean=w.normalization.get("mean"),
                                std=w.normalization.get("std"), source=source, sha256=sha256)
    return model


def _set_points(model: nn.Module, w: Weights, op_state: dict) -> None:
    """Ship the record's operating points and their tensors into a contract model."""
    from anycost.core import DynamicModel

    if not isinstance(model, DynamicModel):
        # a family not (yet) on the DynamicModel contract: the points stay on model.weights
        return
    try:  # state first: a point that needs its tensors (CNMM bn=True) is checked against them
        model.load_op_state(op_state)
        model.set_operating_points(w.operating_points)
    except (ValueError, KeyError, TypeError) as e:
        raise ZooError(f"'{w.name}': the shipped operating points do not fit {type(model).__name__} ({e})") from None


def build(w: Weights, state: Mapping[str, torch.Tensor], op_state: Mapping | None = None, source: str = "",
          sha256: str | None = None, operating_points: bool = True, **kwargs) -> nn.Module:
    """A model for record ``w`` from its tensors, in eval mode (floats cast to the model's dtype)."""
    from anycost.models import create_model as build_arch

    model = build_arch(w.arch, **_ctor_kwargs(w, kwargs))
    load_state_dict_strict(model, dict(state), source or w.name)
    model.eval()
    if operating_points:
        _set_points(model, w, dict(op_state or {}))
    return _attach(model, w, source or w.name, sha256)


def _same_input(a: Weights, b: Weights) -> bool:
    """Whether two entries take the same inputs and predict the same classes."""
    from anycost.data import same_normalization

    return same_normalization(a.normalization, b.normalization) and a.input_size == b.input_size \
        and a.num_classes == b.num_classes


def _build_cascade(w: Weights, members: list[Weights], states: list[dict], operating_points: bool = True) -> nn.Module:
    """The registered ``cascade(members=[arch, ...])`` with each member's verified zoo weights."""
    from anycost.models import create_model as build_arch

    first = members[0]
    for m in members[1:]:
        if not _same_input(m, first):
            raise ZooError(f"'{w.name}': members {first.name} and {m.name} disagree on normalisation, input size or classes")
    c, h, _ = first.input_size
    if all(not m.model_kwargs for m in members):
        model = build_arch("cascade", members=[m.arch for m in members], num_classes=first.num_classes, in_chans=c,
                           input_hw=h)
    else:  # members with their own constructor arguments: build each, then the same Cascade
        from anycost.models.cascade import Cascade

        model = Cascade([build_arch(m.arch, **_ctor_kwargs(m, {})) for m in members], tuple(first.input_size),
                        [m.arch for m in members])
    for net, m, st in zip(model.nets, members, states):
        load_state_dict_strict(net, st, f"{m.name} (member of {w.name})")
    model.eval()
    if operating_points:
        _set_points(model, w, {})
    return _attach(model, w, ", ".join(m.name for m in members), None)


# ---------------------------------------------------------------------------- public API


def load(name: str, *, zoo_dir: str | os.PathLike | None = None, download: bool = True, progress: bool = False,
         operating_points: bool = True, **kwargs) -> nn.Module:
    """Zoo entry ``name`` (``arch.tag``; an old name warns) in eval mode, weights verified by
    sha256, with its shipped operating points set (``operating_points=False``: without)."""
    w = get_weights(name, zoo_dir)
    if w.is_cascade:
        if kwargs:
            raise ValueError(f"'{w.name}' is a cascade of zoo entries; it takes no model arguments, got {sorted(kwargs)}")
        members = [get_weights(m, zoo_dir) for m in w.members]
        states = [read_weights(weights_path(m, zoo_dir, download=download, progress=progress))[0] for m in members]
        return _build_cascade(w, members, states, operating_points)
    path = weights_path(w, zoo_dir, download=download, progress=progress)
    state, op_state = read_weights(path)
    return build(w, state, op_state, str(path), w.sha256, operating_points, **kwargs)


def create_model(arch: str, pretrained: str | bool | None = None, *, zoo_dir: str | os.PathLike | None = None,
                 **kwargs) -> nn.Module:
    """A registered model, untrained, or with zoo weights: ``pretrained=TAG`` loads ``arch.TAG``,
    ``pretrained=True`` the arch's default entry. Keyword arguments that contradict the weights'
    own (``num_classes=100`` for CIFAR-10 weights) are an error."""
    from anycost.models import create_model as build_arch
    from anycost.models import list_models

    if not pretrained:
        return build_arch(arch, **kwargs)
    if pretrained is True:
        name = default_name(arch, zoo_dir)
    elif isinstance(pretrained, str):
        name = f"{arch}.{pretrained}"
    else:
        raise TypeError(f"pretrained is a tag (str), True or None, got {type(pretrained).__name__}")
    if arch not in list_models():
        try:  # an old alias whose arch part held the variant ("cnmm_r6_kd" + "cifar10")
            new = _canonical(name, zoo_dir, warn=False)[0]
        except KeyError:
            new = None
        if new is not None:
            a, t = new.split(".", 1)
            raise KeyError(f"'{arch}' is not a model; use create_model('{a}', pretrained='{t}') or anycost.load('{new}')")
        return build_arch(arch, **kwargs)  # the registry's unknown-model error
    try:
        w = get_weights(name, zoo_dir)
    except KeyError:
        tags = sorted(x.tag for x in list_weights(f"{arch}.*", zoo_dir))
        raise KeyError(f"no pretrained '{name}' in the zoo (tags of {arch}: {', '.join(tags) or 'none'})") from None
    return load(w.name, zoo_dir=zoo_dir, **kwargs)


# ---------------------------------------------------------------------------- files and specs


def _record_from_train(ck: dict, path: Path) -> Weights:
    """A provisional record for a training checkpoint (anycost-train-v1)."""
    meta, cfg = dict(ck["meta"]), ck.get("config") or {}
    arch = meta["model_name"]
    dataset = meta.get("dataset") or cfg.get("dataset")
    return Weights(name=f"{arch}.run_{dataset or 'local'}", arch=arch, tag=f"run_{dataset or 'local'}",
                   family=_family(arch), file=path.name, sha256=None, size=path.stat().st_size, url=None,
                   dtype="float32", model_kwargs=meta.get("model_kwargs", {}), num_classes=meta["num_classes"],
                   input_size=tuple(meta["input_size"]), normalization=meta["normalization"],
                   classes=meta.get("classes"), dataset=dataset,
                   split=meta.get("split") or {"val_size": cfg.get("val_size"), "split_seed": cfg.get("split_seed")},
                   train_augment=meta.get("train_augment") or train_augmentation(cfg), recipe=cfg.get("recipe"),
                   epochs=ck.get("epoch"), operating_points=list(meta.get("operating_points", [])),
                   provenance={"source": str(path)})


def _family(arch: str) -> str:
    from anycost.models import model_family

    try:
        return model_family(arch)
    except KeyError:
        return ""


def load_model_file(path: str | os.PathLike, **kwargs) -> nn.Module:
    """A training run folder or its ``last.pt`` (torch.load with weights_only), a zoo
    ``<name>.safetensors`` beside its ``<name>.json`` record (verified), or such a record."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if path.suffix in (".safetensors", ".json"):
        rec = path.with_suffix(".json")
        if not rec.is_file():
            raise ZooError(f"{path}: no zoo record {rec.name} beside it")
        try:
            w = Weights.from_dict(json.loads(rec.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ZooError(f"{rec}: bad zoo record ({e})") from None
        if w.is_cascade:
            return load(w.name, zoo_dir=path.parent, **kwargs)
        wp = path.with_name(w.file)
        if not wp.is_file():
            return load(w.name, zoo_dir=path.parent, **kwargs)
        verify_file(wp, w)
        state, op_state = read_weights(wp)
        return build(w, state, op_state, str(wp), w.sha256, **kwargs)
    ck = load_checkpoint(path)
    if ck.get("format") != "anycost-train-v1":
        raise CheckpointError(f"{path}: not an anycost training checkpoint (format {ck.get('format')!r}); zoo weights "
                              f"are .safetensors files")
    try:
        w = _record_from_train(ck, path)
    except KeyError as e:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {e}") from None
    return build(w, ck["model"], {}, str(path), file_sha256(path), **kwargs)


def resolve_model(spec: str | os.PathLike, zoo_dir: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """A file or run folder (see :func:`load_model_file`), else a zoo name or alias (looked
    up in ``zoo_dir`` first when given)."""
    p = Path(spec)
    if p.exists():
        return load_model_file(p, **kwargs)
    try:
        get_weights(str(spec), zoo_dir)
    except KeyError as e:
        raise KeyError(f"'{spec}' is neither a file, a run folder nor a zoo entry: {e.args[0]}") from None
    return load(str(spec), zoo_dir=zoo_dir, **kwargs)


# ---------------------------------------------------------------------------- writing


def _dirs(directory, meta_dir) -> tuple[Path, Path]:
    """(weights folder, records folder): ``directory`` holds both, by default the user zoo.
    ``meta_dir`` puts the records elsewhere (the maintainers' release path: weights in the
    repository's zoo/, records in the package, both given explicitly)."""
    d = Path(directory) if directory is not None else user_dir()
    return d, Path(meta_dir) if meta_dir is not None else d


def _check_target(w: Weights, wdir: Path, mdir: Path, overwrite: bool) -> None:
    """check_writable for the entry and its aliases (an alias must not shadow a shipped name)."""
    check_writable(w.name, mdir, overwrite, None if w.is_cascade else wdir)
    shipped = shipped_names()
    for a in w.aliases:
        check_name(a)
        if a in shipped:
            raise ZooNameError(f"alias '{a}' of '{w.name}' is a shipped name; shipped names cannot be shadowed")


def publish_entry(w: Weights, state: Mapping[str, torch.Tensor], op_state: Mapping | None = None,
                  directory: str | os.PathLike | None = None, meta_dir: str | os.PathLike | None = None,
                  url: str | None = None, *, overwrite: bool = False) -> Weights:
    """Write ``state`` (as float16) and ``op_state`` to ``<name>.safetensors``, then its record
    (file, size, sha256, url filled in) and the index, in ``directory`` (default: the user
    zoo). A taken name needs ``overwrite``; a shipped one is refused. ``url`` defaults to the
    release for records written into the package, else none. Returns the record written."""
    wdir, mdir = _dirs(directory, meta_dir)
    _check_target(w, wdir, mdir, overwrite)
    if w.is_cascade:
        write_record(w, mdir)
        return w
    file = f"{w.name}.safetensors"
    out = save_weights(wdir / file, half_state(state), op_state,
                       metadata={"name": w.name, "arch": w.arch, "zoo_format": FORMAT})
    if url is None and mdir == package_dir():  # a shipped entry: its file goes to the release
        url = RELEASE_URL + file
    w = w.replace(file=file, size=out.stat().st_size, sha256=file_sha256(out), dtype="float16", url=url)
    write_record(w, mdir)
    return w


def _shipped(model: nn.Module) -> tuple[list[dict], dict]:
    from anycost.core import DynamicModel

    if isinstance(model, DynamicModel):
        shipped = list(model.__dict__.get("_anycost_ops", []))
        return [o.to_dict() for o in shipped], model.op_state()
    return [], {}


def export_to_zoo(run_dir: str | os.PathLike, name: str, directory: str | os.PathLike | None = None, *,
                  meta_dir: str | os.PathLike | None = None, extra_meta: dict | None = None,
                  model: nn.Module | None = None, url: str | None = None, default: bool = False,
                  overwrite: bool = False) -> Path:
    """Publish a run's final weights as entry ``name`` (``arch.tag``): float16 safetensors with
    the record and index beside them in ``directory`` (default: the user zoo; ``meta_dir``: the
    records elsewhere). ``model``: the run's model with calibrated points set (its shipped
    points and op state are stored). A taken name needs ``overwrite``; a shipped one is
    refused, before anything is written. Returns the weights file."""
    from anycost.cost import module_macs

    arch, tag = check_name(name)
    wdir, mdir = _dirs(directory, meta_dir)
    check_writable(name, mdir, overwrite, wdir)
    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir / "last.pt")
    if ck.get("format") != "anycost-train-v1":
        raise CheckpointError(f"{run_dir / 'last.pt'}: not a training checkpoint")
    base = _record_from_train(ck, run_dir / "last.pt")
    if arch != base.arch:
        raise ValueError(f"'{name}': the run trained {base.arch}, so its name must start with '{base.arch}.'")
    rec_path = run_dir / "record.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    if model is None:
        model = build(base, ck["model"], {}, str(run_dir))
    final = (rec.get("results") or {}).get("final") or ck["history"][-1]
    metrics = {k: {"value": final.get(src), "split": "val"} for k, src in (("top1", "val_acc"), ("top5", "val_top5"))
               if final.get(src) is not None}
    ops, op_state = _shipped(model)
    fields = dict(name=name, tag=tag, metrics=metrics, macs=module_macs(model, tuple(base.input_size)),
                  operating_points=ops, default=default, dtype="float16",
                  provenance={"commit": (rec.get("git") or {}).get("commit"), "train_seconds": ck.get("train_seconds"),
                              "run_dir": str(run_dir)})
    fields.update(extra_meta or {})
    w = base.replace(**fields)
    w = publish_entry(w, model.state_dict(), op_state, wdir, mdir, url, overwrite=overwrite)
    return wdir / w.file


def export_cascade(name: str, members: list[str], operating_points: list, directory: str | os.PathLike | None = None,
                   *, extra_meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write cascade entry ``name`` (``cascade.TAG``) over zoo entries ``members`` into
    ``directory`` (default: the user zoo); returns its record. Taken and shipped names as in
    :func:`publish_entry`."""
    arch, tag = check_name(name)
    if arch != "cascade":
        raise ValueError(f"'{name}': a cascade entry is named 'cascade.TAG'")
    mdir = Path(directory) if directory is not None else user_dir()
    check_writable(name, mdir, overwrite)
    ws = [get_weights(m, directory) for m in members]
    first = ws[0]
    w = Weights(name=name, arch=arch, tag=tag, family="cascade", members=[x.name for x in ws], dtype=first.dtype,
                num_classes=first.num_classes, input_size=first.input_size, normalization=first.normalization,
                classes=first.classes, dataset=first.dataset, split=first.split, macs=max(x.macs or 0 for x in ws),
                operating_points=[o if isinstance(o, dict) else o.to_dict() for o in operating_points],
                **(extra_meta or {}))
    return write_record(w, mdir)


def update_entry(name: str, model: nn.Module | None = None, *, operating_points: list | None = None,
                 metrics: dict | None = None, provenance: dict | None = None,
                 directory: str | os.PathLike | None = None, meta_dir: str | os.PathLike | None = None) -> Weights:
    """Rewrite entry ``name`` with ``model``'s shipped points and op state (weights unchanged,
    re-verified) or with explicit ``operating_points``; merge ``metrics``/``provenance``. The
    entry is rewritten where its record was found (or in ``directory``); a shipped entry is
    read-only (save a copy under another tag with :func:`save_model`)."""
    w = get_weights(name, directory)
    if w.name in shipped_names():
        raise ZooNameError(f"'{w.name}' is a shipped entry: shipped entries are read-only; save a copy under "
                           f"another tag with save_model(model, '{w.arch}.mine_{w.tag}')")
    found = _canonical(w.name, directory, warn=False)[1]
    directory = directory if directory is not None else found
    ops, op_state = _shipped(model) if model is not None else (None, None)
    if operating_points is not None:
        ops = [o if isinstance(o, dict) else o.to_dict() for o in operating_points]
    changes = {}
    if ops is not None:
        changes["operating_points"] = ops
    if metrics:
        changes["metrics"] = {**w.metrics, **metrics}
    if provenance:
        changes["provenance"] = {**w.provenance, **provenance}
    w2 = w.replace(**changes)
    if w.is_cascade:
        _, mdir = _dirs(directory, meta_dir)
        write_record(w2, mdir)
        return w2
    state, old_ops = read_weights(weights_path(w, directory, download=False))
    return publish_entry(w2, state, op_state if op_state is not None else old_ops, directory, meta_dir, w.url,
                         overwrite=True)


# ---------------------------------------------------------------------------- CLI helpers


def build_cascade(specs: list[str], **kwargs) -> nn.Module:
    """A cascade over member models given as zoo names, files or run folders (cheapest first),
    uncalibrated; its record names the members as given."""
    from anycost.models.cascade import Cascade

    if len(specs) < 2:
        raise ValueError(f"a cascade needs at least two members, got {specs!r}")
    nets = [resolve_model(s, **kwargs) for s in specs]
    ws = [n.weights for n in nets]
    for s, w in zip(specs[1:], ws[1:]):
        if not _same_input(w, ws[0]):
            raise ZooError(f"cascade member {s} disagrees with {specs[0]} on normalisation, input size or classes")
    model = Cascade(nets, tuple(ws[0].input_size), [w.arch for w in ws]).eval()
    first = ws[0]
    w = Weights(name=f"cascade.custom_{first.dataset or 'local'}", arch="cascade", tag=f"custom_{first.dataset or 'local'}",
                family="cascade", members=[w.name if w.sha256 else str(s) for s, w in zip(specs, ws)],
                num_classes=first.num_classes, input_size=first.input_size, normalization=first.normalization,
                classes=first.classes, dataset=first.dataset, split=first.split, macs=max(x.macs or 0 for x in ws))
    return _attach(model, w, ", ".join(map(str, specs)), None)


def check_save(model: nn.Module, name: str, zoo_dir: str | os.PathLike | None = None,
               overwrite: bool = False) -> Path:
    """Everything :func:`save_model` checks, without writing: a model loaded by anycost, a
    valid name starting with its arch, cascade members that are zoo entries, a name that is
    not shipped and (without ``overwrite``) not taken. Callers run it before slow work.
    Returns the target folder."""
    w = getattr(model, "weights", None)
    if not isinstance(w, Weights):
        raise ZooError("save_model needs a model loaded by anycost (model.weights); use export_to_zoo for a run folder")
    arch, _ = check_name(name)
    if arch != w.arch:
        raise ValueError(f"'{name}': this model is a {w.arch}, so its name must start with '{w.arch}.'")
    if w.is_cascade and not all(isinstance(m, Weights) and m.sha256 for m in _members(model)):
        raise ZooError(f"'{name}': every cascade member must be a zoo entry; publish the members first")
    d = Path(zoo_dir) if zoo_dir is not None else user_dir()
    return check_writable(name, d, overwrite, None if w.is_cascade else d)


def _members(model: nn.Module) -> list:
    return [getattr(n, "weights", None) for n in model.nets]


def save_model(model: nn.Module, name: str, zoo_dir: str | os.PathLike | None = None, *,
               overwrite: bool = False) -> Path:
    """Store a loaded (and typically re-calibrated) model as entry ``name`` in folder ``zoo_dir``
    (default: the user zoo): its shipped operating points and op state, its record otherwise
    unchanged. A cascade is stored as a record over its members, which must be zoo entries. A
    taken name needs ``overwrite``; a shipped one is refused. Returns the file written."""
    d = check_save(model, name, zoo_dir, overwrite)
    w = model.weights
    ops, op_state = _shipped(model)
    prov = dict(w.provenance, derived_from=w.name)
    new = w.replace(name=name, tag=name.split(".", 1)[1], operating_points=ops, aliases=[], default=False,
                    provenance=prov)
    if new.is_cascade:
        return write_record(new.replace(members=[m.name for m in _members(model)]), d)
    new = publish_entry(new, model.state_dict(), op_state, d, d, w.url if w.name == name else None,
                        overwrite=overwrite)
    return d / new.file
