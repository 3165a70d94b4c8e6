"""Candidate operating points of a trained CNMM: every pruning mechanism at a range of MAC
budgets, each with and without BatchNorm statistics re-estimated for its pruned network.

The points follow from the model's own parameters (mixing probabilities, BN scales), except
the greedy edge order, chosen on the calibration split. BN re-estimation reads training
images only to feed running averages; the re-estimated statistics become the ``+bn`` point's
op state, held by the model under the point's name (never in ``params``)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anycost.core import OperatingPoint
from anycost.data import BatchLoader, SplitData, crop_pad

from .grid import PruneSpec
from .pruned import bn_state, reestimate_bn
from .pruning import CALIBRATED_MECHANISMS, MECHANISMS, check_path

if TYPE_CHECKING:
    from .model import CNMM

DEFAULT_FRACTIONS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15)


@dataclass
class SearchConfig:
    """What :meth:`CNMM.candidate_operating_points` tries. ``greedy_path``: an edge order found
    before (e.g. a calibrate record's ``greedy_path`` for the same model), so the slow search
    is skipped. ``bn_batches=0``: no ``+bn`` points. ``train_augment``: the augmentation BN
    batches replay (None: the model's ``pretrained_cfg["train_augment"]``, else crop and flip)."""

    mechanisms: tuple[str, ...] = MECHANISMS + CALIBRATED_MECHANISMS
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    greedy_path: list | None = None
    bn_batches: int = 20
    bn_augment: bool = True
    train_augment: dict | None = None

    def __post_init__(self):
        self.mechanisms, self.fractions = tuple(self.mechanisms), tuple(float(f) for f in self.fractions)
        unknown = set(self.mechanisms) - set(MECHANISMS + CALIBRATED_MECHANISMS)
        if unknown or not self.mechanisms:
            raise ValueError(f"mechanisms: unknown {sorted(unknown)} (choose from {MECHANISMS + CALIBRATED_MECHANISMS})")
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions of the full MACs are in (0, 1], got {self.fractions}")
        if self.bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0, got {self.bn_batches}")


def bn_statistics_loader(data: SplitData, mean, std, *, augment: bool = True, train_augment: dict | None = None,
                         batch_size: int = 256, device="cpu") -> BatchLoader:
    """Training batches for re-estimating a pruned network's BatchNorm statistics: shuffled
    (fixed seed) and, by default, with the model's training augmentation: ``train_augment``
    (from the model's meta, see :func:`anycost.zoo.train_augmentation`: crop padding, flip,
    cutout), or random crop and flip where the model does not record it. Why augmented: BN
    re-estimation recovers the statistics the later layers were fitted to, and those were the
    augmented images'. Nothing is chosen by these batches: they only feed running averages,
    and the labels are never read."""
    aug = dict(train_augment or {})
    return BatchLoader(data.train, batch_size, mean, std, shuffle=True, augment=augment and aug.get("augment", True),
                       flip=aug.get("flip", True), pad=crop_pad(aug.get("pad"), data.input_size[1]),
                       cutout=aug.get("cutout", 0), device=device)


def point_name(mechanism: str, fraction: float, bn: bool) -> str:
    """E.g. "edges 50%" or "greedy+bn 25%": distinct fractions give distinct names."""
    return f"{mechanism}{'+bn' if bn else ''} {100 * fraction:g}%"


def pruning_operating_points(model: "CNMM", fractions=DEFAULT_FRACTIONS, mechanisms=MECHANISMS, bn_loader=None,
                             bn_batches: int = 20, calib_loader=None, greedy_path: list | None = None,
                             progress: bool = False) -> dict:
    """For each mechanism and budget fraction of the full MACs, the point keeping that
    mechanism's PruneSpec and, when ``bn_loader`` is given, a ``+bn`` point whose re-estimated
    statistics are stored in ``model`` (op state under its name). ``"greedy"`` and
    ``"greedy-unit"`` share one edge order, found on ``calib_loader`` or given as
    ``greedy_path``. Returns ``{"ops": {curve label: [points]}, "unreachable": [...],
    "greedy_path": [...] | None}``: budgets a mechanism cannot reach are listed, not hidden."""
    path = _greedy_path(model, mechanisms, calib_loader, greedy_path, progress)
    full = model.full_macs()
    if bn_loader is not None:
        # the same batches for every network, so that a +bn point does not depend on which
        # other points were computed before it (a shuffled loader moves on at every pass)
        bn_loader = list(itertools.islice(iter(bn_loader), bn_batches))
    ops, unreachable, states = {}, [], {}
    for mech in mechanisms:
        for f in fractions:
            spec = model.prune_spec(f * full, mech, path=path)
            if spec is None:
                unreachable.append({"mechanism": mech, "fraction": f})
                continue
            params = {"prune": spec.to_dict(), "mechanism": mech, "budget_fraction": f, "bn": False}
            ops.setdefault(mech, []).append(OperatingPoint(point_name(mech, f, False), params))
            if bn_loader is not None:
                op = OperatingPoint(point_name(mech, f, True), dict(params, bn=True))
                key = json.dumps(params["prune"], sort_keys=True)  # one re-estimation per distinct network
                if key not in states:
                    states[key] = bn_state(reestimate_bn(model.build_pruned(spec), bn_loader, bn_batches))
                model.put_op_state(op.name, states[key])
                ops.setdefault(f"{mech}+bn", []).append(op)
    return {"ops": ops, "unreachable": unreachable, "greedy_path": [s.to_dict() for s in path] if path else None}


def _greedy_path(model: "CNMM", mechanisms, calib_loader, greedy_path, progress) -> list[PruneSpec] | None:
    if not any(m in CALIBRATED_MECHANISMS for m in mechanisms):
        return None
    if greedy_path is not None:
        return check_path(model, greedy_path)
    if calib_loader is None:
        raise ValueError("the 'greedy' mechanisms need calib_loader: held-out batches to order the edges on")
    return model.greedy_edge_path(calib_loader, progress=progress)


def candidate_points(model: "CNMM", data: SplitData, split: str, cfg: SearchConfig, *, batch_size: int = 500,
                     progress: bool = False) -> list[OperatingPoint]:
    """The points ``calibrate`` measures: :func:`pruning_operating_points` with the greedy
    order chosen on ``split`` and BN batches from ``data.train``, one point per distinct
    network (the full network is reached by every mechanism at 100 %). What the search found
    besides (greedy path, unreachable budgets) is left in ``model.candidate_info``."""
    device = next(model.parameters()).device
    greedy = any(m in CALIBRATED_MECHANISMS for m in cfg.mechanisms)
    calib = BatchLoader(data.get(split), batch_size, data.mean, data.std, device=device) \
        if greedy and cfg.greedy_path is None else None
    bn = None
    if cfg.bn_batches:
        aug = cfg.train_augment if cfg.train_augment is not None else \
            (getattr(model, "pretrained_cfg", None) or {}).get("train_augment")
        bn = bn_statistics_loader(data, data.mean, data.std, augment=cfg.bn_augment, train_augment=aug, device=device)
    res = pruning_operating_points(model, cfg.fractions, cfg.mechanisms, bn, cfg.bn_batches, calib, cfg.greedy_path,
                                   progress)
    model.candidate_info = {"greedy_path": res["greedy_path"], "unreachable": res["unreachable"], "split": split}
    seen, out = set(), []
    for op in (o for ops in res["ops"].values() for o in ops):
        key = json.dumps({"prune": op["prune"], "bn": op["bn"]}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(op)
    return out
