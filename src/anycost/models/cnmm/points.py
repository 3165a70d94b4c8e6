"""The model contract for the CNMM family: operating points are pruned networks.

A point's ``params`` are plain JSON::

    {"prune": PruneSpec.to_dict(), "mechanism": "edges", "budget_fraction": 0.5, "bn": False}

``mechanism`` and ``budget_fraction`` say where the spec came from (informational, checked
for type); ``bn=True`` means "run with the BatchNorm statistics re-estimated for this point",
tensors the model holds under the point's name (:meth:`op_state`; the zoo stores them beside
the weights as ``"<point name>/<key>"``). Inference runs the pruned static network itself
(cached per point and rebuilt when weights or state change); ``export`` hands out a fresh copy."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from anycost.core import DynamicOutput, OperatingPoint

from .candidates import SearchConfig, candidate_points
from .grid import PruneSpec
from .pruned import load_bn_state
from .pruning import CALIBRATED_MECHANISMS, MECHANISMS

PARAM_KEYS = ("prune", "mechanism", "budget_fraction", "bn")
SPEC_KEYS = ("edges", "channels", "unit_weights")
POINT_MECHANISMS = ("full",) + MECHANISMS + CALIBRATED_MECHANISMS
_CACHE_SIZE = 8  # pruned networks kept for inference: a measure pass or a mixture uses one or two


class PrunedPoints:
    """Mixin for :class:`~anycost.models.cnmm.CNMM` (before ``DynamicModel`` in its bases)."""

    # ------------------------------------------------------------------ points and their checks

    def default_op(self) -> OperatingPoint:
        return OperatingPoint("full", {"prune": self.full_spec().to_dict(), "mechanism": "full",
                                       "budget_fraction": 1.0, "bn": False})

    def is_static(self, op=None) -> bool:
        return True  # every point is one pruned network, the same for every input

    def check_op(self, op: OperatingPoint) -> OperatingPoint:
        check_params(self, op.name, op.params)
        if op.get("bn") is True and op.name not in self._op_store():
            raise ValueError(f"operating point {op.name!r} has bn=True but the model holds no BatchNorm statistics "
                             f"under that name: load_op_state(...) first")
        return op

    def set_operating_points(self, ops: Iterable[OperatingPoint | Mapping]) -> None:
        super().set_operating_points(ops)
        shipped = {o.name for o in self._shipped()}
        store = self._op_store()
        for name in [n for n in store if n not in shipped]:  # only shipped points keep state
            del store[name]
        self._clear_pruned()

    # ------------------------------------------------------------------ per-point state

    def _op_store(self) -> dict[str, dict[str, Tensor]]:
        return self.__dict__.setdefault("_anycost_op_state", {})

    def op_state(self) -> dict[str, dict[str, Tensor]]:
        """{point name: {"<BN module of its pruned network>.running_mean" | ".running_var": tensor}}."""
        return {name: dict(s) for name, s in self._op_store().items()}

    def load_op_state(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Replace the per-point statistics (e.g. read back from a zoo file); load them before
        ``set_operating_points`` so that its ``bn=True`` points find theirs."""
        new = {}
        for name, s in state.items():
            if not isinstance(name, str) or not isinstance(s, Mapping) or \
                    not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in s.items()):
                raise ValueError(f"op state is {{point name: {{key: tensor}}}}; bad entry {name!r}")
            new[name] = {k: v.detach().cpu().clone() for k, v in s.items()}
        self.__dict__["_anycost_op_state"] = new
        self._clear_pruned()

    def put_op_state(self, name: str, state: Mapping[str, Tensor]) -> None:
        """Store one point's statistics (candidate search does this for each ``+bn`` point)."""
        self._op_store()[name] = {k: v.detach().cpu().clone() for k, v in state.items()}
        self._clear_pruned()

    def load_state_dict(self, *args, **kwargs):
        self._clear_pruned()
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ pruned networks

    def _pruned_cache(self) -> "OrderedDict[tuple[str, str], tuple[tuple, nn.Module]]":
        return self.__dict__.setdefault("_anycost_pruned", OrderedDict())

    def _clear_pruned(self) -> None:
        self._pruned_cache().clear()

    def _stamp(self) -> tuple:
        """Changes whenever a parameter or buffer is replaced or modified in place (optimizer
        steps, BN updates in training, load_state_dict): a cached network is then stale."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    def _build_point(self, op: OperatingPoint) -> nn.Module:
        net = self.build_pruned(PruneSpec.from_dict(op["prune"]))
        if op.get("bn"):
            load_bn_state(net, self._op_store()[op.name], op.name)
        return net.eval()

    def pruned_for(self, op: OperatingPoint | None = None) -> nn.Module:
        """The cached static network of a (checked) point; None: the full network."""
        op = self.default_op() if op is None else op
        key, stamp = (op.name, json.dumps(op.params, sort_keys=True)), self._stamp()
        cache = self._pruned_cache()
        hit = cache.get(key)
        if hit is None or hit[0] != stamp:
            cache[key] = hit = (stamp, self._build_point(op))
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return hit[1]

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:
        net = self.pruned_for(op)
        return DynamicOutput(net(x), torch.full((x.shape[0],), float(net.macs), dtype=torch.float64, device=x.device))

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:
        """A fresh standalone PrunedCNMM / PrunedResCNMM with the point's statistics loaded."""
        return self._build_point(self._export_op(op))

    # ------------------------------------------------------------------ calibration

    def candidate_operating_points(self, data, split: str, *, batch_size: int = 500, progress: bool = False,
                                   mechanisms=None, fractions=None, greedy_path: list | None = None,
                                   bn_batches: int = 20, bn_augment: bool = True,
                                   train_augment: dict | None = None) -> list[OperatingPoint]:
        """Every mechanism (default: all five, the greedy order chosen on ``split``) at each
        budget fraction (default :data:`DEFAULT_FRACTIONS`), with and without BN statistics
        re-estimated on ``bn_batches`` augmented training batches (see :class:`SearchConfig`)."""
        given = {"mechanisms": mechanisms, "fractions": fractions}  # None: SearchConfig's default
        cfg = SearchConfig(**{k: v for k, v in given.items() if v is not None}, greedy_path=greedy_path,
                           bn_batches=bn_batches, bn_augment=bn_augment, train_augment=train_augment)
        return candidate_points(self, data, split, cfg, batch_size=batch_size, progress=progress)


# ---------------------------------------------------------------------- params validation


def check_params(model, name: str, params: Mapping[str, Any]) -> None:
    """One-line ValueErrors for params this model cannot run."""
    where = f"operating point {name!r}"
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown params {unknown} (a CNMM point has {list(PARAM_KEYS)})")
    if "prune" not in params:
        raise ValueError(f"{where}: params['prune'] (a PruneSpec dict) is missing")
    check_spec(model, params["prune"], where)
    mech = params.get("mechanism", "full")
    if mech not in POINT_MECHANISMS:
        raise ValueError(f"{where}: mechanism {mech!r} is not one of {list(POINT_MECHANISMS)}")
    f = params.get("budget_fraction", 1.0)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise ValueError(f"{where}: budget_fraction must be a number in (0, 1], got {f!r}")
    bn = params.get("bn", False)
    if isinstance(bn, Mapping):
        raise ValueError(f"{where}: params['bn'] holds BatchNorm statistics (the old format); they belong in the "
                         f"model's op state (see anycost.models.cnmm.split_legacy_bn)")
    if not isinstance(bn, bool):
        raise ValueError(f"{where}: bn must be true or false, got {bn!r}")


def check_spec(model, d: Any, where: str) -> None:
    """A PruneSpec dict that fits ``model``: edge indices in range, channel lists of kept edges
    within that edge's prunable channels, and a network that still joins input to output."""
    if not isinstance(d, Mapping) or not isinstance(d.get("edges"), (list, tuple)):
        raise ValueError(f"{where}: prune must be a dict with an 'edges' list, got {d!r:.80}")
    unknown = sorted(map(str, set(d) - set(SPEC_KEYS)))
    if unknown:  # a misspelt key would otherwise be dropped, and a different network run
        raise ValueError(f"{where}: prune has unknown keys {unknown} (a PruneSpec has {list(SPEC_KEYS)})")
    n = len(model.edge_list)
    edges = d["edges"]
    if not all(_is_int(e) and 0 <= e < n for e in edges) or len(set(edges)) != len(edges):
        raise ValueError(f"{where}: prune edges must be distinct edge indices 0..{n - 1}, got {list(edges)}")
    chans = d.get("channels", {})
    if not isinstance(chans, Mapping):
        raise ValueError(f"{where}: prune channels must map edge -> channel list, got {chans!r:.80}")
    for k, cs in chans.items():
        e = int(k) if isinstance(k, str) and k.isdigit() else k
        if not _is_int(e) or e not in edges:
            raise ValueError(f"{where}: prune channels name edge {k!r}, which the spec does not keep")
        width = model.channel_count(e)
        if not isinstance(cs, (list, tuple)) or not cs or len(set(cs)) != len(cs) or \
                not all(_is_int(c) and 0 <= c < width for c in cs):
            raise ValueError(f"{where}: prune channels of edge {e} must be distinct indices 0..{width - 1}, got {cs!r:.80}")
    if not isinstance(d.get("unit_weights", False), bool):
        raise ValueError(f"{where}: prune unit_weights must be true or false")
    if not model._connects(model._alive(set(edges))):
        raise ValueError(f"{where}: the pruned network keeps no path from input to output")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def split_legacy_bn(op: OperatingPoint | Mapping) -> tuple[OperatingPoint, dict[str, Tensor] | None]:
    """A point written before op state (``params["bn"]`` holding ``{BN module: [mean, var]}``,
    ``mechanism`` ending in ``"+bn"``) -> (the point in today's format, its statistics for
    ``put_op_state`` / ``load_op_state``, or None when it has none)."""
    op = op if isinstance(op, OperatingPoint) else OperatingPoint.from_dict(op)
    params = dict(op.params)
    bn = params.get("bn")
    mech = params.get("mechanism")
    if isinstance(mech, str) and mech.endswith("+bn"):
        params["mechanism"] = mech[: -len("+bn")]
    if not isinstance(bn, Mapping):
        return OperatingPoint(op.name, params, op.macs, op.accuracy, op.split), None
    state = {}
    for module, (mean, var) in bn.items():
        state[f"{module}.running_mean"] = torch.tensor(mean, dtype=torch.float32)
        state[f"{module}.running_var"] = torch.tensor(var, dtype=torch.float32)
    params["bn"] = True
    return OperatingPoint(op.name, params, op.macs, op.accuracy, op.split), state
