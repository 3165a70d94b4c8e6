"""Training compute of a model, summed over every stage that made it.

A model is often trained in stages: a static ResNet-56, then exit heads on it, then a joint
fine-tune, each with a teacher's forward pass. Comparing its curve with static networks is
only fair against static networks that had at least as much training compute (issue #36).
:func:`training_compute` walks a train record's ``init_from`` chain through a set of train
records and adds up each stage's MACs under :data:`anycost.train.TRAIN_MACS_CONVENTION`.
Records written before ``results.train_macs`` existed get an estimate from their config (the
same per-image count, rebuilt from the model registry, times the images each epoch saw),
marked ``estimated``. A cascade trains nothing of its own: its compute is its members'.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PMAC = 1e15  # tables print training compute in peta-MACs


@dataclass(frozen=True)
class Stage:
    """One training run: the record it comes from and the MACs it spent."""

    record: str  # file the record was read from (or its key)
    model: str
    epochs: int
    macs: float
    estimated: bool  # rebuilt from the config: the record predates results.train_macs
    teacher: str | None = None


@dataclass(frozen=True)
class TrainingCompute:
    """Total training MACs of one model and the stages they come from, oldest first.
    ``complete`` is false when a stage's starting model has no record in the set (its
    compute is then missing from ``macs``, which is a lower bound)."""

    name: str
    macs: float
    stages: tuple[Stage, ...] = ()
    teachers: frozenset = field(default_factory=frozenset)  # canonical zoo names of every stage's teacher
    complete: bool = True
    missing: tuple[str, ...] = ()  # init_from specs with no record
    members: int = 0  # for a cascade: how many networks it selects among (their stages are all in ``stages``)

    @property
    def estimated(self) -> bool:
        return any(s.estimated for s in self.stages)

    def describe(self) -> str:
        """``0.51 PMACs (3 stages, estimated)``: what a table prints."""
        notes = [f"{self.members} members, {len(self.stages)} stages" if self.members else f"{len(self.stages)} stages"] \
            if len(self.stages) > 1 or self.members else []
        notes += ["estimated"] if self.estimated else []
        notes += ["lower bound: no record of " + ", ".join(self.missing)] if not self.complete else []
        return f"{self.macs / PMAC:.2f}" + (f" ({', '.join(notes)})" if notes else "")


def canonical(name: str | None) -> str | None:
    """The zoo's current name for ``name`` (an entry or an old alias); else ``name`` itself."""
    if not name:
        return None
    from anycost.zoo import ZooError, ZooNameError
    from anycost.zoo.store import _canonical

    try:
        return _canonical(name, warn=False)[0]
    except (ZooError, ZooNameError, KeyError, ValueError):
        return name


def _teacher_macs(teacher: str) -> float:
    from anycost.zoo import get_weights

    w = get_weights(canonical(teacher))
    if not w.macs:
        raise ValueError(f"teacher '{teacher}': its zoo record has no MAC count")
    return float(w.macs)


def stage_macs(record: dict) -> tuple[float, bool]:
    """(MACs this run spent training, estimated?). From ``results.train_macs`` when the record
    has it; else rebuilt from the config under the same convention (forward + 2 x the trainable
    layers' forward, + the teacher's forward, per image seen)."""
    res = record["results"]
    if res.get("train_macs") is not None:
        return float(res["train_macs"]), False
    from anycost.train import _images_seen

    cfg, meta = record["config"], record.get("model") or {}
    kwargs = dict(cfg.get("model_kwargs") or {})
    if meta.get("num_classes") is not None:
        kwargs.setdefault("num_classes", meta["num_classes"])
    size = tuple(meta.get("input_size") or (3, 32, 32))
    if len(size) == 3 and size[0] != 3:
        kwargs.setdefault("in_chans", size[0])
    per_image = _step_macs(cfg["model"], json.dumps(kwargs, sort_keys=True), size)
    if cfg.get("teacher"):
        per_image += _teacher_macs(cfg["teacher"])
    return per_image * sum(_images_seen(r) for r in res["history"]), True


@functools.lru_cache(maxsize=None)
def _step_macs(model: str, kwargs_json: str, size: tuple) -> float:
    from anycost.models import create_model
    from anycost.train import training_macs_per_image

    return training_macs_per_image(create_model(model, **json.loads(kwargs_json)), None, size)


class RecordSet:
    """Train records found by every name a stage may use for them: the record's file stem
    (``lnet_resnet56_kd2.cifar10``), its zoo entry's current name, its run folder
    (``config.out_dir``, what an ``init_from`` of an unpublished run names) and that folder's
    last part when no other record shares it (what a curve evaluated from the folder is named)."""

    def __init__(self, records: dict[str, dict]):
        self.records = dict(records)  # key (usually the file path) -> record
        self.stage_macs: dict[str, tuple[float, bool]] = {}  # memo: key -> stage_macs(record)
        self._by = {}
        folders: dict[str, list[str]] = {}
        for key, rec in self.records.items():
            stem = Path(key).stem
            out = _norm_path((rec.get("config") or {}).get("out_dir"))
            for k in {stem, canonical(stem), out} - {None}:
                self._by.setdefault(k, key)
            if out:
                folders.setdefault(Path(out).name, []).append(key)
        for name, keys in folders.items():  # a curve evaluated from a run folder is named by the folder
            if len(keys) == 1:
                self._by.setdefault(name, keys[0])

    @classmethod
    def from_paths(cls, paths) -> "RecordSet":
        """The train records in these files and folders (a folder: its ``*.json`` files, where
        records of other kinds are skipped; a file named outright must be a train record)."""
        from anycost.records import RecordError, read_record

        recs = {}
        for p in map(Path, paths):
            if not p.exists():
                raise FileNotFoundError(f"{p}: no such file or folder of train records")
            for f in sorted(p.glob("*.json")) if p.is_dir() else [p]:
                try:
                    rec = read_record(f)
                except RecordError:
                    if p.is_dir():
                        continue
                    raise
                if rec.get("kind") == "train":
                    recs[str(f)] = rec
                elif not p.is_dir():
                    raise ValueError(f"{f}: not a train record (kind {rec.get('kind')!r})")
        if not recs:
            raise ValueError(f"no train record in {', '.join(map(str, paths))}")
        return cls(recs)

    def find(self, spec: str | None) -> str | None:
        """The key of the record for a zoo name, alias, file stem or run folder."""
        if not spec:
            return None
        for k in (spec, canonical(spec), _norm_path(spec), Path(spec).stem):
            if k in self._by:
                return self._by[k]
        return None


def _norm_path(p: str | None) -> str | None:
    return os.path.normpath(p) if p else None


def training_compute(name: str, records: RecordSet) -> TrainingCompute:
    """Total training compute of the model named ``name`` (a zoo name, alias or record stem):
    its own record's MACs plus those of every ``init_from`` ancestor, or for a cascade the sum
    over its members. Raises ``KeyError`` when neither a record nor a cascade entry is found."""
    key = records.find(name)
    if key is None:
        members = _cascade_members(name)
        if members is None:
            raise KeyError(f"no train record for '{name}' (looked up by file stem, zoo name and run folder)")
        parts = [training_compute(m, records) for m in members]
        return TrainingCompute(name, sum(p.macs for p in parts), tuple(s for p in parts for s in p.stages),
                               frozenset().union(*(p.teachers for p in parts)), all(p.complete for p in parts),
                               tuple(m for p in parts for m in p.missing), members=len(parts))
    stages, missing, seen = [], [], set()
    while key is not None and key not in seen:  # oldest stage last while walking; reversed below
        seen.add(key)
        rec = records.records[key]
        if key not in records.stage_macs:
            records.stage_macs[key] = stage_macs(rec)
        macs, est = records.stage_macs[key]
        cfg = rec["config"]
        stages.append(Stage(key, cfg["model"], len(rec["results"]["history"]), macs, est, canonical(cfg.get("teacher"))))
        start = cfg.get("init_from")
        key = records.find(start)
        if start and key is None:
            missing.append(start)
    stages.reverse()
    return TrainingCompute(name, sum(s.macs for s in stages), tuple(stages),
                           frozenset(s.teacher for s in stages if s.teacher), not missing, tuple(missing))


def _cascade_members(name: str) -> list[str] | None:
    from anycost.zoo import ZooError, ZooNameError, get_weights

    try:
        w = get_weights(canonical(name))
    except (ZooError, ZooNameError, KeyError, ValueError):
        return None
    return list(w.members) if w.is_cascade else None
