"""Exit and selection policies on cached per-exit outputs (vectorised; no model runs here).

Setting (Bolukbasi et al., ICML 2017): an input visits decision points 0..E-2 in order; at
each it either stops (uses that exit's / network's prediction) or goes on. A policy is
chosen on a calibration split's cached outputs and measured on another split.

* Thresholds: stop at the first exit whose confidence (max-probability, negative entropy
  or top-2 margin) reaches ``t``; one shared ``t`` is swept or bisected to a MAC budget.
* Learned policy, by the paper's reduction to layer-by-layer weighted binary
  classification, trained by backward induction from the last decision point (our design
  where the abstract is silent):
    - cost of stopping at d for input i: err_d(i) + lam * macs_d / macs_full
    - cost of going on: what the already-learned downstream policy incurs on i
    - label = the cheaper action, weight = |difference|; a weighted logistic regression on
      features of exit d's output (top-2 probabilities, margin, entropy) decides.
  Sweeping lam traces a curve. For network selection the first decision is three-way
  (stop / next / jump to the last network), learned as two binary classifiers in a tree
  (stop vs go-on, then next vs jump), each by the same weighted reduction.
* Oracle: stop at the first correct exit (the first exit if none is correct): the lower
  bound on cost at the best accuracy any exit can give.

Policy cost: a learned decision is one dot product of F features (F MACs per input per
decision), counted in the MACs; thresholds, softmax and sorting count 0, as in
FlopCounterMode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anycost.core import check_budget
from anycost.curves import CurvePoint, OperatingPoint, TradeoffCurve, bisect_knob, point_from_outputs

METRICS = ("maxprob", "entropy", "margin")
NUM_FEATURES = 4


@dataclass
class ExitCache:
    """Per-exit outputs of one split, the inputs every policy works on.

    logits: (E, N, K) at each exit / network; labels: (N,);
    macs: (E,) MACs an input has spent when it stops at exit e, heads of exits 0..e included
          but no policy cost (policies add their own);
    jump_macs: (E,) optional, for cascades: MACs to stop at e after jumping there from
          network 0 (networks 1..e-1 skipped)."""

    logits: Tensor
    labels: Tensor
    macs: Tensor
    jump_macs: Tensor | None = None
    split: str | None = None

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    def correct(self) -> Tensor:  # (E, N) bool
        return self.logits.argmax(-1) == self.labels[None]


def features(logits: Tensor) -> Tensor:
    """(..., K) logits -> (..., 4): top-1 prob, top-2 prob, margin, normalised entropy.
    TorchScript-compatible: exported early-exit networks call this very function, so their
    decisions are bit-for-bit those of the cached policies."""
    p = logits.float().softmax(-1)
    top2 = p.topk(min(2, p.shape[-1]), dim=-1).values
    if top2.shape[-1] == 1:
        top2 = torch.cat([top2, torch.zeros_like(top2)], -1)
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / max(math.log(float(p.shape[-1])), 1e-12)
    return torch.stack([top2[..., 0], top2[..., 1], top2[..., 0] - top2[..., 1], ent], -1)


def confidence(logits: Tensor, metric: str) -> Tensor:
    f = features(logits)
    if metric == "maxprob":
        return f[..., 0]
    if metric == "margin":
        return f[..., 2]
    if metric == "entropy":
        return 1.0 - f[..., 3]  # higher = more confident, in [0, 1]
    raise ValueError("unknown confidence metric '" + metric + "' (choose from maxprob, entropy, margin)")


def first_true(mask: Tensor) -> Tensor:
    """(E, N) bool with mask[-1] all True -> (N,) index of the first True along E."""
    e = mask.shape[0]
    idx = torch.arange(e, device=mask.device)[:, None].expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, e)).min(0).values


def gate_decide(logits: Tensor, gate: dict) -> Tensor:
    """A learned linear gate on an exit's logits: (A, K) -> (A,) bool. The features @ weight
    product is an (A, F) x (F, 1) matmul: F MACs per input, which FlopCounterMode counts."""
    w, b = LinearGate.folded(gate)
    return (features(logits) @ w.to(logits.device)[:, None]).squeeze(1) + b > 0


def decide(logits: Tensor, d: int, op) -> tuple[Tensor, int]:
    """Stop decisions at decision point ``d`` for an operating point, and MACs per decision."""
    kind = op.get("policy", "fixed")
    if kind == "threshold":
        return confidence(logits, op.get("metric", "maxprob")) >= float(op["threshold"]), 0  # "inf" survives JSON
    if kind == "fixed":
        return torch.full((logits.shape[0],), d == int(op["exit"]), dtype=torch.bool, device=logits.device), 0
    if kind == "learned":
        return gate_decide(logits, op["gates"][d]), NUM_FEATURES
    raise ValueError(f"unknown policy '{kind}' (threshold, learned or fixed)")


# --------------------------------------------------------------------------- outcomes


def policy_point(cache: ExitCache, exit_idx: Tensor, spent: Tensor, op: OperatingPoint) -> CurvePoint:
    n = cache.labels.shape[0]
    chosen = cache.logits[exit_idx, torch.arange(n)]
    return point_from_outputs(op, chosen, cache.labels, spent, exit_idx, cache.num_exits)


def threshold_exits(cache: ExitCache, t: float, metric: str = "maxprob") -> Tensor:
    conf = confidence(cache.logits, metric)  # (E, N)
    stop = conf >= t
    stop[-1] = True
    return first_true(stop)


def threshold_param(t: float) -> float | str:
    """A threshold as point params hold it: +inf ("never stop early") as the string "inf",
    so that the point stays strict JSON; ``float()`` reads both forms."""
    return "inf" if t == math.inf else float(t)


def threshold_point(cache: ExitCache, t: float, metric: str = "maxprob") -> CurvePoint:
    ex = threshold_exits(cache, t, metric)
    op = OperatingPoint(f"{metric}>={t:.4g}", {"policy": "threshold", "metric": metric, "threshold": threshold_param(t)})
    return policy_point(cache, ex, cache.macs[ex].double(), op)


def threshold_curve(cache: ExitCache, metric: str = "maxprob", n: int = 25) -> TradeoffCurve:
    """Thresholds at quantiles of the first exit's confidence, plus 'never stop early'."""
    conf0 = confidence(cache.logits[:-1], metric).flatten()
    qs = torch.quantile(conf0.float(), torch.linspace(0.0, 1.0, n)).tolist() + [float("inf")]
    pts = [threshold_point(cache, t, metric) for t in sorted(set(qs))]
    return TradeoffCurve(f"threshold ({metric})", pts, cache.split, cache.split)


def calibrate_threshold(cache: ExitCache, macs_budget: float, metric: str = "maxprob") -> tuple[CurvePoint, bool]:
    """The threshold whose mean MACs fit ``macs_budget`` (as close as possible from below);
    reachable=False when even stopping everyone at the first exit costs more."""
    check_budget(macs_budget)
    mean_macs = lambda t: float(cache.macs[threshold_exits(cache, t, metric)].double().mean())
    t, _, ok = bisect_knob(mean_macs, 0.0, 1.0 + 1e-6, macs_budget, tol=1e-5)
    return threshold_point(cache, t, metric), ok


def oracle_exits(cache: ExitCache) -> Tensor:
    """(N,) the first correct exit of each input; exit 0 for inputs no exit gets right."""
    correct = cache.correct()
    stop = correct.clone()
    stop[0] |= ~correct.any(0)
    stop[-1] = True
    return first_true(stop)


def oracle_point(cache: ExitCache) -> CurvePoint:
    ex = oracle_exits(cache)
    return policy_point(cache, ex, cache.macs[ex].double(), OperatingPoint("oracle", {"policy": "oracle"}))


# --------------------------------------------------------------------------- learned policy


def fit_weighted_logreg(x: Tensor, y: Tensor, w: Tensor, l2: float = 1e-3, steps: int = 200) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted binary logistic regression by L-BFGS on standardised features.
    Returns (weight (F,), bias (), mean (F,), std (F,))."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    wsum = w.sum().clamp_min(1e-12)
    if bool((y == y[0]).all()) or float(wsum) <= 1e-12:  # one class only: a constant decision
        b = torch.tensor(20.0 if bool(y[0]) else -20.0)
        return torch.zeros(x.shape[1]), b, mu, sd
    coef = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (w * F.binary_cross_entropy_with_logits(z @ coef + bias, y.float(), reduction="none")).sum() / wsum
        loss = loss + l2 * coef.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return coef.detach(), bias.detach(), mu, sd


@dataclass
class LinearGate:
    """stop (or jump) when ((features - mean) / std) @ weight + bias > 0."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor

    def decide(self, feats: Tensor) -> Tensor:
        # the folded form, exactly as models run it at inference
        w, b = LinearGate.folded(self.to_dict())
        return (feats @ w[:, None]).squeeze(-1) + b > 0

    def to_dict(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": float(self.bias), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearGate":
        return cls(torch.tensor(d["weight"]), torch.tensor(d["bias"]), torch.tensor(d["mean"]), torch.tensor(d["std"]))

    @staticmethod
    def folded(d: dict) -> tuple[Tensor, float]:
        """Fold standardisation into one (F,) weight and a bias: the form run at inference."""
        w, mu, sd = torch.tensor(d["weight"]), torch.tensor(d["mean"]), torch.tensor(d["std"])
        return w / sd, float(d["bias"] - (mu / sd * w).sum())


def learn_policy(cache: ExitCache, lam: float, *, jump: bool = False) -> dict:
    """Backward induction (see module doc). Returns operating-point params:
    {"policy": "learned", "lam", "gates": [gate per decision point], "jump_gate": gate or None}.
    ``jump`` (cascades): the first decision may also jump straight to the last network."""
    e_count, n = cache.num_exits, cache.labels.shape[0]
    err = (~cache.correct()).float()  # (E, N)
    pcost = NUM_FEATURES  # MACs of one learned decision
    full = float(cache.macs[-1]) + pcost * (e_count - 1)
    jump_on = jump and e_count > 2 and cache.jump_macs is not None
    # MACs when stopping at e, counting the decisions taken at 0..e-1 and (if e < E-1) at e;
    # with a jump option, whoever goes past network 0 also evaluated the jump gate there
    spent = torch.stack([cache.macs[e].double() + pcost * min(e + 1, e_count - 1) + (pcost if jump_on and e >= 1 else 0)
                         for e in range(e_count)])
    value = err[-1].double() + lam * spent[-1] / full  # (N,) cost from the last exit on
    gates: list[dict | None] = [None] * (e_count - 1)
    feats = features(cache.logits)  # (E, N, F)
    jump_gate = None
    for d in range(e_count - 2, -1, -1):
        stop_cost = err[d].double() + lam * spent[d] / full
        go_cost = value
        if jump_on and d == 0:
            # second-level binary decision among the go-on actions: next network vs jump to the last
            jspent = cache.jump_macs[-1].double() + pcost * 2  # two decisions at network 0
            jump_cost = err[-1].double() + lam * jspent / full
            jy = jump_cost < go_cost
            g = LinearGate(*fit_weighted_logreg(feats[d], jy, (jump_cost - go_cost).abs().float()))
            jump_gate = g.to_dict()
            go_cost = torch.where(g.decide(feats[d]), jump_cost, go_cost)
        y = stop_cost < go_cost
        g = LinearGate(*fit_weighted_logreg(feats[d], y, (stop_cost - go_cost).abs().float()))
        gates[d] = g.to_dict()
        value = torch.where(g.decide(feats[d]), stop_cost, go_cost)
    return {"policy": "learned", "lam": float(lam), "gates": gates, "jump_gate": jump_gate}


def apply_policy(cache: ExitCache, params: dict) -> tuple[Tensor, Tensor]:
    """Simulate a policy on cached outputs: (exit index (N,), MACs spent (N,) float64)."""
    e_count, n = cache.num_exits, cache.labels.shape[0]
    kind = params["policy"]
    if kind == "threshold":
        ex = threshold_exits(cache, float(params["threshold"]), params.get("metric", "maxprob"))
        return ex, cache.macs[ex].double()
    if kind == "fixed":
        ex = torch.full((n,), int(params["exit"]), dtype=torch.long)
        return ex, cache.macs[ex].double()
    if kind != "learned":
        raise ValueError(f"cannot simulate policy '{kind}'")
    ex, jumped = learned_routes(cache, params)
    ndec = torch.minimum(ex + 1, torch.tensor(e_count - 1))  # stop decisions taken
    if params.get("jump_gate"):
        ndec = ndec + (ex >= 1).long()  # went past network 0: the jump gate was evaluated too
    ndec = torch.where(jumped, torch.tensor(2), ndec)  # stop gate + jump gate at network 0
    base = torch.where(jumped, cache.jump_macs[-1].double() if cache.jump_macs is not None else cache.macs[-1].double(),
                       cache.macs[ex].double())
    return ex, base + NUM_FEATURES * ndec.double()


def learned_routes(cache: ExitCache, params: dict) -> tuple[Tensor, Tensor]:
    """Where a learned policy sends each cached input: (exit index (N,), jumped (N,) bool);
    a jumped input stops at the last exit after skipping networks 1..E-2."""
    e_count, n = cache.num_exits, cache.labels.shape[0]
    feats = features(cache.logits)  # (E, N, F)
    ex = torch.full((n,), e_count - 1, dtype=torch.long)
    decided = torch.zeros(n, dtype=torch.bool)
    jumped = torch.zeros(n, dtype=torch.bool)
    for d in range(e_count - 1):
        stop = LinearGate.from_dict(params["gates"][d]).decide(feats[d]) & ~decided
        ex[stop] = d
        decided |= stop
        if d == 0 and params.get("jump_gate"):
            j = LinearGate.from_dict(params["jump_gate"]).decide(feats[0]) & ~decided
            jumped |= j
            decided |= j
    return ex, jumped


def learned_point(cache: ExitCache, params: dict, name: str | None = None) -> CurvePoint:
    ex, spent = apply_policy(cache, params)
    op = OperatingPoint(name or f"learned lam={params['lam']:.3g}", params)
    return policy_point(cache, ex, spent, op)


def learned_curve(cache: ExitCache, lams=None, *, jump: bool = False, measure: ExitCache | None = None) -> TradeoffCurve:
    """Learn one policy per lam on ``cache``; measure each on ``measure`` (default: the same)."""
    lams = lams if lams is not None else [0.0] + torch.logspace(-3, 1, 15).tolist()
    measure = measure or cache
    pts = [learned_point(measure, learn_policy(cache, lam, jump=jump)) for lam in lams]
    return TradeoffCurve("learned policy", pts, cache.split, measure.split)
