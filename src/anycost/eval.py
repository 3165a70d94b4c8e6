"""Evaluation over datasets: a classifier's accuracy, a dynamic model's outputs over a split,
and one curve point per operating point. Curve types and frontier maths live in
:mod:`anycost.curves` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.core import DynamicOutput
from anycost.models.static import as_dynamic
from anycost.curves import *  # noqa: F401,F403  (re-exported: callers import curves from here too)
from anycost.curves import CurvePoint, OperatingPoint, TradeoffCurve, point_from_outputs, __all__ as _curves_all
from anycost.data import BatchLoader, ImageDataset

__all__ = [*_curves_all, "evaluate_classifier", "collect_outputs", "evaluate_curve"]


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_classifier(model: nn.Module, ds: ImageDataset, mean, std, batch_size: int = 1000, device="cpu",
                        channels_last: bool = False) -> dict:
    """Top-1/top-5 (%) and mean cross-entropy of ``model(x)`` over a split, no augmentation."""
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
    was = model.training
    model.eval()
    dyn = as_dynamic(model, tuple(ds.images.shape[1:]))
    loader = BatchLoader(ds, batch_size, mean, std, device=device)
    logits, labels, macs, paths, num_paths = [], [], [], [], 0
    for x, y in loader:
        if not torch.isfinite(x).all():
            raise ValueError("input batch contains NaN or inf")
        out = dyn.infer(x, op)
        logits.append(out.logits.float().cpu())
        labels.append(y.cpu())
        macs.append(out.macs.double().cpu())
        if out.path is not None:
            paths.append(out.path.cpu())
            num_paths = out.num_paths
    model.train(was)
    return Outputs(torch.cat(logits), torch.cat(labels), torch.cat(macs), torch.cat(paths) if paths else None, num_paths)


def evaluate_curve(model: nn.Module, ds: ImageDataset, mean, std, ops: list[OperatingPoint] | None = None,
                   method: str | None = None, calibrated_on: str | None = None, measured_on: str | None = None,
                   batch_size: int = 1000, device="cpu", progress: bool = False) -> TradeoffCurve:
    """One real pass per operating point (real routing, real per-sample MACs)."""
    from tqdm.auto import tqdm

    dyn = as_dynamic(model, tuple(ds.images.shape[1:]))
    ops = ops or dyn.operating_points()
    pts = []
    for op in tqdm(ops, desc="operating points", disable=not progress or len(ops) < 2, leave=False):
        o = collect_outputs(dyn, ds, mean, std, op, batch_size, device)
        pts.append(point_from_outputs(op, o.logits, o.labels, o.macs, o.path, o.num_paths))
    name = method or getattr(model, "model_name", type(model).__name__)
    return TradeoffCurve(name, pts, calibrated_on, measured_on, static=dyn.family == "static")


