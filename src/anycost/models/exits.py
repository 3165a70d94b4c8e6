"""What early-exit networks and network-selection cascades share: an input visits decision
points 0..E-2 in order and stops at the first whose policy says so (Bolukbasi et al., 2017).

* :class:`ExitPolicyModel` gives both families the model contract: operating point params
  ``{"policy": "fixed", "exit": e}`` (exit e alone: the network cut there / member e alone),
  ``{"policy": "threshold", "metric": m, "threshold": t}`` and ``{"policy": "learned",
  "gates": [...], "jump_gate": ... | None, "lam": ...}`` (from :func:`anycost.policies.learn_policy`);
  calibration candidates chosen on cached exit outputs; ``measure`` on one cached pass.
* :class:`ExitRuntime` is the one network that both ``infer`` and ``export`` run: real early
  exit (rows that stop leave the batch, later units see only the rest), written so that
  ``torch.jit.script`` accepts it. Sharing it is what makes exported logits and MACs equal
  ``infer``'s by construction. Per-input MACs come from the route each input took and a
  per-point cost table measured from the live units; learned decisions are real
  (A, F) x (F, 1) matmuls, F MACs per input, so FlopCounterMode counts what the table says.
"""

# no `from __future__ import annotations`: TorchScript reads ExitRuntime's class annotation
import math
from typing import List

import torch
import torch.nn as nn
from torch import Tensor

from anycost.core import DynamicModel, DynamicOutput, OperatingPoint, batches, measured_points, progress_bar
from anycost.policies import (METRICS, NUM_FEATURES, ExitCache, LinearGate, confidence, features, learn_policy,
                              learned_routes, threshold_exits, threshold_param)

from .static import plain_copy

__all__ = ["ExitPolicyModel", "ExitRuntime", "ExitStage", "policy_kwargs", "threshold_candidates"]

POLICIES = ("fixed", "threshold", "learned")
POLICY_KEYS = {"fixed": ("policy", "exit"), "threshold": ("policy", "metric", "threshold"),
               "learned": ("policy", "gates", "jump_gate", "lam")}


class ExitStage(nn.Module):
    """One decision point: ``body`` advances the state, ``head`` reads logits off it."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(h)
        return h, self.head(h)


class ExitRuntime(nn.Module):
    """stem -> stages (each: body, head, stop decision) -> tail, with real early exit.

    ``route(x)`` returns logits (B, K) and a route code (B,): the exit each input stopped at,
    or E (num stages + 1) for inputs a cascade's jump gate sent from network 0 straight to
    the tail. With no stages the network is static: ``forward`` is ``tail(stem(x))``."""

    gate_b: List[float]

    def __init__(self, stem: nn.Module, stages: list[ExitStage], tail: nn.Module, num_classes: int,
                 policy: str = "fixed", metric: str = "maxprob", threshold: float = math.inf,
                 gates: list[dict] | None = None, jump_gate: dict | None = None, exit_index: int = 0):
        super().__init__()
        self.stem, self.stages, self.tail = stem, nn.ModuleList(stages), tail
        self.num_classes, self.exit_index = int(num_classes), int(exit_index)
        self.static = len(stages) == 0
        self.learned = policy == "learned"
        self.metric, self.threshold = metric, float(threshold)
        folded = [LinearGate.folded(g) for g in (gates or [])]
        self.register_buffer("gate_w", torch.stack([w for w, _ in folded]) if folded else torch.zeros(0, NUM_FEATURES))
        self.gate_b = [float(b) for _, b in folded]
        self.has_jump = jump_gate is not None
        jw, jb = LinearGate.folded(jump_gate) if jump_gate is not None else (torch.zeros(NUM_FEATURES), 0.0)
        self.register_buffer("jump_w", jw)
        self.jump_b = float(jb)

    def forward(self, x: Tensor) -> Tensor:
        if self.static:
            return self.tail(self.stem(x))
        return self.route(x)[0]

    def _stop(self, z: Tensor, d: int) -> Tensor:
        """(A, K) -> (A,) bool. A learned gate is an (A, F) x (F, 1) matmul: F MACs per row."""
        if self.learned:
            return (features(z) @ self.gate_w[d][:, None]).squeeze(1) + self.gate_b[d] > 0
        return confidence(z, self.metric) >= self.threshold

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        h = self.stem(x)
        last = len(self.stages)
        if self.static:
            return self.tail(h).float(), torch.full((n,), self.exit_index, dtype=torch.long, device=x.device)
        logits = torch.zeros(n, self.num_classes, device=x.device)
        code = torch.full((n,), last, dtype=torch.long, device=x.device)
        rows = torch.arange(n, device=x.device)  # original row of each row still running
        for d, stage in enumerate(self.stages):
            h, z = stage(h)
            z = z.float()
            stop = self._stop(z, d)
            out = stop.nonzero().squeeze(1)
            logits.index_copy_(0, rows[out], z[out])
            code[rows[out]] = d
            keep = (~stop).nonzero().squeeze(1)
            rows, h, z = rows[keep], h[keep], z[keep]
            if d == 0 and self.has_jump and rows.numel() > 0:
                rows, h = self._jump(h, z, rows, logits, code, last)
            if rows.numel() == 0:  # everyone has exited: later units never run
                return logits, code
        logits.index_copy_(0, rows, self.tail(h).float())
        return logits, code

    def _jump(self, h: Tensor, z: Tensor, rows: Tensor, logits: Tensor, code: Tensor,
              last: int) -> tuple[Tensor, Tensor]:
        """Cascade only: rows whose jump gate fires skip to the tail (the last network) now."""
        jump = (features(z) @ self.jump_w[:, None]).squeeze(1) + self.jump_b > 0
        go = jump.nonzero().squeeze(1)
        if go.numel() > 0:
            logits.index_copy_(0, rows[go], self.tail(h[go]).float())
            code[rows[go]] = last + 1
        keep = (~jump).nonzero().squeeze(1)
        return rows[keep], h[keep]


class ExitPolicyModel(DynamicModel):
    """Contract for models whose operating points are exit policies. Subclasses set
    ``num_exits``, ``num_classes``, ``input_size`` and implement:

    * ``exit_costs()`` (E,) MACs to stop at each exit having run every earlier one (heads
      included, no decisions); ``jump_costs()`` (E,) or None (cascades: after a jump);
    * ``fixed_macs(e)``: MACs of exit e alone (the network cut there, no earlier heads);
    * ``exit_logits(x)`` (E, B, K): every exit's logits for a batch (caching);
    * ``runtime(op)``: the :class:`ExitRuntime` for a validated point, sharing this model's
      modules (``export`` copies it)."""

    supports_jump = False

    # ------------------------------------------------------------------ points

    def exit_name(self, e: int) -> str:
        return f"exit{e}"

    def fixed_op(self, e: int) -> OperatingPoint:
        return OperatingPoint(self.exit_name(e), {"policy": "fixed", "exit": e})

    def default_op(self) -> OperatingPoint:
        return self.fixed_op(self.num_exits - 1)

    def default_operating_points(self) -> list[OperatingPoint]:
        return [self.fixed_op(e) for e in range(self.num_exits)]

    def check_op(self, op: OperatingPoint) -> OperatingPoint:
        if not isinstance(op, OperatingPoint):
            raise ValueError(f"expected an OperatingPoint, got {type(op).__name__}")
        kind = op.get("policy")
        if kind not in POLICIES:
            raise ValueError(f"{op.name!r}: unknown policy {kind!r} (choose from {', '.join(POLICIES)})")
        unknown = sorted(map(str, set(op.params) - set(POLICY_KEYS[kind])))
        if unknown:  # a misspelt key is never silently ignored
            raise ValueError(f"{op.name!r}: unknown params {unknown} for a {kind} policy (it takes {', '.join(POLICY_KEYS[kind])})")
        getattr(self, f"_check_{kind}")(op)
        return op

    def _check_fixed(self, op: OperatingPoint) -> None:
        e = op.get("exit")
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.num_exits:
            raise ValueError(f"{op.name!r}: a fixed policy needs 'exit', an int in 0..{self.num_exits - 1}, got {e!r}")

    def _check_threshold(self, op: OperatingPoint) -> None:
        metric = op.get("metric", "maxprob")
        if metric not in METRICS:
            raise ValueError(f"{op.name!r}: unknown confidence metric {metric!r} (choose from {', '.join(METRICS)})")
        try:
            t = float(op["threshold"])  # "inf" is allowed: it survives JSON as a string
        except KeyError:
            raise ValueError(f"{op.name!r}: a threshold policy needs a 'threshold'") from None
        except (TypeError, ValueError):
            raise ValueError(f"{op.name!r}: threshold must be a number, got {op['threshold']!r}") from None
        if math.isnan(t):
            raise ValueError(f"{op.name!r}: threshold is NaN")

    def _check_learned(self, op: OperatingPoint) -> None:
        gates = op.get("gates")
        if not isinstance(gates, (list, tuple)) or len(gates) != self.num_exits - 1:
            raise ValueError(f"{op.name!r}: a learned policy needs 'gates', one per decision point "
                             f"({self.num_exits - 1}), got {type(gates).__name__}")
        for g in gates:
            _check_gate(op.name, g)
        if op.get("jump_gate") is not None:
            if not self.supports_jump:
                raise ValueError(f"{op.name!r}: a jump gate is for cascades, not {type(self).__name__}")
            _check_gate(op.name, op["jump_gate"])

    def _resolve(self, op) -> OperatingPoint:
        return self.check_op(self.find_op(op) if isinstance(op, str) else (op or self.default_op()))

    def is_static(self, op: OperatingPoint | str | None = None) -> bool:
        return self._resolve(op)["policy"] == "fixed"

    # ------------------------------------------------------------------ costs

    def route_costs(self, op: OperatingPoint) -> Tensor:
        """(E + 1,) float64: MACs an input spends on each route code of :class:`ExitRuntime`
        (exit 0..E-1, then E = jumped to the last network), decisions included."""
        e_count, cost = self.num_exits, torch.zeros(self.num_exits + 1, dtype=torch.float64)
        kind = op["policy"]
        if kind == "fixed":
            cost[int(op["exit"])] = float(self.fixed_macs(int(op["exit"])))
            return cost
        cost[:e_count] = self.exit_costs().double()
        if kind == "learned":
            jump = op.get("jump_gate") is not None
            for e in range(e_count):  # decisions at 0..e (none at the last exit), the jump gate past 0
                cost[e] += NUM_FEATURES * (min(e + 1, e_count - 1) + (1 if jump and e >= 1 else 0))
            if jump:
                cost[e_count] = float(self.jump_costs()[-1]) + 2 * NUM_FEATURES
        return cost

    # ------------------------------------------------------------------ inference

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:
        logits, code = self.runtime(op).route(x)
        macs = self.route_costs(op).to(x.device)[code]
        return DynamicOutput(logits, macs, code.clamp_max(self.num_exits - 1), self.num_exits)

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:
        """A standalone :class:`ExitRuntime` for ``op`` (TorchScript-able; ONNX-able when fixed)."""
        return plain_copy(self.runtime(self._export_op(op)))

    # ------------------------------------------------------------------ calibration

    @torch.no_grad()
    def exit_cache(self, x: Tensor, y: Tensor, batch_size: int = 500, split: str | None = None) -> ExitCache:
        """Every exit's logits for normalised inputs ``x`` (N, C, H, W), in eval mode."""
        self.check_input(x)  # the cache bypasses infer: same checks, or its MACs would not hold
        was, dev = self.training, _device(self)
        self.eval()
        try:
            outs = [self.exit_logits(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
        finally:
            self.train(was)
        jump = self.jump_costs()
        return ExitCache(torch.cat(outs, 1), y.cpu(), self.exit_costs().double(),
                         None if jump is None else jump.double(), split=split)

    @torch.no_grad()
    def cache_outputs(self, loader, split: str | None = None) -> ExitCache:
        """Every exit's logits over a loader of (x, y) batches (kept for the CLI's calibrate)."""
        xs, ys = zip(*[(x, y) for x, y in loader])
        return self.exit_cache(torch.cat(xs), torch.cat(ys), split=split)

    def simulate(self, cache: ExitCache, op: OperatingPoint) -> tuple[Tensor, Tensor]:
        """Vectorised routing on cached outputs: (route code (N,), MACs (N,) float64),
        exactly what ``infer`` does input by input."""
        n = cache.labels.shape[0]
        kind = op["policy"]
        if kind == "fixed":
            code = torch.full((n,), int(op["exit"]), dtype=torch.long)
        elif kind == "threshold":
            code = threshold_exits(cache, float(op["threshold"]), op.get("metric", "maxprob"))
        else:
            ex, jumped = learned_routes(cache, dict(op.params))
            code = torch.where(jumped, torch.full_like(ex, self.num_exits), ex)
        return code, self.route_costs(op)[code]

    @torch.no_grad()
    def streamed_cache(self, ds, mean, std, batch_size: int = 500, split: str | None = None,
                       progress: bool = False) -> ExitCache:
        """:meth:`exit_cache` over a split read batch by batch: only every exit's logits are
        kept, never the normalised images or features."""
        self.check_split(ds)  # uint8 images: always finite
        was, dev = self.training, _device(self)
        self.eval()
        outs = []
        try:
            it = batches(ds, mean, std, batch_size, dev)
            for x, _ in progress_bar(it, progress, "one pass through every exit"):
                outs.append(self.exit_logits(x).float().cpu())
        finally:
            self.train(was)
        jump = self.jump_costs()
        return ExitCache(torch.cat(outs, 1), ds.labels.cpu(), self.exit_costs().double(),
                         None if jump is None else jump.double(), split=split)

    @torch.no_grad()
    def outputs(self, ds, mean, std, ops: list[OperatingPoint], batch_size: int = 500, progress: bool = False):
        """Every point from one pass: each input runs once through every exit (or member),
        then each point's routing is replayed on the cached logits by :meth:`simulate`,
        which decides exactly as :class:`ExitRuntime` does. A curve then costs about one
        full pass, not one per point; ``routed_outputs`` is the real-routing reference."""
        cache = self.streamed_cache(ds, mean, std, batch_size, progress=progress)
        rows = torch.arange(cache.labels.shape[0])
        for op in ops:
            op = self.check_op(op)
            code, macs = self.simulate(cache, op)
            exit_ = code.clamp_max(self.num_exits - 1)  # a jump ends at the last network
            yield op, DynamicOutput(cache.logits[exit_, rows], macs, exit_, self.num_exits)

    @torch.no_grad()
    def measure(self, ds, mean, std, ops: list[OperatingPoint], split: str | None = None, batch_size: int = 500,
                progress: bool = False) -> list[OperatingPoint]:
        """Like the base class's routed measure, from one cached pass over every exit."""
        return measured_points(self.outputs(ds, mean, std, ops, batch_size, progress), ds.labels, split)

    def candidate_operating_points(self, data, split: str, *, batch_size: int = 500, progress: bool = False,
                                   metrics=METRICS, n_thresholds: int = 12, lams=None,
                                   jump: bool | None = None) -> list[OperatingPoint]:
        """Fixed exits, thresholds at quantiles of the early exits' confidence (per metric) and
        learned policies over ``lams``, chosen on the cached outputs of ``data.get(split)``."""
        cache = self.streamed_cache(data.get(split), data.mean, data.std, batch_size, split)
        ops = self.default_operating_points()
        for metric in metrics:
            for t in threshold_candidates(cache, metric, n_thresholds):
                ops.append(OperatingPoint(f"{metric}>={t:.6g}", {"policy": "threshold", "metric": metric,
                                                                 "threshold": threshold_param(t)}))
        jump = self.supports_jump if jump is None else jump
        lams = lams if lams is not None else [0.0] + torch.logspace(-2.5, 0.5, 11).tolist()
        for lam in progress_bar(lams, progress, "learning exit policies"):
            ops.append(OperatingPoint(f"learned lam={lam:.4g}", learn_policy(cache, lam, jump=jump)))
        return _unique(ops)


def policy_kwargs(op: OperatingPoint) -> dict:
    """ExitRuntime's policy keyword arguments for a validated threshold or learned point."""
    if op["policy"] == "threshold":
        return {"policy": "threshold", "metric": op.get("metric", "maxprob"), "threshold": float(op["threshold"])}
    return {"policy": "learned", "gates": list(op["gates"]), "jump_gate": op.get("jump_gate")}


def threshold_candidates(cache: ExitCache, metric: str, n: int) -> list[float]:
    """``n`` thresholds at quantiles of the early exits' confidences, each halfway between two
    neighbouring observed values (so float noise in a routed pass cannot flip a decision),
    plus inf (never stop early)."""
    conf = torch.unique(confidence(cache.logits[:-1], metric).flatten().double())  # sorted
    if conf.numel() < 2:
        return [math.inf]
    k = (torch.linspace(0.02, 0.98, n, dtype=torch.float64) * (conf.numel() - 1)).long().clamp_max(conf.numel() - 2)
    mids = ((conf[k] + conf[k + 1]) / 2).tolist()
    return sorted(set(mids)) + [math.inf]


def _check_gate(name: str, g) -> None:
    keys = ("weight", "bias", "mean", "std")
    if not isinstance(g, dict) or any(k not in g for k in keys):
        raise ValueError(f"{name!r}: a gate is a dict with {', '.join(keys)}, got {g!r:.60}")
    vecs = [g[k] for k in ("weight", "mean", "std")]
    if any(not isinstance(v, (list, tuple)) or len(v) != NUM_FEATURES for v in vecs):
        raise ValueError(f"{name!r}: a gate's weight, mean and std are lists of {NUM_FEATURES} numbers each")
    if not all(_finite(v) for v in [g["bias"], *vecs[0], *vecs[1], *vecs[2]]) or not all(v > 0 for v in vecs[2]):
        raise ValueError(f"{name!r}: a gate's weight, bias and mean must be finite numbers and its std positive")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _unique(ops: list[OperatingPoint]) -> list[OperatingPoint]:
    seen, out = set(), []
    for o in ops:
        if o.name not in seen:
            seen.add(o.name)
            out.append(o)
    return out


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
