"""LC-Net operating points: parsing and validation of ``params``, and the threshold numerics
that every execution path (routed, masked, exported) must share.

Kinds of ``params`` (plain JSON):

* ``{"tau": t}``: keep a block / channel when its keep probability exceeds ``t`` in [0, 1];
* ``{"execute_all": true}``: every block and channel, with the learned (per-input) scales;
* ``{"budget": b}`` (budget-conditioned models only, b in (0, 1]): the predictors see ``b``;
  may carry a ``tau`` (default 0.5) or ``execute_all``; without it they see the training target;
* ``{"fixed": [entry per block]}``: input-independent gates. An entry is ``null`` (block
  skipped; L-Nets and LC-Nets only) or ``{"scale": s}`` (layer scale, when the model has layer
  gates) plus ``{"channels": [kept indices], "scales": [their scales]}`` (when it has channel
  gates). Derived at calibration (:func:`anycost.models.lcnet.model.LCResNet.derive_fixed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from anycost.core import OperatingPoint

KEYS = ("budget", "execute_all", "fixed", "tau")
DEFAULT_TAU = 0.5


def threshold(tau: float) -> float:
    """The gate-logit threshold of keep probability ``tau``, rounded to float32: gate logits are
    float32, and every path compares them with this same float32 value (a float64 threshold
    would make a Python comparison and a tensor comparison disagree on a borderline logit)."""
    t = min(max(float(tau), 1e-6), 1 - 1e-6)
    return float(torch.tensor(math.log(t / (1 - t)), dtype=torch.float32))


@dataclass(frozen=True)
class Setting:
    """One validated operating point, as the execution paths read it."""

    execute_all: bool
    thr: float  # float32-rounded gate-logit threshold (unused with execute_all / fixed)
    budget: float | None  # what a conditioned model's predictors see; None otherwise
    fixed: list | None  # per-block entries of a fixed point, else None

    @property
    def gated(self) -> bool:
        """Whether decisions depend on the input."""
        return not self.execute_all and self.fixed is None


def _real(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def check_params(model, op: OperatingPoint) -> None:
    """Raise a one-line ValueError on params ``model`` cannot run."""
    p = op.params
    what = f"LC-Net operating point {op.name!r}"
    if not isinstance(p, dict) and not hasattr(p, "keys"):
        raise ValueError(f"{what}: params must be a dict, got {type(p).__name__}")
    unknown = sorted(set(p) - set(KEYS))
    if unknown:
        raise ValueError(f"{what}: unknown params {unknown} (known: {', '.join(KEYS)})")
    if not p:
        raise ValueError(f"{what}: params need one of {{'tau': t}}, {{'execute_all': true}}, {{'budget': b}}, {{'fixed': [...]}}")
    if "fixed" in p:
        if len(p) > 1:
            raise ValueError(f"{what}: 'fixed' takes no other params, got {sorted(p)}")
        _check_fixed(model, p["fixed"], what)
        return
    if "tau" in p and not (_real(p["tau"]) and 0.0 <= p["tau"] <= 1.0):
        raise ValueError(f"{what}: tau is a keep probability in [0, 1], got {p['tau']!r}")
    if "execute_all" in p and p["execute_all"] is not True:
        raise ValueError(f"{what}: execute_all must be true (leave it out for gated inference), got {p['execute_all']!r}")
    if "budget" in p:
        if not model.conditioned:
            raise ValueError(f"{what}: 'budget' needs a budget-conditioned model; this one takes 'tau'")
        if not (_real(p["budget"]) and 0.0 < p["budget"] <= 1.0):
            raise ValueError(f"{what}: budget is a fraction of the full MACs in (0, 1], got {p['budget']!r}")


def _check_fixed(model, entries: Any, what: str) -> None:
    blocks = model.blocks_list
    if not isinstance(entries, (list, tuple)) or len(entries) != len(blocks):
        raise ValueError(f"{what}: 'fixed' is a list of {len(blocks)} per-block entries, got {entries!r:.60}")
    want = ({"scale"} if model.layers else set()) | ({"channels", "scales"} if model.channels else set())
    for i, (e, blk) in enumerate(zip(entries, blocks)):
        if e is None:
            if not model.layers:
                raise ValueError(f"{what}: block {i} is skipped (null), but this model has no layer gates")
            continue
        if not isinstance(e, dict) or set(e) != want:
            raise ValueError(f"{what}: fixed block {i} needs exactly the keys {sorted(want)}, got {e!r:.60}")
        if model.layers and not _real(e["scale"]):
            raise ValueError(f"{what}: fixed block {i}: 'scale' must be a finite number, got {e['scale']!r}")
        if model.channels:
            ch, sc = e["channels"], e["scales"]
            ok = isinstance(ch, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in ch)
            if not ok or ch != sorted(set(ch)) or (ch and not 0 <= ch[0] <= ch[-1] < blk.planes):
                raise ValueError(f"{what}: fixed block {i}: 'channels' must be sorted distinct indices in [0, {blk.planes})")
            if not isinstance(sc, list) or len(sc) != len(ch) or not all(_real(s) for s in sc):
                raise ValueError(f"{what}: fixed block {i}: 'scales' must be {len(ch)} finite numbers, one per kept channel")


def setting(model, op: OperatingPoint) -> Setting:
    """The Setting of a point ``check_params`` accepted."""
    p = op.params
    if "fixed" in p:
        return Setting(False, 0.0, None, list(p["fixed"]))
    budget = float(p.get("budget", model.target)) if model.conditioned else None
    return Setting(bool(p.get("execute_all", False)), threshold(p.get("tau", DEFAULT_TAU)), budget, None)


def tau_name(tau: float) -> str:
    return f"tau {tau:.2f}" if round(tau, 2) == tau else f"tau {tau:.6g}"
