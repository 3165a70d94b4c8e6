"""A plain PyTorch training loop shared by every family.

* SGD with Nesterov, one-cycle (linear warm-up, linear anneal) or cosine schedule, label
  smoothing, channels_last, optional ``torch.compile`` for the training step, optional
  bfloat16 autocast (``amp="bf16"``, for speed on CPUs that compute bf16 natively; weights,
  optimizer state and evaluation stay float32, and bf16 needs no loss scaling). Measured
  step times are in the docs (docs/training.md).
* A family plugs in by giving its model ``training_loss(x, y, criterion, progress)``
  returning ``(loss, logits)``; plain classifiers use cross-entropy on ``model(x)``. A family
  that trains several networks in one step (the CNMM's sandwich rule) returns a tuple of
  logits: distillation is averaged over them and training accuracy counts the first.
* Optional knowledge distillation from a frozen teacher (``teacher`` = zoo name, checkpoint
  or run folder; ``distill`` = weight): ``distill * T^2 * KL(softmax(t/T) || softmax(s/T))``
  on the logits is added to whatever loss the family returns, so cost penalties and
  per-exit weights are untouched. The typical use is a fine-tune that prunes a trained model
  (LC-Net from its ResNet), where the unpruned model is the teacher that keeps the pruned
  one close to the function it started from. The teacher is re-read on ``resume``, so it
  never drifts with the student.
* A run folder holds ``record.json`` (config, commit, seed, hardware, per-epoch metrics)
  and ``last.pt``, written atomically after every epoch. ``resume=True`` restores model,
  optimizer, scheduler and every RNG stream, so a run killed mid-epoch ends with the same
  weights as an uninterrupted one. A folder holding a run is only reused with ``resume`` or
  ``overwrite``, and is locked while a process trains into it (see :func:`train`).
* Every config field is type- and range-checked (``TrainConfig.validate``) when the config
  is built and again when training starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from anycost.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, save_atomic
from anycost.data import DATASETS, BatchLoader, crop_pad, load_dataset, same_normalization
from anycost.distributed import LossModule, all_reduce_sums, convert_batchnorm
from anycost.distributed import setup as dist_setup
from anycost.distributed import teardown as dist_teardown
from anycost.eval import evaluate_classifier
from anycost.losses import distillation_loss
from anycost.models import create_model
from anycost.records import git_commit, make_record, write_json_atomic

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None

CKPT_FORMAT = "anycost-train-v1"


@dataclass
class TrainConfig:
    """Every setting of a training run. A recipe (``anycost/recipes/*.json``) is a dict of
    these fields; ``anycost train`` flags and ``--set KEY=VALUE`` override any of them, and the
    resolved config goes into the run's ``record.json``.

    * model: ``model`` (a registered name), ``model_kwargs``, ``seed``;
    * data: ``dataset``, ``data_dir``, ``val_size``, ``split_seed``;
    * optimisation: ``epochs``, ``batch_size`` (the global batch under ``torchrun``), ``lr``
      (peak), ``lr_mult``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule``,
      ``warmup``, ``label_smoothing``;
    * augmentation: ``augment``, ``flip``, ``pad``, ``cutout``;
    * speed: ``channels_last``, ``compile``, ``amp``, ``threads``, ``device``;
    * starting point and teacher: ``init_from``, ``teacher``, ``distill``, ``distill_temp``;
    * weight averaging: ``ema`` (per-step decay, 0: off), ``ema_warmup`` (steps before it starts);
    * output: ``out_dir``, ``progress``, ``eval_batch_size``.
    """

    model: str = "test_resnet"
    model_kwargs: dict = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    val_size: int | None = None  # None: the dataset's default (5,000 for CIFAR)
    split_seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    # learning-rate multipliers by parameter-name prefix, e.g. {"predictors": 10}: LC-Net's
    # gates sit on tiny per-channel gradients and barely move at the backbone's fine-tuning lr
    lr_mult: dict = dataclasses.field(default_factory=dict)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv/linear weights only, not BN or biases
    schedule: str = "onecycle"  # onecycle | cosine
    warmup: float = 0.15  # fraction of all steps spent warming up
    label_smoothing: float = 0.1
    augment: bool = True  # random crop with zero padding (+ horizontal flip if ``flip``)
    flip: bool = True  # off for data that is not mirror-invariant (digits)
    pad: int | None = None  # crop padding; None: image side / 8 (4 px on CIFAR, 1 px on 8x8 digits)
    cutout: int = 0  # side of the square zeroed at a random place in each training image; 0: off
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step (off by default: see docs/training.md)
    amp: str | None = None  # "bf16": bfloat16 autocast for the forward and loss; None: float32
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_batch_size: int = 1000
    out_dir: str = "runs/train"
    progress: bool = True
    init_from: str | None = None  # zoo name, checkpoint or run folder whose weights start the (back)bone
    teacher: str | None = None  # zoo name, checkpoint or run folder of a frozen teacher to distil from
    distill: float = 0.0  # weight of the distillation term (needs a teacher)
    distill_temp: float = 4.0  # softmax temperature of the distillation term
    # per-step decay of an exponential moving average of weights and BN buffers; 0: off. With
    # it on, evaluation and the saved ``model`` use the average (the raw weights are kept
    # only to resume), because the average generalises better than the last iterate.
    ema: float = 0.0
    ema_warmup: int = 0  # steps before the average starts tracking (it copies the weights until then)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # a JSON integer for a float field is that float
            v = getattr(self, f.name)
            if _base_type(f) == "float" and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
        self.validate()

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**d)

    def validate(self) -> None:
        """Every field's type and range, then the settings that go together. Raises a
        ValueError naming the key, the bad value and what is allowed (run again by ``train``,
        so a field changed after construction is checked too)."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if any(not isinstance(k, str) or not _is_number(v) or v <= 0 for k, v in self.lr_mult.items()):
            raise ValueError(f"lr_mult values must be positive finite numbers by parameter-name prefix, "
                             f"e.g. {{\"predictors\": 10}}, got {self.lr_mult!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0, got momentum=0 (set nesterov=false or a momentum)")
        if bool(self.teacher) != (self.distill > 0):
            raise ValueError(f"distillation needs both a teacher and a weight distill > 0, got teacher="
                             f"{self.teacher!r}, distill={self.distill!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_device(v: str) -> bool:
    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return True


_TYPES = {"int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
          "float": (_is_number, "a finite number"),
          "bool": (lambda v: isinstance(v, bool), "true or false"),
          "str": (lambda v: isinstance(v, str), "a string"),
          "dict": (lambda v: isinstance(v, dict), "a JSON object such as {\"key\": 1}")}

# the values a field takes beyond its type: (test, what is allowed)
_LIMITS = {
    "model": (bool, "a registered model name (see `anycost models`)"),
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "val_size": (lambda v: v >= 0, "an integer >= 0, images carved off for validation (null: the dataset's default)"),
    "split_seed": (lambda v: v >= 0, "an integer >= 0"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: v > 0, "a finite number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "schedule": (lambda v: v in ("onecycle", "cosine"), "'onecycle' or 'cosine'"),
    "warmup": (lambda v: 0 <= v < 1, "a fraction of all steps in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "pad": (lambda v: v >= 0, "an integer >= 0, the crop padding in pixels (null: image side / 8)"),
    "cutout": (lambda v: v >= 0, "an integer >= 0, a square side in pixels (0: off)"),
    "amp": (lambda v: v == "bf16", "'bf16' or null (float32)"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "device": (_is_device, "a torch device such as cpu, cuda or cuda:1"),
    "threads": (lambda v: v >= 1, "an integer >= 1 (null: torch's default)"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "out_dir": (bool, "a non-empty folder path"),
    "init_from": (bool, "a zoo name, checkpoint or run folder (null: none)"),
    "teacher": (bool, "a zoo name, checkpoint or run folder (null: none)"),
    "distill": (lambda v: v >= 0, "a finite number >= 0 (0: off)"),
    "distill_temp": (lambda v: v > 0, "a finite number > 0"),
    "ema": (lambda v: 0 <= v < 1, "a per-step decay in [0, 1) (0: off)"),
    "ema_warmup": (lambda v: v >= 0, "an integer >= 0, a step count"),
}


def _base_type(f: dataclasses.Field) -> str:
    """'int' for ``int`` and ``int | None`` (annotations are strings here)."""
    return str(f.type).split("|")[0].strip()


def _check_field(f: dataclasses.Field, v) -> None:
    optional = str(f.type).replace(" ", "").endswith("|None")
    if v is None and optional:
        return
    is_type, what = _TYPES[_base_type(f)]
    test, allowed = _LIMITS.get(f.name, (None, what))
    if not is_type(v) or (test is not None and not test(v)):
        allowed += " or null" if optional and "null" not in allowed else ""
        raise ValueError(f"{f.name} must be {allowed}, got {v!r}")


def list_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("anycost").joinpath("recipes").iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str) -> dict:
    """A recipe is a small JSON file of TrainConfig fields: a packaged name or a path."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        text = p.read_text()
    else:
        f = resources.files("anycost").joinpath("recipes", f"{name_or_path}.json")
        if not f.is_file():
            raise ValueError(f"unknown recipe '{name_or_path}' (packaged: {', '.join(list_recipes())}, or a .json path)")
        text = f.read_text()
    d = json.loads(text)
    d.pop("_comment", None)
    return d


class Schedule:
    """LR multiplier per step. onecycle: linear 0.04 -> 1 over warm-up, then linear to 0.
    cosine: linear warm-up, then half-cosine to 0. A class (not a lambda) so the
    scheduler state pickles and resumes exactly."""

    def __init__(self, kind: str, total: int, warmup: float):
        self.kind, self.total, self.warm = kind, max(1, total), max(1, int(warmup * total))

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return 0.04 + 0.96 * step / self.warm
        t = (step - self.warm) / max(1, self.total - self.warm)
        return max(0.0, 1.0 - t) if self.kind == "onecycle" else 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float, lr: float, lr_mult: dict | None = None) -> list[dict]:
    """Weight decay on weights only (not BN or biases); parameters whose name starts with a
    prefix of ``lr_mult`` get ``lr * mult`` (first matching prefix). Empty groups are left out."""
    lr_mult = lr_mult or {}
    groups: dict[tuple[float, bool], list] = {}
    used = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pre = next((pre for pre in lr_mult if name.startswith(pre)), None)
        if pre is not None:
            used.add(pre)
        groups.setdefault((lr_mult.get(pre, 1.0), p.ndim > 1), []).append(p)
    unused = sorted(set(lr_mult) - used)
    if unused:
        raise ValueError(f"lr_mult: no parameter name starts with {', '.join(map(repr, unused))}")
    return [{"params": ps, "weight_decay": weight_decay if decayed else 0.0, "lr": lr * mult}
            # the base-lr groups first (decayed, then not: the order of checkpoints made before
            # lr_mult, so they still resume; the record's per-epoch lr reads group 0)
            for (mult, decayed), ps in sorted(groups.items(), key=lambda kv: (kv[0][0] != 1.0, kv[0][0], not kv[0][1]))]


def init_weights(model: nn.Module, spec: str) -> None:
    """Start from a trained model: a model of the same class gives all its weights (e.g. a
    joint fine-tune of a two-stage multi-exit run, heads included); otherwise its weights go
    into ``model.backbone`` when the model has one (multi-exit, LC-Net, ...), else into the
    model itself. Shapes must match exactly. A model with ``init_from_trained`` takes a
    trained model of its own class its own way (an LC-Net from a trained L-Net)."""
    from anycost.zoo import resolve_model

    src = resolve_model(spec)
    if type(src) is type(model) and hasattr(model, "init_from_trained"):
        model.init_from_trained(src)  # the family decides what carries over (L-Net -> LC-Net)
        return
    target = model if type(src) is type(model) else getattr(model, "backbone", model)
    load_state_dict_strict(target, src.state_dict(), f"init_from '{spec}'")


def load_teacher(spec: str, device: torch.device, data, channels_last: bool) -> nn.Module:
    """A frozen teacher in eval mode (BN statistics fixed, no gradients). It sees the
    student's normalised batches, so it must have been trained on the same classes and
    with the same normalisation."""
    from anycost.zoo import resolve_model

    teacher = resolve_model(spec)
    meta = teacher.pretrained_cfg
    n = meta.get("num_classes")
    if n is not None and n != data.num_classes:
        raise ValueError(f"teacher '{spec}' predicts {n} classes, the data has {data.num_classes}")
    norm = meta.get("normalization")
    if norm and not same_normalization(norm, {"mean": list(data.mean), "std": list(data.std)}):
        raise ValueError(f"teacher '{spec}' was trained with normalisation {norm}, the data uses "
                         f"mean {data.mean}, std {data.std}")
    teacher.eval().requires_grad_(False).to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it, bf16
    autocast is emulated and is slower than float32, not faster."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


class WeightEMA:
    """Exponential moving average of a model's parameters and floating-point buffers (BN
    running statistics included, so the average needs no re-estimation pass). Before
    ``warmup`` steps it copies the live weights: early weights are far from the optimum
    and would only drag the average."""

    def __init__(self, model: nn.Module, decay: float, warmup: int = 0):
        import copy

        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay if step >= self.warmup else 0.0
        for (_, a), (_, b) in zip(_ema_tensors(self.model), _ema_tensors(model)):
            if a.dtype.is_floating_point:
                a.lerp_(b, 1.0 - d)
            else:  # num_batches_tracked and other counters
                a.copy_(b)


def _ema_tensors(m: nn.Module):
    yield from m.named_parameters()
    yield from m.named_buffers()


TRAIN_MACS_CONVENTION = ("per training image seen: the model's forward MACs + 2 x the forward MACs of its layers "
                         "with trainable parameters (the backward; 3 x forward when everything trains; eval-mode "
                         "forward at the input size, every exit / edge / gate computed) + 1 x the teacher's forward "
                         "MACs; evaluation passes and the training of an init_from model not included")


def training_macs_per_image(model: nn.Module, teacher: nn.Module | None, input_size: tuple) -> float:
    """MACs one training image costs under :data:`TRAIN_MACS_CONVENTION`."""
    from anycost.cost import module_macs, trainable_macs

    macs = float(module_macs(model, input_size)) + 2.0 * trainable_macs(model, input_size)
    return macs + (float(module_macs(teacher, input_size)) if teacher is not None else 0.0)


def _images_seen(row: dict) -> float:
    """Images one epoch of an older record saw (before ``images_seen`` was recorded)."""
    return row.get("images_seen", round(row["images_per_s"] * row["epoch_seconds"]))


class StopTraining(Exception):
    """Raised by an ``on_step`` callback to stop a run (tests simulate a kill with it)."""


LOCK_NAME = "train.lock"

# Fields a resumed run may change without --force: where and how fast it runs, never what it
# computes (compile and channels_last change the arithmetic only as another thread count
# does, by floating-point rounding). Every other field changes the result.
RESUME_FREE = frozenset({"progress", "threads", "device", "out_dir", "data_dir", "eval_batch_size", "compile",
                         "channels_last"})


class RunFolderError(ValueError):
    """A run folder that training may not use as asked: it holds a run and neither resume nor
    overwrite was given, or another process is training into it."""


@contextlib.contextmanager
def run_lock(out: Path, enabled: bool = True):
    """Hold ``out/train.lock`` (``fcntl.flock``, non-blocking) while training, so a second
    process training into the same folder fails at once instead of interleaving its
    checkpoints with ours. The kernel drops the lock when the process ends, even when it is
    killed (the stale file is then harmless); a run that ends removes it."""
    if not enabled or fcntl is None:  # torchrun's other ranks never write; no flock on Windows
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = _lock_file(out)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        (out / LOCK_NAME).unlink(missing_ok=True)  # before the lock goes: see _lock_file
        os.close(fd)


def _lock_file(out: Path) -> int:
    """An open, flock-ed descriptor of ``out/train.lock``. A lock taken on a file that its
    holder removed on the way out is no lock, so then the new file is taken instead."""
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderError(f"{out} is in use: another process{f' (pid {pid})' if pid else ''} is training "
                                 "into it; wait for it to end or choose another --out") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def run_state(out: Path) -> tuple[str | None, str]:
    """('done', '') when record.json says the run finished, ('unfinished', how far) when a
    last.pt is there without that, else (None, '')."""
    try:
        rec = json.loads((out / "record.json").read_text())
        rec = rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        rec = {}
    results = rec.get("results") or {}
    if results.get("status") == "done":
        return "done", ""
    if (out / "last.pt").exists():
        done, n = results.get("epochs_done"), (rec.get("config") or {}).get("epochs")
        return "unfinished", f"{done} of {n} epochs done" if done is not None and n else "last.pt"
    return None, ""


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over a finished or unfinished one (``overwrite`` allows it)."""
    if resume or overwrite:
        return
    state, how_far = run_state(out)
    if state == "done":
        raise RunFolderError(f"{out} holds a finished run (record.json status 'done'); pass --overwrite to "
                             "replace it or choose another --out")
    if state == "unfinished":
        raise RunFolderError(f"{out} holds an unfinished run ({how_far}); use --resume to continue it or "
                             "--overwrite to start over")


def discard_run(out: Path) -> None:
    """An overwritten run's files go once the new run is set up, so that a failure in the
    set-up leaves the old run as it was, and a killed new run leaves no stale last.pt."""
    for name in ("last.pt", "record.json"):
        (out / name).unlink(missing_ok=True)


def load_resume_checkpoint(out: Path, cfg: TrainConfig, force: bool) -> dict:
    """The run folder's last.pt, after checking that ``cfg`` may resume it."""
    path = out / "last.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: nothing to resume (no checkpoint in {out})")
    ck = load_checkpoint(path)
    if ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not an anycost training checkpoint")
    changes = resume_changes(ck["config"], cfg)
    if changes and not force:
        said = "; ".join(f"'{k}' was {c['from']!r}, now {c['to']!r}" for k, c in changes.items())
        raise CheckpointError(f"cannot resume: {said} (these change the result; --force resumes anyway and "
                              "records the changes)")
    return ck


def resume_changes(old: dict, cfg: TrainConfig) -> dict:
    """``{field: {"from": saved, "to": now}}`` for every field outside :data:`RESUME_FREE`
    that differs from the checkpoint's config (a field older checkpoints lack counts as its
    default)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        if f.name in RESUME_FREE:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        was, now = old.get(f.name, default), getattr(cfg, f.name)
        if was != now:
            changes[f.name] = {"from": was, "to": now}
    return changes


def apply_hyperparameters(opt, sched, model: nn.Module, cfg: TrainConfig, total_steps: int) -> None:
    """After a forced resume, give the optimiser and schedule the new config: their saved state
    holds the old lr, momentum, weight decay and schedule, which would otherwise win silently."""
    fresh = param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_mult)
    sched.lr_lambdas = [Schedule(cfg.schedule, total_steps, cfg.warmup) for _ in opt.param_groups]
    sched.base_lrs = [g["lr"] for g in fresh]
    for g, new, fn in zip(opt.param_groups, fresh, sched.lr_lambdas):
        g.update(weight_decay=new["weight_decay"], momentum=cfg.momentum, nesterov=cfg.nesterov,
                 initial_lr=new["lr"], lr=new["lr"] * fn(sched.last_epoch))
    sched._last_lr = [g["lr"] for g in opt.param_groups]


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, force: bool = False,
          model: nn.Module | None = None, data=None, on_step: Callable[[int], None] | None = None) -> dict:
    """Train and return the final record. ``model``/``data`` may be passed in (the families
    build theirs); otherwise both come from the config. A model passed in must be what
    ``create_model(cfg.model, **cfg.model_kwargs)`` builds: the checkpoint records those
    arguments so that the run can be reloaded and exported.

    A run folder holding a run is never silently replaced: ``resume`` continues it (refusing
    changed settings that change the result unless ``force``, see :data:`RESUME_FREE`),
    ``overwrite`` starts over, and without either a finished or unfinished run is an error.
    The folder is locked for the whole run, so a second process training into it fails."""
    cfg.validate()
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite starts it over: give one of them")
    if force and not resume:
        raise ValueError("--force only applies with --resume (it resumes despite changed settings)")
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"out_dir {out} is a file; give a folder for the run")
    if resume and not (out / "last.pt").exists():  # said before the lock creates the folder
        raise CheckpointError(f"{out / 'last.pt'}: nothing to resume (no checkpoint in {out})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = dist_setup(cfg.device)  # one process unless launched by torchrun
    try:
        with run_lock(out, enabled=info.is_main):
            check_run_folder(out, resume, overwrite)
            ck = load_resume_checkpoint(out, cfg, force) if resume else None
            return _train(cfg, info, ck, overwrite, model, data, on_step)
    finally:
        dist_teardown(info)


def _train(cfg: TrainConfig, info, ck: dict | None, overwrite: bool, model: nn.Module | None, data,
           on_step: Callable[[int], None] | None) -> dict:
    """The run itself, with the folder checked and locked; ``ck`` is the checkpoint to resume."""
    resume = ck is not None
    device = info.device
    if cfg.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("amp='bf16' on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated there and "
                      "slower than float32; pass --amp none there",
                      stacklevel=3)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must divide among {info.world_size} processes")
    out = Path(cfg.out_dir)
    ckpt_path, rec_path = out / "last.pt", out / "record.json"

    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = create_model(cfg.model, num_classes=data.num_classes, in_chans=data.input_size[0], **cfg.model_kwargs)
    if cfg.init_from and not resume:
        init_weights(model, cfg.init_from)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if info.enabled:
        convert_batchnorm(model, device)  # BN statistics over the global batch, as in one process

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = BatchLoader(data.train, cfg.batch_size // info.world_size, data.mean, data.std, shuffle=True, augment=cfg.augment, flip=cfg.flip,
                               pad=crop_pad(cfg.pad, data.input_size[1]), cutout=cfg.cutout, drop_last=len(data.train) >= cfg.batch_size, device=device,
                               generator=gen, channels_last=cfg.channels_last, rank=info.rank,
                               world_size=info.world_size)
    eval_split = data.val if data.val is not None else None
    steps_per_epoch = len(train_loader)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_mult), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(cfg.schedule, cfg.epochs * steps_per_epoch, cfg.warmup))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start_epoch, history, train_seconds = 0, [], 0.0
    forced = ck.get("forced_changes", []) if resume else []
    if resume:
        load_state_dict_strict(model, ck.get("train_model", ck["model"]), str(ckpt_path))
        try:
            opt.load_state_dict(ck["optimizer"])
        except ValueError as e:  # a forced lr_mult change that regroups the parameters
            raise CheckpointError(f"{ckpt_path}: the saved optimiser state does not fit this run's parameter "
                                  f"groups ({e})") from None
        sched.load_state_dict(ck["scheduler"])
        changes = resume_changes(ck["config"], cfg)
        if changes:  # forced: the saved optimiser and schedule state would keep the old values
            apply_hyperparameters(opt, sched, model, cfg, cfg.epochs * steps_per_epoch)
            forced = forced + [{"at_epoch": ck["epoch"], "changes": changes}]
        gen.set_state(ck["loader_rng"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, history, train_seconds = ck["epoch"], ck["history"], ck.get("train_seconds", 0.0)

    ema = WeightEMA(model, cfg.ema, cfg.ema_warmup) if cfg.ema > 0 else None
    if ema is not None and resume:
        load_state_dict_strict(ema.model, ck["model"], str(ckpt_path))
    step_fn = torch.compile(model) if cfg.compile else model
    teacher = load_teacher(cfg.teacher, device, data, cfg.channels_last) if cfg.teacher else None
    # training compute, so that curves can be compared at equal training cost (issue #36)
    step_macs = training_macs_per_image(model, teacher, tuple(data.input_size))
    # a resumed run continues its count; one written before the count existed is rebuilt from its epochs
    train_macs = history[-1]["train_macs"] if history and "train_macs" in history[-1] \
        else sum(_images_seen(r) for r in history) * step_macs
    family_loss = getattr(model, "training_loss", None)
    ddp = None
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # a model that skips sub-modules per batch (the residual CNMM) leaves some parameters unused in a step
        ddp = DistributedDataParallel(LossModule(model, criterion), broadcast_buffers=False,
                                      find_unused_parameters=getattr(model, "skips_per_batch", False))
    config_dict = asdict(cfg)
    meta = {"model_name": cfg.model, "model_kwargs": cfg.model_kwargs, "num_classes": data.num_classes,
            "input_size": list(data.input_size), "classes": data.train.classes,
            "normalization": {"mean": data.mean, "std": data.std}}

    git_at_start = git_commit()  # the code that trained, even if the tree changes mid-run

    def write_record(status: str):
        results = {"status": status, "epochs_done": len(history), "history": history, "train_seconds": train_seconds,
                   "final": history[-1] if history else None, "train_macs": train_macs,
                   "train_macs_per_image": step_macs, "train_macs_convention": TRAIN_MACS_CONVENTION}
        if forced:  # what a --force resume changed, so the record does not claim one config throughout
            results["forced_changes"] = forced
        write_json_atomic(rec_path, make_record("train", config_dict, results, seed=cfg.seed, device=device,
                                                model=meta, split=data.split_info, git=git_at_start))

    if overwrite and info.is_main:
        discard_run(out)
    total_steps = cfg.epochs * steps_per_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            seen, loss_sum, correct = 0, 0.0, 0
            bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and info.is_main), leave=False, dynamic_ncols=True)
            for i, (x, y) in enumerate(bar):
                step = epoch * steps_per_epoch + i
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                    if ddp is not None:
                        loss, logits = ddp(x, y, step / total_steps)
                    elif family_loss is not None:
                        loss, logits = family_loss(x, y, criterion=criterion, progress=step / total_steps)
                    else:
                        logits = step_fn(x)
                        loss = criterion(logits, y)
                    outs = logits if isinstance(logits, tuple) else (logits,)
                    logits = outs[0]
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(x)
                        kd = sum(distillation_loss(o, t_logits, cfg.distill_temp) for o in outs) / len(outs)
                        loss = loss + cfg.distill * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model, step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i}: lower the lr")
                b = y.shape[0]
                seen += b
                loss_sum += loss.item() * b
                correct += (logits.argmax(1) == y).sum().item()
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                if on_step is not None:
                    on_step(step)
            if info.enabled:  # metrics over all ranks
                seen, loss_sum, correct = all_reduce_sums([seen, loss_sum, correct], device)
            epoch_s = time.perf_counter() - t0
            train_seconds += epoch_s
            train_macs += seen * step_macs
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / seen,
                   "train_acc": 100.0 * correct / seen, "epoch_seconds": epoch_s, "images_per_s": seen / epoch_s,
                   "images_seen": seen, "train_macs": train_macs}
            if eval_split is not None and info.is_main:
                ev = evaluate_classifier(model if ema is None else ema.model, eval_split, data.mean, data.std, cfg.eval_batch_size, device,
                                         channels_last=cfg.channels_last)
                row.update(val_acc=ev["top1"], val_top5=ev["top5"], val_loss=ev["loss"])
                if ema is not None:  # the live weights too, so records show what the average adds
                    raw = evaluate_classifier(model, eval_split, data.mean, data.std, cfg.eval_batch_size, device,
                                              channels_last=cfg.channels_last)
                    row.update(val_acc_raw=raw["top1"])
            history.append(row)
            if not info.is_main:  # only rank 0 writes; the others wait for it
                torch.distributed.barrier()
                continue
            state = {"model": model.state_dict()} if ema is None else \
                {"model": ema.model.state_dict(), "train_model": model.state_dict()}  # "model" is what gets published
            save_atomic({"format": CKPT_FORMAT, "config": config_dict, "epoch": epoch + 1, **state,
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "loader_rng": gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "history": history, "train_seconds": train_seconds,
                         "meta": meta, "forced_changes": forced}, ckpt_path)
            write_record("running" if epoch + 1 < cfg.epochs else "done")
            if info.enabled:
                torch.distributed.barrier()
            if cfg.progress:
                va = f" val_acc {row['val_acc']:.2f}%" if "val_acc" in row else ""
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} train_acc {row['train_acc']:.2f}%{va}"
                           f" ({epoch_s:.0f}s, {row['images_per_s']:.0f} img/s)")
    except KeyboardInterrupt:
        if info.is_main:
            write_record("interrupted")
        raise
    if not history and info.is_main:  # resumed a finished run
        write_record("done")
    return json.loads(rec_path.read_text())
