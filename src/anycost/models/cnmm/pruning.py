"""Pruning mechanisms: which :class:`PruneSpec` a trained grid keeps within a MAC budget.

* ``edges``: drop edges in order of their keep probability ``p_e`` (or ``p_e`` per MAC), each
  with the edges that fall off every input -> output path with it, until the budget is met;
* ``channels``: drop prunable channels in order of their BN scale ``|gamma|`` (network
  slimming; ``slim_l1`` adds an L1 penalty on those gammas during training);
* ``both``: edges take ``edge_share`` of the reduction, channels the rest;
* ``greedy`` (calibrated edge order): from the full network, repeatedly take the removal (an
  edge, with the edges it cuts off) that raises the cross-entropy on held-out batches least
  per MAC saved; a budget takes the largest network of that nested path. The probabilities
  are one number per edge, learned for the mixture; measuring each candidate network also
  sees cascades and how the remaining edges compensate;
* ``greedy-unit``: greedy's networks with every kept edge at weight 1 instead of ``p_e``, the
  value a training step gives the edges it sampled (mean-field weights serve the full mixture
  but scale a small network's few edges down).

The first three follow from the model alone; the greedy ones need held-out batches."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .grid import PruneSpec

if TYPE_CHECKING:
    from .model import CNMM

MECHANISMS = ("edges", "channels", "both")
CALIBRATED_MECHANISMS = ("greedy", "greedy-unit")


def prune_edges(model: "CNMM", budget: float, score: str = "prob", avoid_cascades: bool = False) -> PruneSpec | None:
    """Drop edges, least probable first (``score="prob_per_mac"``: probability per MAC), and
    the edges that fall off every input->output path with them, until MACs <= budget.
    ``avoid_cascades`` (residual grid only; an experiment, not the default): a removal that
    takes no other edge with it goes before one that does, so a scale's last exit (and with it
    that scale's later edges) is cut only when nothing else is left; it fills the MAC range
    that probability order jumps over (docs/notes/cnmm-design.md). None if even the cheapest
    network does not fit."""
    p = model.probabilities().tolist()
    key = (lambda e: p[e]) if score == "prob" else (lambda e: p[e] / model.edge_macs[e])
    return prune_in_order(model, sorted(range(len(model.edge_list)), key=key), budget, avoid_cascades)


def removal(model: "CNMM", kept: set[int], e: int) -> set[int] | None:
    """The edges left when ``e`` goes with every edge it cuts off; None if that removes
    nothing (e.g. an always-on edge) or no longer joins input to output."""
    t = model._alive(set(kept) - {e})
    return t if t != kept and model._connects(t) else None


def prune_in_order(model: "CNMM", order: list[int], budget: float, avoid_cascades: bool = False) -> PruneSpec | None:
    """Drop edges in ``order`` (first = first to go), with the edges each removal cuts off,
    until the kept network's MACs <= budget; None if nothing fits."""
    kept = set(range(len(model.edge_list)))
    while model.spec_macs(PruneSpec(sorted(kept))) > budget:
        options = [(e, t) for e in order if e in kept and (t := removal(model, kept, e)) is not None]
        if not options:
            return None
        if avoid_cascades:
            options = [(e, t) for e, t in options if len(t) == len(kept) - 1] or options
        kept = options[0][1]
    return PruneSpec(sorted(kept))


def prune_channels(model: "CNMM", budget: float, start: PruneSpec | None = None, min_keep: int = 2) -> PruneSpec | None:
    """Drop prunable channels, smallest |BN gamma| first, until MACs <= budget."""
    spec = copy.deepcopy(start or model.full_spec())
    cand = []
    for ei in spec.edges:
        g = model._slim_gammas()[ei].detach().abs()
        keep = spec.channels.get(ei, list(range(g.numel())))
        spec.channels[ei] = list(keep)
        cand += [(float(g[c]), ei, c) for c in keep]
    cand.sort()
    step = max(1, len(cand) // 100)  # remove in chunks (1 % of the candidates): fast on big grids
    i = 0
    while model.spec_macs(spec) > budget and i < len(cand):
        for _, ei, c in cand[i:i + step]:
            if len(spec.channels[ei]) > min_keep:
                spec.channels[ei].remove(c)
        i += step
    return spec if model.spec_macs(spec) <= budget else None


@torch.no_grad()
def greedy_edge_path(model: "CNMM", loader, progress: bool = False) -> list[PruneSpec]:
    """The nested networks of mechanism ``greedy``, from the full one down to the cheapest,
    each step taking the removal that raises the cross-entropy on ``loader``'s batches least
    per MAC saved (about ``E**2 / 2`` evaluations of the loader). ``loader`` must be data the
    model was not trained on (a calibration split, never the one reported on), un-augmented
    and re-iterable. :func:`spec_on_path` picks the path's network for a budget."""
    from tqdm.auto import tqdm

    was = model.training
    model.eval()
    batches = list(loader)
    if not batches:
        raise ValueError("greedy_edge_path needs at least one calibration batch")
    kept = frozenset(model._alive(set(range(len(model.edge_list)))))
    path, cur = [PruneSpec(sorted(kept))], _loss(model, kept, batches)
    bar = tqdm(desc="greedy edge pruning", unit=" edges", disable=not progress, leave=False)
    while True:
        cands = {frozenset(t) for e in kept if (t := removal(model, kept, e)) is not None}
        if not cands:
            break
        macs = model.spec_macs(PruneSpec(sorted(kept)))
        # (loss increase per MAC saved, loss, kept edges); a removal that lowers the loss ranks first
        scored = []
        for t in cands:
            lv = _loss(model, t, batches)
            scored.append(((lv - cur) / max(1, macs - model.spec_macs(PruneSpec(sorted(t)))), lv, sorted(t)))
        _, cur, best = min(scored)
        bar.update(len(kept) - len(best))
        kept = frozenset(best)
        path.append(PruneSpec(sorted(kept)))
    bar.close()
    model.train(was)
    return path


def _loss(model: "CNMM", kept, batches) -> float:
    """Summed cross-entropy of the network that keeps edges ``kept`` over ``batches``."""
    net = model.build_pruned(PruneSpec(sorted(kept))).eval()
    return sum(F.cross_entropy(net(x), y, reduction="sum").item() for x, y in batches)


def spec_on_path(model: "CNMM", path: list[PruneSpec], budget: float) -> PruneSpec | None:
    """The first (largest) network of a nested pruning path within ``budget`` MACs; None if
    not even its last fits."""
    return next((s for s in path if model.spec_macs(s) <= budget), None)


def check_path(model: "CNMM", path: list) -> list[PruneSpec]:
    """A greedy path (PruneSpecs or their dicts) checked against ``model``: nested edge sets,
    from the full network's live edges down, with valid edge indices. Raises ValueError."""
    specs = [s if isinstance(s, PruneSpec) else PruneSpec.from_dict(s) for s in path]
    n = len(model.edge_list)
    if not specs:
        raise ValueError("the greedy path is empty")
    for s in specs:
        if not all(0 <= e < n for e in s.edges) or s.channels:
            raise ValueError(f"greedy path entry {s.edges} is not an edge set of this model ({n} edges)")
    if set(specs[0].edges) != model._alive(set(range(n))):
        raise ValueError("the greedy path does not start at this model's full network: was it found for another model?")
    if any(not set(b.edges) < set(a.edges) for a, b in zip(specs, specs[1:])):
        raise ValueError("the greedy path is not nested (each network must drop edges from the one before)")
    return specs


def prune_spec(model: "CNMM", budget: float, mechanism: str = "edges", edge_share: float = 0.5,
               path: list[PruneSpec] | None = None) -> PruneSpec | None:
    """The PruneSpec of ``mechanism`` at ``budget`` MACs (None if out of its reach);
    ``"greedy"`` and ``"greedy-unit"`` take the ``path`` from :func:`greedy_edge_path`."""
    if mechanism == "edges":
        return prune_edges(model, budget)
    if mechanism in CALIBRATED_MECHANISMS:
        if path is None:
            raise ValueError(f"mechanism '{mechanism}' needs the path from greedy_edge_path(calibration batches)")
        spec = spec_on_path(model, path, budget)
        return PruneSpec(spec.edges, spec.channels, unit_weights=True) if spec and mechanism == "greedy-unit" else spec
    if mechanism == "channels":
        return prune_channels(model, budget)
    if mechanism == "both":
        full = model.full_macs()
        e = prune_edges(model, full - edge_share * (full - budget))
        return prune_channels(model, budget, e) if e is not None else None
    raise ValueError(f"unknown pruning mechanism '{mechanism}' "
                     f"(one of {', '.join(MECHANISMS + CALIBRATED_MECHANISMS)})")
