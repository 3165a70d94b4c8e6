"""Calibrate a multi-exit model or a cascade: cache per-exit outputs once per split, choose
policies on the calibration split, measure them on another split (vectorised, on the
cached outputs: the tests check that real routed execution makes the same decisions).

For a CNMM, :func:`calibrate_pruning` does the same job for its pruned networks: the
operating points come from the model's own parameters (mixing probabilities, BN scales),
so no split chooses them; only BatchNorm re-estimation reads training images.

The result holds one curve per policy family (thresholds per metric, learned policy,
fixed exits, oracle) and a short list of operating points to ship with the model, so that
``anycost eval`` re-measures them with real execution on any split.
"""

from __future__ import annotations

import torch

from anycost.data import BatchLoader, SplitData, crop_pad
from anycost.eval import CurvePoint, OperatingPoint, TradeoffCurve, calibrate_to_budget
from anycost.policies import (METRICS, ExitCache, apply_policy, calibrate_threshold, confidence, learn_policy,
                              learned_point, oracle_point, policy_point, threshold_point)


def cache_split(model, data: SplitData, split: str, batch_size: int = 500, device="cpu", mean=None, std=None) -> ExitCache:
    loader = BatchLoader(data.get(split), batch_size, mean or data.mean, std or data.std, device=device)
    return model.cache_outputs(loader, split)


def _fixed_point(cache: ExitCache, e: int) -> CurvePoint:
    params = {"policy": "fixed", "exit": e}
    return policy_point(cache, *apply_policy(cache, params), OperatingPoint(f"exit{e}", params))


def calibrate(model, cal: ExitCache, mea: ExitCache, *, metrics=METRICS, n_thresholds: int = 12, lams=None,
              jump: bool = False, name: str = "model") -> dict:
    """Curves chosen on ``cal`` and measured on ``mea``; plus the operating points to ship."""
    curves, ship = [], []
    for metric in metrics:
        conf = confidence(cal.logits[:-1], metric).flatten().float()
        ts = sorted(set(torch.quantile(conf, torch.linspace(0.02, 0.98, n_thresholds)).tolist())) + [float("inf")]
        pts = [threshold_point(mea, t, metric) for t in ts]
        curves.append(TradeoffCurve(f"{name}: threshold ({metric})", pts, cal.split, mea.split, family="early exit"))
        if metric == metrics[0]:
            ship += [p.operating_point for p in pts]
    lams = lams if lams is not None else [0.0] + torch.logspace(-2.5, 0.5, 11).tolist()
    learned = [learn_policy(cal, lam, jump=jump) for lam in lams]
    pts = [learned_point(mea, params) for params in learned]
    curves.append(TradeoffCurve(f"{name}: learned policy", pts, cal.split, mea.split, family="early exit"))
    ship += [p.operating_point for p in pts]
    curves.append(TradeoffCurve(f"{name}: fixed exit", [_fixed_point(mea, e) for e in range(mea.num_exits)],
                                None, mea.split, family="early exit"))
    curves.append(TradeoffCurve(f"{name}: oracle (lower bound)", [oracle_point(mea)], None, mea.split, family="early exit"))
    return {"curves": curves, "operating_points": ship}


def calibrate_budget(cal: ExitCache, budget: float, policy: str = "threshold", metric: str = "maxprob", lams=None) -> dict:
    """One operating point for a mean-MAC budget, chosen on ``cal``; says if it was reachable."""
    if policy == "threshold":
        pt, ok = calibrate_threshold(cal, budget, metric)
        msg = (f"threshold {pt.operating_point['threshold']:.4f}: {pt.accuracy:.2f}% at {pt.macs_mean / 1e6:.3f} M MACs"
               if ok else f"budget {budget / 1e6:.3f} M MACs is below the cheapest exit ({pt.macs_mean / 1e6:.3f} M)")
        return {"reachable": ok, "point": pt, "message": msg}
    if policy == "learned":
        lams = lams if lams is not None else [0.0] + torch.logspace(-3, 1, 25).tolist()
        curve = TradeoffCurve("learned", [learned_point(cal, learn_policy(cal, lam)) for lam in lams], cal.split, cal.split)
        c = calibrate_to_budget(curve, budget)
        return {"reachable": c.reachable, "point": c.point, "message": c.message}
    raise ValueError(f"budget calibration supports threshold or learned policies, not '{policy}'")


def bn_statistics_loader(data: SplitData, mean, std, *, augment: bool = True, train_augment: dict | None = None,
                         batch_size: int = 256, device="cpu") -> BatchLoader:
    """Training batches for re-estimating a pruned network's BatchNorm statistics: shuffled
    (fixed seed) and, by default, with the model's training augmentation: ``train_augment``
    (from the model's meta, see :func:`anycost.zoo.train_augmentation`: crop padding, flip,
    cutout), or random crop and flip where the model does not record it. Why augmented: BN
    re-estimation recovers the statistics the later layers were fitted to, and those were the
    augmented images'. Measured: the static ResNet-20 (`resnet20.cifar10`, 87.32 % holdout)
    keeps 87.32 % with statistics re-estimated on 20 augmented batches and drops to 85.04 % on
    20 un-augmented ones. Nothing is chosen by these batches: they only feed running averages,
    and the labels are never read."""
    aug = dict(train_augment or {})
    return BatchLoader(data.train, batch_size, mean, std, shuffle=True, augment=augment and aug.get("augment", True),
                       flip=aug.get("flip", True), pad=crop_pad(aug.get("pad"), data.input_size[1]),
                       cutout=aug.get("cutout", 0), device=device)


def calibrate_pruning(model, data: SplitData, split: str, *, name: str = "cnmm", batch_size: int = 500, device="cpu",
                      mean=None, std=None, bn_batches: int = 20, bn_augment: bool = True, train_augment: dict | None = None, fractions=None,
                      mechanisms=None, calib_split: str | None = "calib", greedy_path: list | None = None,
                      progress: bool = False) -> dict:
    """CNMM operating points: for each pruning mechanism and budget (a fraction of the full
    MACs), the pruned network with and without BN statistics re-estimated on ``bn_batches``
    training batches (augmented as in ``train_augment`` unless ``bn_augment=False``; see
    :func:`bn_statistics_loader`);
    one curve per mechanism, measured on ``split``. With a ``calib_split`` other than ``split``,
    the ``greedy`` mechanism (edges ordered by their measured loss) is added, ordered on that
    split (un-augmented), with ``greedy-unit`` (the same networks, kept edges at weight 1);
    ``greedy_path`` reuses an order found before on ``calib_split`` (see
    :func:`anycost.models.cnmm.pruning_operating_points`) instead of searching again."""
    from anycost.eval import evaluate_curve
    from anycost.models.cnmm import CALIBRATED_MECHANISMS, MECHANISMS, pruning_operating_points

    if greedy_path is not None and not calib_split:
        raise ValueError("a greedy path comes with the calib_split it was chosen on")

    if calib_split is not None and calib_split == split:
        raise ValueError("the greedy edge order is chosen on calib_split: measure on another split")
    mean, std = mean or data.mean, std or data.std
    mechanisms = tuple(mechanisms or MECHANISMS + (CALIBRATED_MECHANISMS if calib_split else ()))
    if set(mechanisms) & set(CALIBRATED_MECHANISMS) and not calib_split:
        raise ValueError("the greedy mechanisms order the edges on calib_split: give one")
    calib_loader = BatchLoader(data.get(calib_split), batch_size, mean, std, device=device) \
        if calib_split and greedy_path is None and any(m in CALIBRATED_MECHANISMS for m in mechanisms) else None
    kw = {"fractions": fractions} if fractions is not None else {}
    bn_loader = bn_statistics_loader(data, mean, std, augment=bn_augment, train_augment=train_augment, device=device)
    res = pruning_operating_points(model, bn_loader=bn_loader, bn_batches=bn_batches, mechanisms=mechanisms,
                                   calib_loader=calib_loader, greedy_path=greedy_path, progress=progress, **kw)
    curves = []
    for mech, ops in res["ops"].items():
        chosen = "train (BN statistics)" if mech.endswith("+bn") else None
        if mech.startswith("greedy"):
            chosen = f"{calib_split} (edge order)" + (" + train (BN statistics)" if chosen else "")
        with torch.inference_mode():
            c = evaluate_curve(model, data.get(split), mean, std, ops, batch_size=batch_size, device=device,
                               method=f"{name}: {mech}", measured_on=split, calibrated_on=chosen)
        c.family = "cnmm"
        curves.append(c)
    ship = [o for ops in res["ops"].values() for o in ops]
    return {"curves": curves, "operating_points": ship, "unreachable": res["unreachable"],
            "greedy_path": res["greedy_path"]}
