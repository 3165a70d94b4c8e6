"""The model contract every anycost family implements. Imports nothing else of anycost.

A :class:`DynamicModel` has a set of *operating points* (settings of its cost knob: a
threshold, a pruned sub-network, a gate threshold, ...) and five verbs:

* ``operating_points()``: the calibrated points shipped with the model, each with the mean
  MACs and top-1 accuracy it had on the split that calibrated it;
* ``calibrate(data, split=...)``: choose and store operating points from a calibration split;
* ``at_budget(macs)``: the most accurate point within a mean-MAC budget, or the random
  :class:`Mixture` of two neighbouring frontier points that meets it exactly in expectation;
* ``infer(x, op) -> DynamicOutput``: logits plus the MACs really spent on each input;
* ``export(op) -> nn.Module``: a standalone network for one point, scriptable by TorchScript.

Families supply ``check_op`` (validation of their own ``params``), ``candidate_operating_points``,
``_infer`` and ``export``; this base class supplies the rest, so that no caller needs to know
which family it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["OperatingPoint", "Mixture", "DynamicOutput", "DynamicModel", "BudgetError", "check_budget", "pareto_indices",
           "pareto_subset", "normalised", "batches", "measured_points", "progress_bar"]


class BudgetError(ValueError):
    """A budget no shipped operating point can meet (or that is not a budget at all)."""


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of a model's cost knob.

    ``params`` holds the family's own fields (validated by the family's ``check_op``, never
    read by anyone else); ``macs`` and ``accuracy`` are what the point measured on ``split``,
    the split that calibrated it (None while uncalibrated). Bulky per-point data (a pruned
    CNMM's BatchNorm statistics) are tensors held by the model under the point's ``name``,
    never in ``params``, so a point is always small plain JSON."""

    name: str = "full"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    macs: float | None = None  # mean MACs per input on `split`
    accuracy: float | None = None  # top-1, percent, on `split`
    split: str | None = None

    def __getitem__(self, key: str):
        return self.params[key]

    def get(self, key: str, default=None):
        return self.params.get(key, default)

    @property
    def calibrated(self) -> bool:
        return self.macs is not None and self.accuracy is not None

    def measured(self, macs: float, accuracy: float, split: str | None) -> "OperatingPoint":
        return replace(self, macs=float(macs), accuracy=float(accuracy), split=split)

    def to_dict(self) -> dict:
        d = {"name": self.name, "params": _plain(self.params)}
        if self.calibrated:
            d.update(macs=self.macs, accuracy=self.accuracy, split=self.split)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "OperatingPoint":
        if not isinstance(d, Mapping) or not isinstance(d.get("name", "full"), str):
            raise ValueError(f"an operating point is a dict with a 'name' and 'params', got {d!r:.80}")
        return cls(d.get("name", "full"), dict(d.get("params") or {}), d.get("macs"), d.get("accuracy"), d.get("split"))


def _plain(v):
    """JSON-ready copy of a params value; a tensor here is a bug (bulky data belongs in op state)."""
    if isinstance(v, Tensor):
        raise TypeError("operating point params must be plain JSON values; keep tensors in the model's op state")
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class Mixture:
    """Each input goes to ``high`` with probability ``p_high``, else to ``low``: the straight
    line between the two points in (mean MACs, accuracy), so any budget between them is met
    exactly in expectation. Rows are assigned by stratified rounding with a random offset,
    so every batch of n rows sends round(n * p_high) +- 1 of them to ``high``."""

    low: OperatingPoint
    high: OperatingPoint
    p_high: float

    @property
    def name(self) -> str:
        return f"{1 - self.p_high:.3f} x {self.low.name} + {self.p_high:.3f} x {self.high.name}"

    @property
    def macs(self) -> float:
        return (1 - self.p_high) * self.low.macs + self.p_high * self.high.macs

    @property
    def accuracy(self) -> float:
        return (1 - self.p_high) * self.low.accuracy + self.p_high * self.high.accuracy

    def assign(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n,) bool: which rows run ``high``."""
        u = torch.rand((), generator=generator).item()
        k = torch.arange(n, dtype=torch.float64)
        return torch.floor((k + 1) * self.p_high + u) > torch.floor(k * self.p_high + u)


@dataclass
class DynamicOutput:
    """What ``infer`` returns: logits, the MACs each input really cost (decision overhead
    included), and the exit / path / network each input took where the family has one."""

    logits: Tensor  # (B, K)
    macs: Tensor  # (B,) float64: MACs actually spent on each input, decision overhead included
    path: Tensor | None = None  # (B,) long: exit / path / network index each input took, if any
    num_paths: int = 0  # how many distinct values ``path`` can take (for per-exit fractions)


def pareto_indices(macs: list[float], acc: list[float]) -> list[int]:
    """Indices of the points no other point beats (cheaper-or-equal and more accurate),
    sorted by MACs. Ties in MACs keep the more accurate point."""
    order = sorted(range(len(macs)), key=lambda i: (macs[i], -acc[i]))
    front, best = [], -math.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def pareto_subset(points: list[OperatingPoint], most: int = 15, least: int = 8) -> list[OperatingPoint]:
    """The points to ship: the frontier (thinned evenly to ``most``), topped up to ``least`` with
    the points closest below it where a flat curve leaves fewer; sorted by MACs."""
    pts = [p for p in points if p.calibrated]
    front = pareto_indices([p.macs for p in pts], [p.accuracy for p in pts])
    if len(front) > most:
        step = (len(front) - 1) / (most - 1)
        front = sorted({front[round(i * step)] for i in range(most)})
    chosen = set(front)
    if len(chosen) < least:
        # distance below the frontier: the frontier accuracy at the point's MACs minus its own
        fx = [pts[i].macs for i in front]
        fy = [pts[i].accuracy for i in front]

        def gap(p: OperatingPoint) -> float:
            best = max([y for x, y in zip(fx, fy) if x <= p.macs] or [fy[0]])
            return best - p.accuracy

        rest = sorted((i for i in range(len(pts)) if i not in chosen), key=lambda i: gap(pts[i]))
        chosen |= set(rest[: least - len(chosen)])
    return sorted((pts[i] for i in chosen), key=lambda p: (p.macs, -p.accuracy))


class DynamicModel(nn.Module):
    """Base class of every anycost model. Subclasses implement:

    * ``family`` (class attribute) and ``input_size`` (C, H, W);
    * ``check_op(op) -> OperatingPoint``: raise ``ValueError`` on params this family cannot run;
    * ``candidate_operating_points(data, split, **kw)``: the points ``calibrate`` measures;
    * ``_infer(x, op) -> DynamicOutput`` for one validated point;
    * ``export(op) -> nn.Module``.

    and may override ``measure`` where a faster exact pass exists (cached exit outputs)."""

    family: str = "dynamic"
    # (C, H, W) its costs hold for; None: any size. Not annotated: TorchScript, which scripts
    # static networks as they are, infers a tuple of ints from the value instead
    input_size = None
    any_input_hw = False  # True: MACs are counted at each input's own H x W (fully convolutional)

    # ------------------------------------------------------------------ operating points

    def _shipped(self) -> list[OperatingPoint]:
        return self.__dict__.setdefault("_anycost_ops", [])

    def operating_points(self) -> list[OperatingPoint]:
        """The calibrated points shipped with the model (sorted by MACs); uncalibrated
        defaults where none were set."""
        return list(self._shipped()) or self.default_operating_points()

    def default_operating_points(self) -> list[OperatingPoint]:
        """The uncalibrated points ``operating_points()`` lists before any were set."""
        return [self.default_op()]

    def default_op(self) -> OperatingPoint:
        """What ``infer(x)`` runs without a point: the most expensive setting."""
        return OperatingPoint("full")

    def set_operating_points(self, ops: Iterable[OperatingPoint | Mapping]) -> None:
        """Replace the shipped points (points or their dicts), each validated by the family's
        ``check_op``; names must be unique."""
        ops = [self.check_op(o if isinstance(o, OperatingPoint) else OperatingPoint.from_dict(o)) for o in ops]
        names = [o.name for o in ops]
        if len(set(names)) != len(names):
            raise ValueError(f"operating point names must be unique, got {names}")
        self.__dict__["_anycost_ops"] = sorted(ops, key=lambda o: (o.macs is None, o.macs or 0.0))

    def check_op(self, op: OperatingPoint) -> OperatingPoint:
        """The point if this family can run its ``params``; a ``ValueError`` otherwise."""
        return op

    def find_op(self, name: str) -> OperatingPoint:
        """The shipped point called ``name`` (a ``KeyError`` lists the names there are)."""
        for o in self.operating_points():
            if o.name == name:
                return o
        have = ", ".join(repr(o.name) for o in self.operating_points())
        raise KeyError(f"no operating point named {name!r} (have: {have})")

    # per-point tensors (e.g. re-estimated BatchNorm statistics), stored by the zoo beside the
    # weights as "<point name>/<key>"; families that have none keep the empty default
    def op_state(self) -> dict[str, dict[str, Tensor]]:
        """Per-point tensors, ``{point name: {key: tensor}}``; empty for most families."""
        return {}

    def load_op_state(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Put back tensors saved by :meth:`op_state` (the zoo does this on load)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no per-point tensors, got {sorted(state)[:3]}")

    # ------------------------------------------------------------------ calibration

    def candidate_operating_points(self, data, split: str, *, batch_size: int = 500,
                                   progress: bool = False) -> list[OperatingPoint]:
        """The points ``calibrate`` measures; families add their own search keywords (an unknown
        keyword is a TypeError, never silently ignored)."""
        return self.default_operating_points()

    def calibrate(self, data, split: str = "calib", *, batch_size: int = 500, progress: bool = False,
                  most: int = 15, least: int = 8, **kw) -> list[OperatingPoint]:
        """Measure the family's candidate points on ``split`` of ``data`` (a SplitData), keep
        the frontier (topped up to ``least`` points), store and return them."""
        cands = self.candidate_operating_points(data, split, batch_size=batch_size, progress=progress, **kw)
        measured = self.measure(data.get(split), data.mean, data.std, cands, split=split, batch_size=batch_size,
                                progress=progress)
        self.set_operating_points(pareto_subset(measured, most, least))
        return self.operating_points()

    @torch.no_grad()
    def measure(self, ds, mean, std, ops: list[OperatingPoint], split: str | None = None, batch_size: int = 500,
                progress: bool = False) -> list[OperatingPoint]:
        """Each point's mean MACs and top-1 accuracy over an ImageDataset, with real routing."""
        return measured_points(self.routed_outputs(ds, mean, std, ops, batch_size, progress), ds.labels, split)

    @torch.no_grad()
    def outputs(self, ds, mean, std, ops: list[OperatingPoint], batch_size: int = 500,
                progress: bool = False) -> Iterator[tuple[OperatingPoint, DynamicOutput]]:
        """Each point's outputs over a whole split (logits, per-input MACs, path) in ``ops``
        order, from real routed ``infer`` calls: one streamed pass per point, nothing kept but
        logits. Families with an exact cheaper way override it (multi-exit models and
        cascades run every input once through every exit and replay each point's routing);
        :meth:`routed_outputs` stays the reference such overrides are checked against."""
        yield from self.routed_outputs(ds, mean, std, ops, batch_size, progress)

    @torch.no_grad()
    def routed_outputs(self, ds, mean, std, ops: list[OperatingPoint], batch_size: int = 500,
                       progress: bool = False) -> Iterator[tuple[OperatingPoint, DynamicOutput]]:
        """:meth:`outputs` by real routing, whatever the family."""
        self.check_split(ds)
        dev = _param_device(self)
        n_batches = -(-len(ds.labels) // batch_size)
        bar = _bar(progress, len(ops) * n_batches, "routed pass")
        for op in ops:
            op = self.check_op(op)
            parts = []
            for x, _ in batches(ds, mean, std, batch_size, dev):
                o = self.infer(x, op)
                parts.append(DynamicOutput(o.logits.float().cpu(), o.macs.double().cpu(),
                                           None if o.path is None else o.path.cpu(), o.num_paths))
                bar.update(1)
            yield op, _cat(parts)
        bar.close()

    # ------------------------------------------------------------------ budget

    def at_budget(self, macs: float, mix: bool = True) -> OperatingPoint | Mixture:
        """The most accurate shipped point whose mean MACs fit ``macs``; with ``mix``, where two
        neighbouring frontier points bracket the budget, their mixture that meets it exactly.
        A budget above the most expensive point gets the most accurate point; NaN, infinity,
        zero, negative, non-numeric budgets and budgets below the cheapest point raise a
        :class:`BudgetError` that names the reachable range."""
        pts = [p for p in self.operating_points() if p.calibrated]
        if not pts:
            raise BudgetError(f"{type(self).__name__} has no calibrated operating points: call calibrate(data) first")
        lo, hi = min(p.macs for p in pts), max(p.macs for p in pts)
        reach = f"reachable: {lo / 1e6:.4g} M to {hi / 1e6:.4g} M MACs per input; more gets the best point"
        check_budget(macs, reach)
        idx = pareto_indices([p.macs for p in pts], [p.accuracy for p in pts])
        front = [pts[i] for i in idx]
        fits = [p for p in front if _fits(p.macs, macs)]
        if not fits:
            raise BudgetError(f"budget {macs / 1e6:.4g} M MACs is below the cheapest operating point ({reach})")
        best = fits[-1]
        nxt = next((p for p in front if not _fits(p.macs, macs)), None)
        if not mix or nxt is None or best.macs >= macs:
            return best
        p = (macs - best.macs) / (nxt.macs - best.macs)
        return Mixture(best, nxt, min(max(p, 0.0), 1.0))

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def infer(self, x: Tensor, op: OperatingPoint | Mixture | str | None = None,
              generator: torch.Generator | None = None) -> DynamicOutput:
        """Logits and per-input MACs at ``op`` (a point, its name, a Mixture; None: the most
        expensive setting). Always runs in eval mode; ``x`` must pass :meth:`check_input`."""
        self.check_input(x)
        was = self.training
        self.eval()
        try:
            if isinstance(op, Mixture):
                return self._infer_mixture(x, op, generator)
            if isinstance(op, str):
                op = self.find_op(op)
            return self._infer(x, self.check_op(op if op is not None else self.default_op()))
        finally:
            self.train(was)

    def check_input(self, x) -> None:
        """A ValueError naming what is wrong with a batch ``infer`` cannot take: not a float
        (B, C, H, W) tensor, no rows, the wrong channels or size (:meth:`check_input_size`),
        or NaN / infinite values (they would give NaN logits and, where decisions read them,
        made-up MACs)."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"infer takes a (B, C, H, W) tensor, got {_shape_of(x)}")
        if not x.is_floating_point():
            raise ValueError(f"infer takes a floating-point tensor (normalised images), got {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("infer takes at least one input, got an empty batch (0, C, H, W)")
        self.check_input_size(tuple(x.shape[1:]))
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        if bad:
            raise ValueError(f"{bad} of {x.shape[0]} inputs hold NaN or infinite values; infer takes finite inputs")

    def check_split(self, ds) -> None:
        """A ValueError for a split (ImageDataset) that cannot be measured: no images (every
        mean would be NaN) or images of a size this model's costs do not hold for."""
        if len(ds.labels) == 0:
            raise ValueError(f"split {getattr(ds, 'name', '')!r} holds no images: nothing to measure")
        self.check_input_size(tuple(ds.images.shape[1:]))

    def check_input_size(self, size: tuple[int, ...]) -> None:
        """A ValueError unless this model's MACs hold for inputs of ``size`` (C, H, W): the
        ``input_size`` its costs and operating points were measured at. Families that count
        MACs at any size (fully convolutional static networks) accept any H and W."""
        want = tuple(getattr(self, "input_size", None) or ())
        size = tuple(int(v) for v in size)
        if not want:
            return
        if len(size) != 3 or size[0] != want[0]:
            raise ValueError(f"input of size {size}: this model takes {want[0]} channels, (C, H, W) = {want}")
        if size[1:] != want[1:] and not self.any_input_hw:
            raise ValueError(f"input of size {size}: this model's costs and operating points were measured at "
                             f"{want}; resize inputs to {want[1]}x{want[2]}")
        if min(size[1:]) < 1:
            raise ValueError(f"input of size {size}: height and width must be at least 1")

    def _infer_mixture(self, x: Tensor, mix: Mixture, generator) -> DynamicOutput:
        high = mix.assign(x.shape[0], generator).to(x.device)
        parts = [(~high).nonzero().squeeze(1), high.nonzero().squeeze(1)]
        outs = [(rows, self._infer(x.index_select(0, rows), self.check_op(o)))
                for rows, o in zip(parts, (mix.low, mix.high)) if rows.numel()]
        ref = outs[0][1]
        logits = ref.logits.new_empty(x.shape[0], ref.logits.shape[1])
        macs = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        path = None if ref.path is None else torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for rows, o in outs:
            logits[rows], macs[rows] = o.logits, o.macs
            if path is not None and o.path is not None:
                path[rows] = o.path
        return DynamicOutput(logits, macs, path, ref.num_paths)

    def is_static(self, op: OperatingPoint | str | None = None) -> bool:
        """Whether ``export(op)`` has input-independent control flow (then it also exports to ONNX)."""
        return False

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:  # pragma: no cover - abstract
        """A standalone network for one point (not a Mixture), accepted by ``torch.jit.script``,
        with ``infer``'s logits and per-input MACs."""
        raise NotImplementedError

    def _export_op(self, op) -> OperatingPoint:
        """The validated point ``export`` builds (helper for families)."""
        if isinstance(op, Mixture):
            raise TypeError("export builds one network per operating point; export mixture.low and mixture.high")
        if isinstance(op, str):
            op = self.find_op(op)
        return self.check_op(op if op is not None else self.default_op())


def normalised(ds, mean, std) -> tuple[Tensor, Tensor]:
    """Whole split as float (N, C, H, W) normalised by per-channel mean/std (0..1 pixel units)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (ds.images.float() / 255.0 - m) / s, ds.labels


def batches(ds, mean, std, batch_size: int, device=None) -> Iterator[tuple[Tensor, Tensor]]:
    """A split in order as normalised float batches: only one batch is ever converted, so a
    large split costs its uint8 images, not four times that."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    for i in range(0, len(ds.labels), batch_size):
        x = (ds.images[i:i + batch_size].float() / 255.0 - m) / s
        y = ds.labels[i:i + batch_size]
        yield (x, y) if device is None else (x.to(device), y.to(device))


def check_budget(macs, reach: str = "") -> float:
    """``macs`` as a float if it is a mean-MAC budget at all (a finite number > 0), else a
    :class:`BudgetError`; ``reach`` (the reachable range) is added to its message. Callers
    that do long work before ``at_budget`` (calibration) check the budget first."""
    if not isinstance(macs, Real) or isinstance(macs, bool) or not math.isfinite(macs) or macs <= 0:
        raise BudgetError(f"a MAC budget must be a positive finite number, got {macs!r}" + (f" ({reach})" if reach else ""))
    return float(macs)


def _fits(cost: float, budget: float) -> bool:
    """Whether a point of mean MACs ``cost`` meets ``budget`` (up to float rounding)."""
    return cost <= budget * (1 + 1e-9)


def _shape_of(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else f"a {type(x).__name__}"


def measured_points(outputs: Iterable[tuple[OperatingPoint, DynamicOutput]], labels: Tensor,
                    split: str | None) -> list[OperatingPoint]:
    """Each ``(point, outputs over a split)`` pair as the point measured there: mean MACs and
    top-1 accuracy against ``labels``."""
    n = len(labels)
    return [op.measured(float(o.macs.sum()) / n, 100.0 * int((o.logits.argmax(1) == labels.to(o.logits.device)).sum()) / n,
                        split) for op, o in outputs]


def _param_device(m: nn.Module):
    p = next(m.parameters(), None)
    return None if p is None else p.device


def _cat(parts: list[DynamicOutput]) -> DynamicOutput:
    path = None if parts[0].path is None else torch.cat([p.path for p in parts])
    return DynamicOutput(torch.cat([p.logits for p in parts]), torch.cat([p.macs for p in parts]), path,
                         parts[0].num_paths)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(on: bool, total: int, desc: str):
    """A tqdm bar (rate and ETA) over ``total`` steps, or a stand-in that does nothing."""
    if not on:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def progress_bar(it, on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm  # a dependency of the package, imported only when asked for

    return tqdm(it, desc=desc, leave=False)

