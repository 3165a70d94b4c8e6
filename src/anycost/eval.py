"""Evaluation over datasets: a classifier's accuracy, a dynamic model's outputs over a split,
and one curve point per operating point. Curve types and frontier maths live in
:mod:`anycost.curves` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.core import DynamicModel, DynamicOutput
from anycost.models.static import as_dynamic
from anycost.curves import *  # noqa: F401,F403  (re-exported: callers import curves from here too)
from anycost.curves import CurvePoint, OperatingPoint, TradeoffCurve, point_from_outputs, __all__ as _curves_all
from anycost.data import BatchLoader, ImageDataset

__all__ = [*_curves_all, "evaluate_classifier", "collect_outputs", "evaluate_curve", "fast_path", "RoutingMismatch"]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_classifier(model: nn.Module, ds: ImageDataset, mean, std, batch_size: int = 1000, device="cpu",
                        channels_last: bool = False) -> dict:
    """Top-1/top-5 (%) and mean cross-entropy of ``model(x)`` over a split, no augmentation."""
    _nonempty(ds)
    was = model.training
    model.eval()
    loader = BatchLoader(ds, batch_size, mean, std, device=device, channels_last=channels_last)
    n, loss, c1, c5 = 0, 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        if isinstance(logits, DynamicOutput):
            logits = logits.logits
        loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum().item()
        c5 += (top == y[:, None]).any(1).sum().item()
        n += y.shape[0]
    model.train(was)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "n": n}


@dataclass
class Outputs:
    """Everything one pass of a dynamic model over a split produced, on the CPU."""

    logits: Tensor  # (N, K)
    labels: Tensor  # (N,)
    macs: Tensor  # (N,) float64
    path: Tensor | None
    num_paths: int


@torch.no_grad()
def collect_outputs(model: nn.Module, ds: ImageDataset, mean, std, op: OperatingPoint | None = None,
                    batch_size: int = 1000, device="cpu") -> Outputs:
    """Run ``model.infer(x, op)`` (a plain classifier is wrapped as static) over a split."""
    _nonempty(ds)
    was = model.training
    model.eval()
    dyn = as_dynamic(model, tuple(ds.images.shape[1:]))
    loader = BatchLoader(ds, batch_size, mean, std, device=device)
    logits, labels, macs, paths, num_paths = [], [], [], [], 0
    for x, y in loader:
        out = dyn.infer(x, op)  # checks each batch: size, finiteness
        logits.append(out.logits.float().cpu())
        labels.append(y.cpu())
        macs.append(out.macs.double().cpu())
        if out.path is not None:
            paths.append(out.path.cpu())
            num_paths = out.num_paths
    model.train(was)
    return Outputs(torch.cat(logits), torch.cat(labels), torch.cat(macs), torch.cat(paths) if paths else None, num_paths)



def _nonempty(ds: ImageDataset) -> None:
    """An empty split has no accuracy: a ValueError, not a NaN or a division by zero."""
    if len(ds) == 0:
        raise ValueError(f"split {ds.name!r} holds no images: nothing to evaluate")


def fast_path(model: nn.Module) -> bool:
    """Whether ``model.outputs`` replays routing on cached outputs instead of routing for real."""
    return isinstance(model, DynamicModel) and type(model).outputs is not DynamicModel.outputs


class RoutingMismatch(RuntimeError):
    """The fast (cached) outputs of a model disagree with its real routed execution."""


def _verify_rows(n: int, k: int) -> Tensor:
    """``k`` rows spread evenly over ``n`` (all when k >= n): a sample that sees the whole split."""
    return torch.arange(n) if k >= n else torch.linspace(0, n - 1, k).round().long().unique()


def evaluate_curve(model: nn.Module, ds: ImageDataset, mean, std, ops: list[OperatingPoint] | None = None,
                   method: str | None = None, calibrated_on: str | None = None, measured_on: str | None = None,
                   batch_size: int = 1000, device="cpu", progress: bool = False, real_routing: bool = False,
                   verify: int = 1000, logit_atol: float = 1e-3) -> TradeoffCurve:
    """One curve point per operating point, from the family's fastest exact outputs
    (``model.outputs``: one cached pass for multi-exit models and cascades, one streamed
    routed pass per point otherwise). Where those are not real routing, ``verify`` images
    spread over the split are also run with real routing at every point, and any
    difference in route, per-input MACs or logits (beyond ``logit_atol``) raises
    :class:`RoutingMismatch`. ``real_routing=True`` routes everything for real instead."""
    _nonempty(ds)
    dyn = as_dynamic(model, tuple(ds.images.shape[1:]))
    ops = ops or dyn.operating_points()
    cached = fast_path(dyn)
    was = model.training
    model.eval()
    try:
        gen = (dyn.routed_outputs if real_routing else dyn.outputs)(ds, mean, std, ops, batch_size, progress)
        rows = _verify_rows(len(ds.labels), verify) if cached and not real_routing and verify > 0 else None
        pts, kept = [], {}
        for op, o in gen:
            pts.append(point_from_outputs(op, o.logits, ds.labels, o.macs, o.path, o.num_paths))
            if rows is not None:
                kept[op.name] = DynamicOutput(o.logits[rows], o.macs[rows], None if o.path is None else o.path[rows])
        if rows is not None:
            sub = ds.subset(rows)
            for op, real in dyn.routed_outputs(sub, mean, std, ops, batch_size, progress):
                _compare(op.name, kept[op.name], real, logit_atol, len(rows))
    finally:
        model.train(was)
    name = method or getattr(model, "model_name", type(model).__name__)
    return TradeoffCurve(name, pts, calibrated_on, measured_on, static=dyn.family == "static")


def _compare(name: str, fast: DynamicOutput, real: DynamicOutput, atol: float, n: int) -> None:
    problems = []
    if fast.path is not None and real.path is not None and not torch.equal(fast.path, real.path):
        problems.append(f"{int((fast.path != real.path).sum())} of {n} routes")
    if not torch.allclose(fast.macs, real.macs, rtol=1e-9, atol=0.5):
        problems.append(f"per-input MACs (max difference {float((fast.macs - real.macs).abs().max()):.4g})")
    diff = float((fast.logits - real.logits.float()).abs().max())
    if diff > atol:
        problems.append(f"logits (max difference {diff:.3g} > {atol:g})")
    if problems:
        raise RoutingMismatch(f"operating point '{name}': cached outputs differ from real routing in "
                              + ", ".join(problems) + " on the verification images; this is a bug in the family's "
                              "outputs(); evaluate with real routing (--real-routing) meanwhile")
