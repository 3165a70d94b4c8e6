"""Accuracy-vs-MACs trade-off curves and frontier maths (no data, no models).

* :class:`TradeoffCurve`: points with top-1/top-5 accuracy (%), per-sample MACs (mean,
  median, p95) and per-path fractions, plus which split chose the points and which measured.
* Frontier maths. Between two operating points A and B, routing each input to A with
  probability p realises exactly the straight line between them in (mean MACs, accuracy),
  so linear interpolation on the Pareto frontier is achievable, not just a drawing aid.
* Calibration to a target says whether the target was reachable; it never fails silently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Callable, Iterable

import torch
from torch import Tensor

from anycost.core import OperatingPoint, check_budget, pareto_indices

__all__ = [
    "OperatingPoint", "CurvePoint", "TradeoffCurve", "Calibration",
    "pareto_front", "accuracy_at_macs", "macs_at_accuracy", "iso_accuracy_reduction", "normalised_auc",
    "calibrate_to_budget", "calibrate_to_accuracy_drop", "bisect_knob", "point_from_outputs",
]


def matches(method: str, pattern: str) -> bool:
    """Shell-glob match of a curve's method name, with ``|`` between alternatives
    (``resnet?.cifar10|resnet??.cifar10``): one rule for every command that selects curves."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(method, g) for g in pattern.split("|"))


@dataclass
class CurvePoint:
    operating_point: OperatingPoint
    accuracy: float  # top-1, percent
    macs_mean: float  # MACs per input
    top5: float | None = None
    macs_median: float | None = None
    macs_p95: float | None = None
    path_fractions: list[float] | None = None  # share of inputs per exit / path / network
    n: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["operating_point"] = self.operating_point.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CurvePoint":
        d = dict(d)
        d["operating_point"] = OperatingPoint.from_dict(d.get("operating_point", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TradeoffCurve:
    method: str
    points: list[CurvePoint]
    calibrated_on: str | None = None  # split that chose the operating points
    measured_on: str | None = None  # split the numbers come from
    static: bool = False  # one fixed network (drawn as a marker)
    family: str | None = None  # plots join static curves of one family into one marker series

    def to_dict(self) -> dict:
        return {"method": self.method, "family": self.family, "calibrated_on": self.calibrated_on,
                "measured_on": self.measured_on, "static": self.static, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> "TradeoffCurve":
        return cls(d["method"], [CurvePoint.from_dict(p) for p in d["points"]], d.get("calibrated_on"),
                   d.get("measured_on"), d.get("static", False), d.get("family"))

    @property
    def macs(self) -> list[float]:
        return [p.macs_mean for p in self.points]

    @property
    def accuracies(self) -> list[float]:
        return [p.accuracy for p in self.points]

    def frontier(self) -> "TradeoffCurve":
        idx = pareto_front(self.macs, self.accuracies)
        return TradeoffCurve(self.method, [self.points[i] for i in idx], self.calibrated_on, self.measured_on,
                             self.static, self.family)

    def accuracy_at(self, macs: float) -> float | None:
        return accuracy_at_macs(self.macs, self.accuracies, macs)

    def macs_at(self, accuracy: float) -> float | None:
        return macs_at_accuracy(self.macs, self.accuracies, accuracy)

    @staticmethod
    def merge(method: str, curves: Iterable["TradeoffCurve"]) -> "TradeoffCurve":
        """One curve from several (e.g. the static ResNet family as one frontier)."""
        curves = list(curves)
        pts = [p for c in curves for p in c.points]
        on = {c.measured_on for c in curves}
        return TradeoffCurve(method, pts, curves[0].calibrated_on if curves else None,
                             on.pop() if len(on) == 1 else "mixed", False)


# --------------------------------------------------------------------------- frontier maths


pareto_front = pareto_indices


def _front_xy(macs, acc) -> tuple[list[float], list[float]]:
    """The frontier's (MACs, accuracy), leaving out points with a NaN coordinate (they would
    poison every comparison)."""
    keep = [i for i in range(len(macs)) if _number(macs[i]) and _number(acc[i])]
    idx = pareto_front([macs[i] for i in keep], [acc[i] for i in keep])
    return [macs[keep[i]] for i in idx], [acc[keep[i]] for i in idx]


def _number(v) -> bool:
    """A real number that is not NaN (infinities compare fine)."""
    return isinstance(v, Real) and not isinstance(v, bool) and not math.isnan(v)


def _not_nan(v, what: str) -> None:
    if not _number(v):
        raise ValueError(f"{what} must be a number, got {v!r}")


def accuracy_at_macs(macs, acc, budget: float) -> float | None:
    """Best accuracy reachable at a mean-MAC budget, interpolated on the frontier; None when
    the budget is below the cheapest point. A NaN budget is an error, not a made-up answer."""
    _not_nan(budget, "MAC budget")
    xs, ys = _front_xy(macs, acc)
    if not xs or budget < xs[0]:
        return None
    if budget >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= budget <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
    return ys[-1]  # pragma: no cover


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval, in percent, of an accuracy measured on ``n``
    images. Wilson rather than the normal approximation: it stays inside [0, 100] near the
    ends. ``n = 0`` (unknown) gives the whole range."""
    if n <= 0:
        return 0.0, 100.0
    _not_nan(accuracy, "accuracy")
    q = accuracy / 100.0
    mid = (q + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, mid - half), 100.0 * min(1.0, mid + half)


def macs_at_accuracy(macs, acc, target: float) -> float | None:
    """Fewest mean MACs that reach ``target`` accuracy on the frontier; None if unreachable."""
    _not_nan(target, "target accuracy")
    xs, ys = _front_xy(macs, acc)
    if not xs or target > ys[-1]:
        return None
    if target <= ys[0]:
        return xs[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 <= target <= y1:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return xs[-1]  # pragma: no cover


def iso_accuracy_reduction(curve: TradeoffCurve, reference: TradeoffCurve, accuracy: float | None = None) -> dict:
    """How many times fewer MACs ``curve`` needs than ``reference`` for the same accuracy.

    ``accuracy`` defaults to the highest accuracy both curves reach. Returns the accuracy
    used, both MAC figures and their ratio (reference / curve; > 1 means ``curve`` is cheaper)."""
    if accuracy is None:
        accuracy = min(max(curve.accuracies), max(reference.accuracies))
    m, r = curve.macs_at(accuracy), reference.macs_at(accuracy)
    return {"accuracy": accuracy, "macs": m, "reference_macs": r,
            "reduction": (r / m) if (m and r) else None}


def normalised_auc(curve: TradeoffCurve, lo: float | None = None, hi: float | None = None, log_x: bool = True) -> float:
    """Area under the frontier's accuracy (as a fraction) over MACs in [lo, hi], divided by
    the width of the range, so 1.0 means 100 % accuracy at every budget. The x axis is
    log-MACs by default (as plotted). Budgets below the cheapest point score 0."""
    xs, ys = _front_xy(curve.macs, curve.accuracies)
    if not xs:
        raise ValueError(f"curve {curve.method!r} has no points with numeric MACs and accuracy")
    lo = xs[0] if lo is None else lo
    hi = xs[-1] if hi is None else hi
    if hi <= lo:
        return (curve.accuracy_at(hi) or 0.0) / 100.0
    f = (lambda v: math.log(v)) if log_x else (lambda v: v)
    # Exact integral of the piecewise-linear (in MACs) frontier, sampled finely on the chosen axis.
    n = 512
    grid = [f(lo) + (f(hi) - f(lo)) * i / n for i in range(n + 1)]
    inv = (lambda t: math.exp(t)) if log_x else (lambda t: t)
    vals = [(curve.accuracy_at(inv(t)) or 0.0) / 100.0 for t in grid]
    area = sum((vals[i] + vals[i + 1]) / 2 * (grid[i + 1] - grid[i]) for i in range(n))
    return area / (f(hi) - f(lo))



def point_from_outputs(op: OperatingPoint, logits: Tensor, labels: Tensor, macs: Tensor,
                       path: Tensor | None = None, num_paths: int = 0) -> CurvePoint:
    """One curve point from a split's outputs. An empty split, outputs that do not match the
    labels, or NaN / infinite MACs are errors: each would turn into a NaN accuracy or cost."""
    n = int(labels.numel())
    if n == 0:
        raise ValueError(f"operating point {op.name!r}: no inputs to measure (the split is empty)")
    if logits.shape[0] != n or macs.numel() != n:
        raise ValueError(f"operating point {op.name!r}: {logits.shape[0]} outputs and {macs.numel()} MAC counts "
                         f"for {n} labels")
    if not bool(torch.isfinite(macs.double()).all()):
        raise ValueError(f"operating point {op.name!r}: per-input MACs hold NaN or infinite values")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    acc = 100.0 * (top[:, 0] == labels).double().mean().item()
    top5 = 100.0 * (top == labels[:, None]).any(1).double().mean().item()
    m = macs.double()
    fr = None
    if path is not None and num_paths > 0:
        fr = (torch.bincount(path.long(), minlength=num_paths).double() / path.numel()).tolist()
    return CurvePoint(op, acc, m.mean().item(), top5, m.median().item(), torch.quantile(m, 0.95).item(), fr, int(labels.numel()))


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    target: dict  # {"macs_mean": B} or {"max_drop": D, "reference_accuracy": A}
    reachable: bool
    point: CurvePoint | None  # the chosen point, as measured on the calibration split
    calibrated_on: str | None
    message: str

    def to_dict(self) -> dict:
        return {"target": self.target, "reachable": self.reachable, "calibrated_on": self.calibrated_on,
                "message": self.message, "point": self.point.to_dict() if self.point else None}


def calibrate_to_budget(curve: TradeoffCurve, macs_budget: float) -> Calibration:
    """Most accurate point of a calibration-split curve whose mean MACs fit the budget.
    Unreachable budgets (below the cheapest point) return the cheapest point, flagged."""
    check_budget(macs_budget)
    if not curve.points:
        raise ValueError(f"curve {curve.method!r} has no points to choose from")
    fits = [p for p in curve.points if p.macs_mean <= macs_budget]
    tgt = {"macs_mean": macs_budget}
    if not fits:
        cheapest = min(curve.points, key=lambda p: p.macs_mean)
        return Calibration(tgt, False, cheapest, curve.calibrated_on or curve.measured_on,
                           f"budget {macs_budget / 1e6:.3f} M MACs is below the cheapest operating point "
                           f"({cheapest.macs_mean / 1e6:.3f} M MACs); returning that point")
    best = max(fits, key=lambda p: (p.accuracy, -p.macs_mean))
    return Calibration(tgt, True, best, curve.calibrated_on or curve.measured_on,
                       f"{best.accuracy:.2f}% at {best.macs_mean / 1e6:.3f} M MACs (budget {macs_budget / 1e6:.3f} M)")


def calibrate_to_accuracy_drop(curve: TradeoffCurve, max_drop: float, reference_accuracy: float | None = None) -> Calibration:
    """Cheapest point whose accuracy is within ``max_drop`` points of the reference (default:
    the curve's most expensive point). If none is, the most accurate point, flagged."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop is in accuracy points and must be a finite number >= 0, got {max_drop!r}")
    if not curve.points:
        raise ValueError(f"curve {curve.method!r} has no points to choose from")
    if reference_accuracy is None:
        reference_accuracy = max(curve.points, key=lambda p: p.macs_mean).accuracy
    floor = reference_accuracy - max_drop
    ok = [p for p in curve.points if p.accuracy >= floor]
    tgt = {"max_drop": max_drop, "reference_accuracy": reference_accuracy}
    where = curve.calibrated_on or curve.measured_on
    if not ok:
        best = max(curve.points, key=lambda p: p.accuracy)
        return Calibration(tgt, False, best, where, f"no operating point reaches {floor:.2f}% "
                           f"(best {best.accuracy:.2f}%); returning the most accurate point")
    best = min(ok, key=lambda p: (p.macs_mean, -p.accuracy))
    return Calibration(tgt, True, best, where, f"{best.accuracy:.2f}% at {best.macs_mean / 1e6:.3f} M MACs "
                       f"(floor {floor:.2f}%)")


def bisect_knob(f: Callable[[float], float], lo: float, hi: float, target: float, *, tol: float = 1e-4,
                max_iter: int = 60) -> tuple[float, float, bool]:
    """Find knob k in [lo, hi] with f(k) <= target as close to it as possible, for a monotone f
    (e.g. threshold -> mean MACs on cached outputs). Returns (k, f(k), reachable). When even
    the best end of the range misses the target, reachable is False and that end is returned."""
    flo, fhi = f(lo), f(hi)
    increasing = fhi >= flo
    small_k, small_f = (lo, flo) if increasing else (hi, fhi)
    big_k, big_f = (hi, fhi) if increasing else (lo, flo)
    if small_f > target:
        return small_k, small_f, False
    if big_f <= target:
        return big_k, big_f, True
    a, b = small_k, big_k  # f(a) <= target < f(b)
    for _ in range(max_iter):
        if abs(b - a) <= tol:
            break
        mid = (a + b) / 2
        if f(mid) <= target:
            a = mid
        else:
            b = mid
    return a, f(a), True
