"""Convolutional Neural Mixture Models (Ruiz & Verbeek, ICCV 2019), pruned to any budget.

What is known of the paper: a probabilistic model embedding very many CNNs that share
parameters and are trained jointly; learned mixing probabilities (a review mentions
Concrete / relaxed Bernoulli variables); an efficient approximation of the mixture output;
pruning networks with low mixing probability to adapt the inference cost without
re-training. Everything below that goes beyond this is **our design**:

* **Grid.** Nodes are feature maps ``(l, s)`` at depth ``l = 0..L`` and scale ``s = 0..S-1``
  (resolution ``H / 2**s``, ``widths[s]`` channels). The stem makes node (0, 0); the output
  node is (L, S-1). Node (l, s) takes an edge from (l-1, s) (conv3x3-BN-ReLU, stride 1) and
  one from (l-1, s-1) (stride 2) where those exist; only nodes that can still reach the
  output exist. Every sub-graph that connects input to output is one CNN of the mixture:
  exponentially many, all sharing the edge weights.
* **Mixing weights.** Edge e has a logit ``theta_e`` and is on with probability
  ``p_e = keep_max * sigmoid(theta_e)``. Training draws a relaxed-Bernoulli (Concrete) mask
  ``m_e`` per example and edge, temperature annealed from ``tau0`` to ``tau1``; a node is the
  normalised sum ``sum_e m_e f_e(x_src) / sum_e m_e`` of its incoming edges (a convex
  combination, so any subset of edges gives activations of the same scale). ``keep_max < 1``
  caps every edge's keep probability, so that each edge is off for a share of the training
  examples: without it the learned probabilities climb to 0.9-0.999 (measured on CIFAR-10),
  the networks that pruning leaves are ones training never ran, and pruning collapses. An optional cost
  term ``cost_weight * E[MACs] / MACs_full`` lets expensive edges learn to switch off.
* **Mixture output at inference** (one pass, mean-field): ``m_e`` is replaced by ``p_e``, with
  the same normalisation, over the edges that are kept.
* **Pruning.** (1) *edges*: drop edges in order of ``p_e`` (or ``p_e`` per MAC) until a MAC
  budget is met, then drop nodes that no longer reach the output or are no longer reached;
  (2) *channels*: drop output channels of edges in order of their BN scale ``|gamma|``
  (network slimming; ``slim_l1`` adds an L1 penalty on gammas during training), and input
  channels a node no longer has; (3) both: edges to a share of the budget, then channels.
  (4) *greedy* (calibrated edge order): from the full network, repeatedly drop the removal
  (an edge, with the edges it cuts off) that raises the cross-entropy on held-out ``calib``
  images least per MAC saved; a budget takes the largest network of that nested path.
  The probabilities are one number per edge, learned for the mixture; measuring each
  candidate network also sees cascades and how the remaining edges compensate.
  (5) *greedy-unit*: greedy's networks with every kept edge at weight 1 instead of ``p_e``.
  Why: under per-batch sampling (residual grid) each pruned network is one that training
  ran, with its edges at weight 1; mean-field weights serve the full mixture, an average
  over the networks, but scale a small network's few edges by ~``keep_max / 2``. Measured
  on CIFAR-10 (``cnmm_r6_kd`` and ``cnmm_r6_kd2``, with BN re-estimation): +0.7 to +1.3 pt at
  13-23 % of the MACs, about nothing above; at the full network without BN re-estimation it
  costs 1.1-2.6 pt (the sum of all edges at weight 1 is no network training ran).
  Optionally BatchNorm statistics are re-estimated on a few training batches afterwards.
* **Export.** :func:`prune` returns a standalone static ``PrunedCNMM`` holding only the kept
  edges and channels (sliced weights). FlopCounterMode / 2 on it equals the accounted MACs,
  and it traces, saves and loads under TorchScript.
* **Segmentation.** ``task="segment"``: every last-layer node is upsampled to the input
  resolution and summed, then a 1x1 conv gives per-pixel logits.
* **Residual grid** (:class:`ResCNMM`, ``cnmm_r6``). On CIFAR-10 the plain grid's pruned
  networks stayed 4-11 pt below static ResNets of the same MACs: a plain edge cannot be
  dropped without cutting its path, so pruning leaves thin, deep, plain CNNs. The residual
  grid keeps the nodes and edges but gives every node with a same-scale predecessor an
  identity skip, ``x(l, s) = relu(x(l-1, s) + sum_e m_e f_e(x_src))``, with basic-block edges:
  any subset of edges is then a working ResNet (fewer blocks, other down-sampling depths),
  down to stem -> the two always-on diagonal edges -> head (8 % of the MACs). It also trains
  one network of the mixture per batch (hard Bernoulli, straight-through for ``p``) instead of
  per-example Concrete masks, so a step pays only for the sampled edges that reach the output.
* **Budget sampling** (``ResCNMM(sampling="budget")``, ``cnmm_r6b``). With independent edges
  and near-equal probabilities, the networks trained are random halves of the grid while the
  networks deployed are probability-ordered prefixes, and the mean-field full mixture is a
  network training never ran. Budget sampling draws, per batch, a MAC budget uniform between
  the cheapest and the full network and runs the network edge pruning keeps at that budget,
  edges ranked by their logits plus annealed logistic noise (exploration early, the deployed
  order late). Kept edges run at weight 1 in training, in the full network and in every
  pruned one, so each operating point is a network that training ran; the logits still learn
  by straight-through from the edges that ran, against the cost term, and set the order.
* **Sandwich rule** (``ResCNMM(sandwich=True)``, after slimmable networks' training of the
  largest and smallest widths in every step). Under per-edge sampling the deployed full
  network (every edge at weight ``p_e``) is one no step ever runs. With the option each step
  also runs the full network and the cheapest one (the diagonal chain) and averages the three
  losses; the full pass sees ``p`` detached, so the mixing probabilities still learn from the
  sampled networks (and the cost term) alone.
* **Late down-sampling** (``scale_starts``): scale s begins at depth ``scale_starts[s]`` rather
  than s. The first node of a scale has one incoming edge, an always-on diagonal, so by default
  every network of the mixture is 8x8 from depth 2 on, and the higher resolutions reach the
  output only through optional 16->8 diagonals, whose learned probabilities fell to 0.04-0.08
  in every distilled run on CIFAR-10 but the sandwich one, with or without the cost term. Late
  starts put the always-on trunk's down-sampling where a ResNet has it (``cnmm_r9l``); on
  CIFAR-10 that changed which edges greedy keeps, not the accuracy (README).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.cost import DynamicOutput, module_macs
from anycost.eval import OperatingPoint

from .registry import register_model

# Pruning mechanisms. The first three follow from the model alone (learned probabilities, BN
# scales); "greedy" orders the edges by loss measured on held-out batches, so it needs them.
MECHANISMS = ("edges", "channels", "both")
CALIBRATED_MECHANISMS = ("greedy", "greedy-unit")


class EdgeBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResEdgeBlock(nn.Module):
    """The residual grid's edge: conv3x3-BN-ReLU-conv3x3-BN (a ResNet basic block's branch;
    the node adds the identity and applies the ReLU). ``mid`` is the inner width."""

    def __init__(self, cin: int, cout: int, stride: int, mid: int | None = None):
        super().__init__()
        mid = cout if mid is None else mid
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


@dataclass
class GridSpec:
    depth: int
    scales: int
    starts: tuple[int, ...] | None = None  # first depth of each scale; None: scale s from depth s

    def __post_init__(self):
        if self.starts is None:
            self.starts = tuple(range(self.scales))
            return
        self.starts = tuple(int(v) for v in self.starts)
        st = self.starts
        if len(st) != self.scales or st[0] != 0 or st[-1] > self.depth or any(b <= a for a, b in zip(st, st[1:])):
            raise ValueError(f"scale_starts is the first depth of each of the {self.scales} scales: 0, then "
                             f"strictly increasing, at most depth {self.depth}; got {st}")

    def nodes(self) -> list[tuple[int, int]]:
        """Topologically ordered nodes that lie on some input -> output path: node (l, s) is
        reached from the input when l >= starts[s] (starts increase strictly), and reaches the
        output (depth, scales-1) when stepping down one scale per depth, each step no earlier
        than that scale's start, gets there by the last depth."""
        starts = self.starts

        def reaches_output(l: int, s: int) -> bool:
            for t in range(s + 1, self.scales):
                l = max(l + 1, starts[t])
            return l <= self.depth

        return [(l, s) for l in range(self.depth + 1) for s in range(self.scales)
                if l >= starts[s] and reaches_output(l, s)]

    def edges(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        nodes = set(self.nodes())
        es = []
        for (l, s) in self.nodes():
            for src in ((l - 1, s), (l - 1, s - 1)):
                if src in nodes:
                    es.append((src, (l, s)))
        return es


@dataclass
class PruneSpec:
    """What a pruned network keeps: edge indices and, per kept edge, its output channels.
    ``unit_weights``: the kept edges run at weight 1, the value a training step gives the
    edges it sampled, instead of their mean-field weight ``p_e`` (mechanism ``greedy-unit``
    in the module docstring)."""

    edges: list[int]
    channels: dict[int, list[int]] = field(default_factory=dict)  # edge index -> kept output channels
    unit_weights: bool = False

    def to_dict(self) -> dict:
        d = {"edges": self.edges, "channels": {str(k): v for k, v in self.channels.items()}}
        return dict(d, unit_weights=True) if self.unit_weights else d  # records written before stay identical

    @classmethod
    def from_dict(cls, d: dict) -> "PruneSpec":
        return cls(list(d["edges"]), {int(k): list(v) for k, v in d.get("channels", {}).items()},
                   bool(d.get("unit_weights", False)))


class CNMM(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 8, scales: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), input_hw: int = 32, init_logit: float = 2.0,
                 tau: tuple[float, float] = (1.0, 0.2), cost_weight: float = 0.0, slim_l1: float = 0.0,
                 task: str = "classify", keep_max: float = 1.0, scale_starts: tuple[int, ...] | None = None):
        super().__init__()
        if len(widths) != scales:
            raise ValueError(f"need one width per scale: {scales} scales, {len(widths)} widths")
        if depth < scales - 1:
            raise ValueError("depth must allow a stride-2 edge into every scale")
        if task not in ("classify", "segment"):
            raise ValueError("task is 'classify' or 'segment'")
        if not 0.0 < keep_max <= 1.0:
            raise ValueError(f"keep_max is a probability in (0, 1], got {keep_max}")
        self.keep_max = float(keep_max)
        self.grid = GridSpec(depth, scales, scale_starts)  # checks scale_starts
        self.widths, self.num_classes, self.in_chans, self.input_hw = tuple(widths), num_classes, in_chans, input_hw
        self.task, self.tau, self.cost_weight, self.slim_l1 = task, tuple(tau), cost_weight, slim_l1
        self.node_list = self.grid.nodes()
        self.node_index = {n: i for i, n in enumerate(self.node_list)}
        self.edge_list = [(self.node_index[a], self.node_index[b]) for a, b in self.grid.edges()]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.edges = nn.ModuleList(
            EdgeBlock(widths[self.node_list[a][1]], widths[self.node_list[b][1]], 1 + self.node_list[b][1] - self.node_list[a][1])
            for a, b in self.edge_list)
        self.logits = nn.Parameter(torch.full((len(self.edge_list),), float(init_logit)))
        if task == "classify":
            self.head = nn.Linear(widths[-1], num_classes)
            self.out_nodes = [self.node_index[(depth, scales - 1)]]
        else:
            self.out_nodes = [i for i, (l, s) in enumerate(self.node_list) if l == depth]
            self.head = nn.Conv2d(widths[0], num_classes, 1)
            self.seg_proj = nn.ModuleList(nn.Conv2d(widths[self.node_list[i][1]], widths[0], 1, bias=False) for i in self.out_nodes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.progress = 0.0  # set by training_loss; only the temperature schedule reads it
        self.incoming: dict[int, list[int]] = {}
        for ei, (_, d) in enumerate(self.edge_list):
            self.incoming.setdefault(d, []).append(ei)
        self._pruned: dict[str, PrunedCNMM] = {}  # operating point -> its static network (inference cache)
        self.measure_costs()

    # ----------------------------------------------------------------- structure and costs

    def node_hw(self, i: int) -> int:
        return -(-self.input_hw // (2 ** self.node_list[i][1]))

    def measure_costs(self) -> None:
        """Per-edge, stem and head MACs per input, measured on the live modules."""
        self.stem_macs = module_macs(self.stem, (self.in_chans, self.input_hw, self.input_hw))
        self.edge_macs = []
        for (a, _), e in zip(self.edge_list, self.edges):
            c = self.widths[self.node_list[a][1]]
            self.edge_macs.append(module_macs(e, (c, self.node_hw(a), self.node_hw(a))))
        if self.task == "classify":
            self.readout_macs = [module_macs(self.head, (self.widths[-1],))]  # linear in the live channels
            self.head_fixed_macs = 0
        else:
            self.readout_macs = [module_macs(p, (self.widths[self.node_list[i][1]], self.node_hw(i), self.node_hw(i)))
                                 for p, i in zip(self.seg_proj, self.out_nodes)]
            self.head_fixed_macs = module_macs(self.head, (self.widths[0], self.input_hw, self.input_hw))
        self.head_macs = sum(self.readout_macs) + self.head_fixed_macs

    def full_macs(self) -> int:
        return self.stem_macs + sum(self.edge_macs) + self.head_macs

    def declared_macs(self, input_size) -> int:
        if tuple(input_size) != (self.in_chans, self.input_hw, self.input_hw):
            raise ValueError(f"costs were measured for {(self.in_chans, self.input_hw, self.input_hw)}")
        return self.full_macs()

    def _p(self) -> Tensor:
        """Edge keep probabilities ``keep_max * sigmoid(theta)``: below 1, every edge is dropped
        for some training examples, so the sub-networks that pruning leaves were trained."""
        return self.keep_max * torch.sigmoid(self.logits)

    def probabilities(self) -> Tensor:
        return self._p().detach()

    # ----------------------------------------------------------------- forward

    def _temperature(self) -> float:
        return anneal(*self.tau, self.progress)

    def _masks(self, b: int, device) -> Tensor:
        """(E, B) edge weights: Concrete samples in training, probabilities at inference."""
        if self.training:
            u = torch.rand(len(self.edge_list), b, device=device).clamp(1e-6, 1 - 1e-6)
            p = self._p().clamp(1e-6, 1 - 1e-6)
            theta = p.log() - (-p).log1p()  # the logit of p (= self.logits when keep_max is 1)
            return torch.sigmoid((theta[:, None] + u.log() - (-u).log1p()) / self._temperature())
        return self._p()[:, None].expand(-1, b)

    def _readout(self, feats: list[Tensor]) -> Tensor:
        if self.task == "classify":
            return self.head(torch.flatten(F.adaptive_avg_pool2d(feats[0], 1), 1))
        hw = (self.input_hw, self.input_hw)
        z = sum(F.interpolate(p(f), size=hw, mode="bilinear", align_corners=False) if f.shape[-1] != hw[-1] else p(f)
                for p, f in zip(self.seg_proj, feats))
        return self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        m = self._masks(b, x.device)  # (E, B)
        vals: list[Tensor | None] = [None] * len(self.node_list)
        vals[0] = self.stem(x)
        for i in range(1, len(self.node_list)):
            tot, z = 0.0, 0.0
            for ei in self.incoming[i]:
                w = m[ei][:, None, None, None]  # (B, 1, 1, 1)
                tot = tot + w
                z = z + w * self.edges[ei](vals[self.edge_list[ei][0]])
            vals[i] = z / (tot + 1e-6)
        return self._readout([vals[i] for i in self.out_nodes])

    def expected_macs_fraction(self) -> Tensor:
        """E[MACs] / full MACs under independent edges (a differentiable cost term)."""
        p = self._p()
        em = torch.tensor(self.edge_macs, dtype=p.dtype, device=p.device)
        return (self.stem_macs + self.head_macs + (p * em).sum()) / self.full_macs()

    def training_loss(self, x: Tensor, y: Tensor, criterion, progress: float = 0.0):
        self.progress = progress
        logits = self(x)
        return criterion(logits, y) + self._penalties(), logits

    def _penalties(self) -> Tensor | float:
        """The optional cost term (expected MACs) and L1 on the BN scales channel pruning ranks by."""
        loss = 0.0
        if self.cost_weight:
            loss = loss + self.cost_weight * self.expected_macs_fraction()
        if self.slim_l1:
            g = self._slim_gammas()
            loss = loss + self.slim_l1 * sum(w.abs().sum() for w in g) / sum(w.numel() for w in g)
        return loss

    def _slim_gammas(self) -> list[Tensor]:
        """Per edge, the BN scales whose |gamma| ranks its prunable channels."""
        return [e[1].weight for e in self.edges]

    # ----------------------------------------------------------------- pruning

    def _alive(self, kept: set[int]) -> set[int]:
        """Edges of ``kept`` that lie on some input -> output path."""
        reach = {0}
        for ei, (a, d) in enumerate(self.edge_list):  # edges are in topological order of their target
            if ei in kept and a in reach:
                reach.add(d)
        co = set(self.out_nodes)
        for ei in reversed(range(len(self.edge_list))):
            a, d = self.edge_list[ei]
            if ei in kept and d in co:
                co.add(a)
        return {ei for ei in kept if self.edge_list[ei][0] in reach and self.edge_list[ei][1] in co}

    def _connects(self, alive: set[int]) -> bool:
        """Whether the edges ``alive`` (from :meth:`_alive`) still join input to output."""
        return any(self.edge_list[x][1] in self.out_nodes for x in alive)

    def _export(self, spec: PruneSpec) -> "PrunedCNMM":
        return PrunedCNMM(self, spec)

    def _live_channels(self, spec: PruneSpec) -> dict[int, list[int]]:
        live = {0: list(range(self.widths[0]))}
        for ei in sorted(spec.edges):
            d = self.edge_list[ei][1]
            chans = spec.channels.get(ei, list(range(self.widths[self.node_list[d][1]])))
            live[d] = sorted(set(live.get(d, [])) | set(chans))
        return live

    def spec_macs(self, spec: PruneSpec) -> int:
        """MACs of the network a spec keeps, from the measured per-edge costs scaled by the
        live input and kept output channels (a conv's MACs are linear in both)."""
        live = self._live_channels(spec)
        total = self.stem_macs
        for ei in spec.edges:
            a, d = self.edge_list[ei]
            cin, cout = self.widths[self.node_list[a][1]], self.widths[self.node_list[d][1]]
            kept_out = len(spec.channels.get(ei, range(cout)))
            total += self.edge_macs[ei] * len(live[a]) * kept_out // (cin * cout)
        for i, full in zip(self.out_nodes, self.readout_macs):  # readout convs / linear: linear in live channels
            total += full * len(live.get(i, [])) // self.widths[self.node_list[i][1]]
        return total + self.head_fixed_macs

    def full_spec(self) -> PruneSpec:
        return PruneSpec(list(range(len(self.edge_list))))

    def prune_edges(self, budget: float, score: str = "prob", avoid_cascades: bool = False) -> PruneSpec | None:
        """Drop edges, least probable first (``score="prob_per_mac"``: probability per MAC),
        and the edges that fall off every input->output path with them, until MACs <= budget.
        ``avoid_cascades`` (residual grid only; an experiment, not the default): a removal that
        takes no other edge with it goes before one that does, so a scale's last exit (and with
        it that scale's later edges) is cut only when nothing else is left. It fills the MAC
        range that probability order jumps over, but on CIFAR-10 its networks were 3.7-8.8 pt
        worse on calib (benchmarks/cnmm_prune_order.md). None if even the cheapest network does not fit."""
        p = self.probabilities().tolist()
        key = (lambda e: p[e]) if score == "prob" else (lambda e: p[e] / self.edge_macs[e])
        return self._prune_in_order(sorted(range(len(self.edge_list)), key=key), budget, avoid_cascades)

    def _removal(self, kept: set[int], e: int) -> set[int] | None:
        """The edges left when ``e`` goes with every edge it cuts off; None if that removes
        nothing (e.g. an always-on edge) or no longer joins input to output."""
        t = self._alive(set(kept) - {e})
        return t if t != kept and self._connects(t) else None

    def _prune_in_order(self, order: list[int], budget: float, avoid_cascades: bool = False) -> PruneSpec | None:
        """Drop edges in ``order`` (first = first to go), with the edges each removal cuts
        off, until the kept network's MACs <= budget; None if nothing fits."""
        kept = set(range(len(self.edge_list)))
        while self.spec_macs(PruneSpec(sorted(kept))) > budget:
            options = [(e, t) for e in order if e in kept and (t := self._removal(kept, e)) is not None]
            if not options:
                return None
            if avoid_cascades:
                options = [(e, t) for e, t in options if len(t) == len(kept) - 1] or options
            kept = options[0][1]
        return PruneSpec(sorted(kept))

    @torch.no_grad()
    def greedy_edge_path(self, loader, progress: bool = False) -> list[PruneSpec]:
        """Calibrated edge pruning (mechanism ``"greedy"``): the nested networks from the full
        one down to the cheapest, each step taking the removal (an edge and the edges it cuts
        off) that raises the cross-entropy on ``loader``'s batches least per MAC saved.

        Why: the learned probabilities are one number per edge, trained for the mixture; they
        do not see that a removal may take a whole scale with it, nor how the *remaining*
        edges compensate. Measuring each candidate network does, at the price of about
        ``E**2 / 2`` evaluations of the loader (minutes for a 20-edge grid on 2,500 CIFAR
        images). ``loader`` must be data the model was not trained on (``calib``, never the
        split you report on), un-augmented, and re-iterable. Use :func:`spec_on_path` to
        pick the path's network for a budget."""
        was = self.training
        self.eval()
        batches = list(loader)
        if not batches:
            raise ValueError("greedy_edge_path needs at least one calibration batch")

        def loss(kept) -> float:
            net = self._export(PruneSpec(sorted(kept))).eval()
            return sum(F.cross_entropy(net(x), y, reduction="sum").item() for x, y in batches)

        from tqdm.auto import tqdm

        kept = frozenset(self._alive(set(range(len(self.edge_list)))))
        path, cur = [PruneSpec(sorted(kept))], loss(kept)
        bar = tqdm(desc="greedy edge pruning", unit=" edges", disable=not progress, leave=False)
        while True:
            cands = {frozenset(t) for e in kept if (t := self._removal(kept, e)) is not None}
            if not cands:
                break
            macs = self.spec_macs(PruneSpec(sorted(kept)))
            # (loss increase per MAC saved, loss, kept edges); a removal that lowers the loss ranks first
            scored = []
            for t in cands:
                lv = loss(t)
                scored.append(((lv - cur) / max(1, macs - self.spec_macs(PruneSpec(sorted(t)))), lv, sorted(t)))
            _, cur, best = min(scored)
            bar.update(len(kept) - len(best))
            kept = frozenset(best)
            path.append(PruneSpec(sorted(kept)))
        bar.close()
        self.train(was)
        return path

    def prune_channels(self, budget: float, start: PruneSpec | None = None, min_keep: int = 2) -> PruneSpec | None:
        """Drop edge output channels, smallest |BN gamma| first, until MACs <= budget."""
        spec = copy.deepcopy(start or self.full_spec())
        cand = []
        for ei in spec.edges:
            g = self._slim_gammas()[ei].detach().abs()
            keep = spec.channels.get(ei, list(range(g.numel())))
            spec.channels[ei] = list(keep)
            cand += [(float(g[c]), ei, c) for c in keep]
        cand.sort()
        # remove in chunks (1 % of the candidates) to keep this fast on big grids
        step = max(1, len(cand) // 100)
        i = 0
        while self.spec_macs(spec) > budget and i < len(cand):
            for _, ei, c in cand[i:i + step]:
                if len(spec.channels[ei]) > min_keep:
                    spec.channels[ei].remove(c)
            i += step
        return spec if self.spec_macs(spec) <= budget else None

    def prune(self, budget: float, mechanism: str = "edges", edge_share: float = 0.5) -> "PrunedCNMM":
        """A standalone static network within ``budget`` MACs. mechanism: edges, channels or
        both (edges first down to ``budget / edge_share``... i.e. they take ``edge_share``
        of the reduction, channels the rest)."""
        spec = self.prune_spec(budget, mechanism, edge_share)
        if spec is None:
            raise ValueError(f"budget {budget / 1e6:.3f} M MACs is below the cheapest network this "
                             f"mechanism ('{mechanism}') can reach")
        return self._export(spec)

    def prune_spec(self, budget: float, mechanism: str = "edges", edge_share: float = 0.5,
                   path: list[PruneSpec] | None = None) -> PruneSpec | None:
        """The PruneSpec of ``mechanism`` at ``budget`` MACs (None if out of its reach);
        ``"greedy"`` and ``"greedy-unit"`` take the ``path`` from :meth:`greedy_edge_path`."""
        if mechanism == "edges":
            return self.prune_edges(budget)
        if mechanism in CALIBRATED_MECHANISMS:
            if path is None:
                raise ValueError(f"mechanism '{mechanism}' needs the path from greedy_edge_path(calibration batches)")
            spec = spec_on_path(self, path, budget)
            return PruneSpec(spec.edges, spec.channels, unit_weights=True) if spec and mechanism == "greedy-unit" else spec
        if mechanism == "channels":
            return self.prune_channels(budget)
        if mechanism == "both":
            full = self.full_macs()
            mid = full - edge_share * (full - budget)
            e = self.prune_edges(mid)
            return self.prune_channels(budget, e) if e is not None else None
        raise ValueError(f"unknown pruning mechanism '{mechanism}' "
                         f"(one of {', '.join(MECHANISMS + CALIBRATED_MECHANISMS)})")

    # ----------------------------------------------------------------- anycost interface

    def operating_points(self) -> list[OperatingPoint]:
        return [OperatingPoint("full", {"prune": self.full_spec().to_dict()})]

    def train(self, mode: bool = True):
        self._pruned = {}  # weights may change: forget the static networks built for inference
        return super().train(mode)

    def pruned_for(self, op: OperatingPoint | None) -> "PrunedCNMM":
        """The static network an operating point keeps (``op["prune"]``, a PruneSpec dict), with
        the BatchNorm statistics re-estimated for it when ``op["bn"]`` carries them."""
        import json

        key = json.dumps(op.params, sort_keys=True) if op is not None else "full"
        if key not in self._pruned:
            spec = PruneSpec.from_dict(op["prune"]) if op is not None and "prune" in op.params else self.full_spec()
            net = self._export(spec)
            if op is not None and op.get("bn"):
                net.load_bn_stats(op["bn"])
            self._pruned[key] = net.eval()
        return self._pruned[key]

    @torch.no_grad()
    def infer(self, x: Tensor, op: OperatingPoint | None = None) -> DynamicOutput:
        net = self.pruned_for(op)
        logits = net(x)
        return DynamicOutput(logits, torch.full((x.shape[0],), float(net.macs), dtype=torch.float64, device=x.device))


def anneal(start: float, end: float, progress: float) -> float:
    """A value going from ``start`` to ``end`` as ``progress`` goes from 0 to 1: geometric, as
    temperatures are annealed, or linear when an end is 0 (a geometric schedule cannot reach it)."""
    t = min(1.0, max(0.0, progress))
    return start * (end / start) ** t if start > 0 and end > 0 else start + (end - start) * t


def _copy_bn_channels(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx) -> None:
    """``dst`` takes ``src``'s scales, shifts and running statistics at channels ``idx``."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data = getattr(src, name).data[idx].clone()


class PrunedCNMM(nn.Module):
    """The static network a PruneSpec keeps: sliced copies of the kept edges, mean-field
    weights renormalised over each node's kept edges. No reference to the parent model."""

    def __init__(self, cnmm: CNMM, spec: PruneSpec):
        super().__init__()
        self.spec = spec
        self.task = cnmm.task
        live = cnmm._live_channels(spec)
        kept = sorted(cnmm._alive(set(spec.edges)))
        if not any(cnmm.edge_list[e][1] in cnmm.out_nodes for e in kept):
            raise ValueError("the pruned network no longer connects input to output")
        p = torch.ones(len(cnmm.edge_list)) if spec.unit_weights else cnmm.probabilities()
        self.stem = copy.deepcopy(cnmm.stem)
        self.node_order = sorted({cnmm.edge_list[e][1] for e in kept})
        self.convs = nn.ModuleList()
        self.src, self.dst = [], []
        weights, positions = [], []
        for e in kept:
            a, d = cnmm.edge_list[e]
            blk = cnmm.edges[e]
            out_c = spec.channels.get(e, list(range(blk[0].out_channels)))
            in_idx = torch.tensor(live[a])
            conv = nn.Conv2d(len(live[a]), len(out_c), 3, blk[0].stride, 1, bias=False)
            conv.weight.data = blk[0].weight.data[out_c][:, in_idx].clone()
            bn = nn.BatchNorm2d(len(out_c))
            _copy_bn_channels(bn, blk[1], out_c)
            self.convs.append(nn.Sequential(conv, bn, nn.ReLU(inplace=True)))
            self.src.append(a)
            self.dst.append(d)
            positions.append([live[d].index(c) for c in out_c])
            weights.append(float(p[e]))
        # mean-field weights normalised over each node's kept edges
        tot = {}
        for d, w in zip(self.dst, weights):
            tot[d] = tot.get(d, 0.0) + w
        self.weights = [w / tot[d] for d, w in zip(self.dst, weights)]
        self.width = {d: len(live[d]) for d in self.node_order}
        for i, pos in enumerate(positions):
            self.register_buffer(f"pos{i}", torch.tensor(pos, dtype=torch.long))
        self.out_nodes = [n for n in cnmm.out_nodes if n in self.width]
        if self.task == "classify":
            (o,) = self.out_nodes
            self.head = nn.Linear(self.width[o], cnmm.num_classes)
            self.head.weight.data = cnmm.head.weight.data[:, live[o]].clone()
            self.head.bias.data = cnmm.head.bias.data.clone()
        else:
            self.input_hw = cnmm.input_hw
            self.seg_proj = nn.ModuleList()
            for i, proj in zip(cnmm.out_nodes, cnmm.seg_proj):
                if i in self.width:
                    c = nn.Conv2d(self.width[i], proj.out_channels, 1, bias=False)
                    c.weight.data = proj.weight.data[:, live[i]].clone()
                    self.seg_proj.append(c)
            self.head = copy.deepcopy(cnmm.head)
        self.macs = cnmm.spec_macs(PruneSpec(kept, {e: spec.channels[e] for e in kept if e in spec.channels}))

    def forward(self, x: Tensor) -> Tensor:
        vals = {0: self.stem(x)}
        b = x.shape[0]
        for i, conv in enumerate(self.convs):
            d = self.dst[i]
            y = self.weights[i] * conv(vals[self.src[i]])
            if d not in vals:
                h, w = y.shape[-2:]
                vals[d] = y.new_zeros(b, self.width[d], h, w)
            vals[d] = vals[d].index_add(1, getattr(self, f"pos{i}"), y)
        if self.task == "classify":
            return self.head(torch.flatten(F.adaptive_avg_pool2d(vals[self.out_nodes[0]], 1), 1))
        hw = (self.input_hw, self.input_hw)
        z = 0
        for proj, n in zip(self.seg_proj, self.out_nodes):
            f = proj(vals[n])
            z = z + (F.interpolate(f, size=hw, mode="bilinear", align_corners=False) if f.shape[-1] != hw[-1] else f)
        return self.head(z)

    def bn_stats(self) -> dict:
        return {n: [m.running_mean.tolist(), m.running_var.tolist()] for n, m in self.named_modules()
                if isinstance(m, nn.BatchNorm2d)}

    def load_bn_stats(self, stats: dict) -> None:
        mods = dict(self.named_modules())
        for n, (mean, var) in stats.items():
            mods[n].running_mean.copy_(torch.tensor(mean))
            mods[n].running_var.copy_(torch.tensor(var))


class ResCNMM(CNMM):
    """The residual grid ("Residual grid" in the module docstring): the same nodes and edges as
    :class:`CNMM`, but a node past its scale's first depth adds its same-scale predecessor as
    an identity skip, ``x(l, s) = relu(x(l-1, s) + sum_e m_e f_e(x_src))``, with ``f_e`` a
    basic-block branch. Dropping every edge into a node leaves the identity, so any subset of edges is
    a working network (a ResNet with fewer blocks and other down-sampling depths) down to
    the chain stem -> diagonal edges -> head. The diagonal edge into each scale's first node
    (``(s-1, s-1) -> (s, s)``, or later with ``scale_starts``) is that scale's only entry, so
    it is always on (``p = 1``) and never pruned.

    Training draws one hard Bernoulli mask per *batch* (one network of the mixture per step,
    as stochastic depth does) and skips the edges that are off or cannot reach the output,
    so a step costs the sampled network's MACs rather than the whole grid's; the keep
    probabilities get a straight-through gradient (``m = b + p - stop_grad(p)``: the forward
    value is the 0/1 sample ``b``, the gradient that of ``p * f_e``) from the edges that ran,
    plus the cost term. Inference is mean-field: ``m_e = p_e``, exact in expectation for the
    sum. The pruned networks drop inner channels of the branches (by ``|gamma|`` of the first BN),
    so node widths, and the identities, stay whole. Classification only.

    ``sampling="budget"`` draws the per-batch network differently (see :meth:`_budget_sample`):
    a MAC budget uniform between the cheapest and the full network, and the network that
    edge pruning keeps at that budget when edges are ranked by their logits plus logistic
    noise of scale ``order_noise`` (annealed from the first to the second value). The networks
    trained are then the ones pruning deploys, and kept edges run at weight 1 in training, in
    the full network and in every pruned one (there is no mean-field scaling to undo)."""

    skips_per_batch = True  # training skips edges, so data-parallel training must allow unused parameters

    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 6, scales: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), input_hw: int = 32, init_logit: float = 3.0,
                 cost_weight: float = 0.0, slim_l1: float = 0.0, keep_max: float = 0.75, task: str = "classify",
                 sampling: str = "edges", order_noise: tuple[float, float] = (1.0, 0.1), sandwich: bool = False,
                 scale_starts: tuple[int, ...] | None = None):
        if task != "classify":
            raise ValueError("the residual grid classifies only; use CNMM(task='segment') for dense prediction")
        if sampling not in ("edges", "budget"):
            raise ValueError(f"sampling is 'edges' (independent Bernoulli per edge) or 'budget', got {sampling!r}")
        if len(order_noise) != 2 or min(order_noise) < 0:
            raise ValueError(f"order_noise is (start, end) >= 0, got {order_noise}")
        self.sampling, self.order_noise = sampling, tuple(float(v) for v in order_noise)
        self.sandwich = bool(sandwich)
        super().__init__(num_classes, in_chans, depth, scales, widths, input_hw, init_logit, (1.0, 1.0),
                         cost_weight, slim_l1, task, keep_max, scale_starts)
        self.edges = nn.ModuleList(
            ResEdgeBlock(widths[self.node_list[a][1]], widths[self.node_list[b][1]], 1 + self.node_list[b][1] - self.node_list[a][1])
            for a, b in self.edge_list)
        for m in self.edges.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # node -> its same-scale predecessor (the identity skip), -1 for the stem and diagonal nodes
        self.skip = [self.node_index.get((l - 1, s), -1) if i else -1 for i, (l, s) in enumerate(self.node_list)]
        mand = [self.skip[d] < 0 for _, d in self.edge_list]
        assert all(len(self.incoming[d]) == 1 for (_, d), m in zip(self.edge_list, mand) if m)
        self.register_buffer("mandatory", torch.tensor(mand), persistent=False)
        self.measure_costs()

    def _p(self) -> Tensor:
        p = self.keep_max * torch.sigmoid(self.logits)
        return torch.where(self.mandatory, torch.ones_like(p), p)

    def _slim_gammas(self) -> list[Tensor]:
        return [e.bn1.weight for e in self.edges]

    def edge_weights(self) -> Tensor:
        """(E,) what each kept edge's branch is multiplied by at inference: ``p_e`` (mean-field)
        under per-edge sampling, 1 under budget sampling (the value training ran)."""
        p = self.probabilities()
        return p if self.sampling == "edges" else torch.ones_like(p)

    def _budget_sample(self) -> Tensor:
        """(E,) 0/1: the edges kept by pruning to a budget uniform in [cheapest, full] MACs, in
        the order of the logits plus logistic noise (so every network has some chance, and the
        noise-free order, the one deployed, dominates as the noise anneals)."""
        lo, hi = self.spec_macs(PruneSpec([])), self.full_macs()
        budget = lo + float(torch.rand(())) * (hi - lo)
        scale = anneal(*self.order_noise, self.progress)
        u = torch.rand(len(self.edge_list)).clamp(1e-6, 1 - 1e-6)
        score = (self.logits.detach().cpu() + scale * (u.log() - (-u).log1p())).tolist()
        spec = self._prune_in_order(sorted(range(len(score)), key=score.__getitem__), budget)
        b = torch.zeros(len(self.edge_list))
        b[sorted(self._alive(set(spec.edges)))] = 1.0  # the cheapest network always fits: spec is not None
        return b

    def forward(self, x: Tensor, net: str = "sample") -> Tensor:
        """Logits (B, K). In eval mode: the mean-field full mixture. In training mode ``net``
        picks what runs: ``"sample"`` one network of the mixture (the default), ``"full"``
        every edge at its inference weight (the deployed full network, with ``p`` detached so
        the mixing probabilities still learn from sampling alone), ``"min"`` the cheapest
        network (the always-on diagonal chain)."""
        if net not in ("sample", "full", "min"):
            raise ValueError(f"net is 'sample', 'full' or 'min', got {net!r}")
        p = self._p()  # (E,)
        if self.training and net == "full":
            w, on = self.edge_weights().detach().to(p.dtype), [True] * len(self.edge_list)
        elif self.training and net == "min":
            w, on = torch.ones_like(p), self.mandatory.tolist()
        elif self.training:
            # one network of the mixture per batch: independent Bernoulli edges, or a random budget
            b = (torch.rand(p.shape, device=p.device) < p).to(p.dtype) if self.sampling == "edges" \
                else self._budget_sample().to(device=p.device, dtype=p.dtype)
            w = b + (p - p.detach())  # value b, gradient of p (straight-through)
            # run only the sampled edges that reach the output: a sampled edge whose every way
            # on is off changes nothing and learns nothing, and would cost its MACs all the same
            alive = self._alive({e for e, v in enumerate(b.tolist()) if v})
            on = [e in alive for e in range(len(self.edge_list))]
        else:
            w, on = self.edge_weights().to(p.dtype), [True] * len(self.edge_list)
        vals: list[Tensor | None] = [None] * len(self.node_list)
        vals[0] = self.stem(x)
        for i in range(1, len(self.node_list)):
            z = vals[self.skip[i]] if self.skip[i] >= 0 else None
            for ei in self.incoming[i]:
                if on[ei]:
                    y = w[ei] * self.edges[ei](vals[self.edge_list[ei][0]])
                    z = y if z is None else z + y
            vals[i] = F.relu(z)
        return self._readout([vals[i] for i in self.out_nodes])

    def training_loss(self, x: Tensor, y: Tensor, criterion, progress: float = 0.0):
        """As :meth:`CNMM.training_loss`; with ``sandwich=True`` the step also trains the two
        ends of the cost range (the "sandwich rule" of slimmable networks): the loss is the
        mean of the sampled network's, the full network's and the cheapest network's, and
        the logits come back as a tuple ``(sampled, full, cheapest)`` so that distillation
        reaches all three (the trainer averages it over the tuple and counts accuracy on the
        first). Why: under per-edge sampling the deployed full network (every edge at weight
        ``p``) is a network no step ever ran; the sampled networks alone leave the largest
        operating points no better than mid-sized ones."""
        if not self.sandwich:
            return super().training_loss(x, y, criterion, progress)
        self.progress = progress
        outs = (self(x), self(x, net="full"), self(x, net="min"))
        return sum(criterion(o, y) for o in outs) / len(outs) + self._penalties(), outs

    def _alive(self, kept: set[int]) -> set[int]:
        kept = set(kept) | {e for e, m in enumerate(self.mandatory.tolist()) if m}
        n = len(self.node_list)
        reach = {0}
        for i in range(1, n):
            if self.skip[i] in reach or any(e in kept and self.edge_list[e][0] in reach for e in self.incoming[i]):
                reach.add(i)
        co = set(self.out_nodes)
        for i in reversed(range(1, n)):
            if i in co:
                co.update([self.skip[i]] if self.skip[i] >= 0 else [])
                co.update(self.edge_list[e][0] for e in self.incoming[i] if e in kept)
        return {e for e in kept if self.edge_list[e][0] in reach and self.edge_list[e][1] in co}

    def _connects(self, alive: set[int]) -> bool:
        return True  # the always-on diagonal chain and the identities join input to output

    def _export(self, spec: PruneSpec) -> "PrunedResCNMM":
        return PrunedResCNMM(self, spec)

    def _live_channels(self, spec: PruneSpec) -> dict[int, list[int]]:
        return {i: list(range(self.widths[s])) for i, (_, s) in enumerate(self.node_list)}  # nodes stay whole

    def spec_macs(self, spec: PruneSpec) -> int:
        """Stem, head, and each live edge's measured MACs scaled by its kept inner channels
        (both of a branch's convs are linear in its inner width)."""
        total = self.stem_macs + self.head_macs
        for e in self._alive(set(spec.edges)):
            mid = self.edges[e].conv1.out_channels
            total += self.edge_macs[e] * len(spec.channels.get(e, range(mid))) // mid
        return total


class PrunedResCNMM(PrunedCNMM):
    """The static residual network a PruneSpec keeps: the live edges with their kept inner
    channels, scaled by their mean-field weights ``p_e`` (by 1 with ``spec.unit_weights``);
    nodes left with no edge are their skip's value and vanish. No reference to the parent model."""

    def __init__(self, cnmm: ResCNMM, spec: PruneSpec):
        nn.Module.__init__(self)
        self.spec, self.task = spec, cnmm.task
        alive = sorted(cnmm._alive(set(spec.edges)))
        p = [1.0] * len(cnmm.edge_list) if spec.unit_weights else cnmm.edge_weights().tolist()
        computed = {cnmm.edge_list[e][1] for e in alive}
        rep = {0: 0}  # node -> the node holding its value (itself, or its skip's value when it computes nothing)
        for i in range(1, len(cnmm.node_list)):
            if i in computed:
                rep[i] = i
            elif cnmm.skip[i] in rep:
                rep[i] = rep[cnmm.skip[i]]
        self.stem = copy.deepcopy(cnmm.stem)
        self.blocks = nn.ModuleList()
        self.src, self.weights, self.last, self.skip_of = [], [], [], []
        channels = {}
        for k, e in enumerate(alive):
            a, d = cnmm.edge_list[e]
            blk = cnmm.edges[e]
            keep = spec.channels.get(e, list(range(blk.conv1.out_channels)))
            if len(keep) < blk.conv1.out_channels:
                channels[e] = keep
            new = ResEdgeBlock(blk.conv1.in_channels, blk.conv2.out_channels, blk.conv1.stride[0], mid=len(keep))
            idx = torch.tensor(keep, dtype=torch.long)
            new.conv1.weight.data = blk.conv1.weight.data[idx].clone()
            new.conv2.weight.data = blk.conv2.weight.data[:, idx].clone()
            _copy_bn_channels(new.bn1, blk.bn1, idx)
            new.bn2.load_state_dict(blk.bn2.state_dict())
            self.blocks.append(new)
            self.src.append(rep[a])
            self.weights.append(float(p[e]))
            last = k + 1 == len(alive) or cnmm.edge_list[alive[k + 1]][1] != d
            self.last.append(last)
            self.skip_of.append(rep[cnmm.skip[d]] if last and cnmm.skip[d] >= 0 else -1)
        self.dst = [cnmm.edge_list[e][1] for e in alive]
        self.out = rep[cnmm.out_nodes[0]]
        self.head = copy.deepcopy(cnmm.head)
        self.macs = cnmm.spec_macs(PruneSpec(alive, channels))

    def forward(self, x: Tensor) -> Tensor:
        vals = {0: self.stem(x)}
        acc: Tensor | None = None  # the running sum of the edges into the current node
        for i, blk in enumerate(self.blocks):
            y = self.weights[i] * blk(vals[self.src[i]])
            acc = y if acc is None else acc + y
            if self.last[i]:
                s = self.skip_of[i]
                vals[self.dst[i]] = F.relu(acc + vals[s]) if s >= 0 else F.relu(acc)
                acc = None
        return self.head(torch.flatten(F.adaptive_avg_pool2d(vals[self.out], 1), 1))


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader, batches: int = 20) -> nn.Module:
    """Recompute BatchNorm running statistics on a few batches (no weight updates): the
    pruned network's activations differ from the full mixture's."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


@register_model(family="cnmm")
def cnmm_d8(**kw):
    """Depth-8, three-scale grid at widths (16, 32, 64) for 32x32 inputs."""
    return CNMM(depth=8, **kw)


@register_model(family="cnmm")
def cnmm_d12(**kw):
    return CNMM(depth=12, **kw)


@register_model(family="cnmm")
def cnmm_r6(**kw):
    """Residual grid, depth 6, three scales at widths (16, 32, 64) for 32x32 inputs (all
    edges: 92 M MACs; the cheapest network, stem and two diagonal edges: 7.6 M)."""
    return ResCNMM(depth=6, **kw)


@register_model(family="cnmm")
def cnmm_r6b(**kw):
    """``cnmm_r6`` trained by budget sampling (:class:`ResCNMM`): each batch runs the network
    edge pruning keeps at a random MAC budget, ranked by logits (from 0) plus annealed noise."""
    kw.setdefault("sampling", "budget")
    kw.setdefault("keep_max", 1.0)
    kw.setdefault("init_logit", 0.0)
    return ResCNMM(depth=6, **kw)


@register_model(family="cnmm")
def cnmm_r8(**kw):
    return ResCNMM(depth=8, **kw)


@register_model(family="cnmm")
def cnmm_r9(**kw):
    """Residual grid, depth 9: its longest path is ResNet-20 deep (nine basic blocks, three per
    scale), where ``cnmm_r6``'s is ResNet-14 deep (all 37 edges: 156 M MACs; cheapest: 7.5 M)."""
    return ResCNMM(depth=9, **kw)


@register_model(family="cnmm")
def cnmm_r9l(**kw):
    """Residual grid, depth 9, with late down-sampling (``scale_starts=(0, 3, 6)``): the 16x16
    scale starts at depth 3 and the 8x8 one at depth 6, so the always-on trunk (stem, identities,
    the two diagonals) down-samples about where a ResNet-20 does; its longest trunk is 2 blocks
    at 32x32, a diagonal and 2 at 16x16, a diagonal and 3 at 8x8 (40.55 M MACs, as ResNet-20).
    ``cnmm_r9`` down-samples at depths 1 and 2, and its trained mixtures leaned on 8x8 stacks
    (README). 25 edges, 23 optional (106.6 M MACs with every edge; cheapest: 7.5 M)."""
    kw.setdefault("scale_starts", (0, 3, 6))
    return ResCNMM(depth=9, **kw)


@register_model(family="cnmm")
def test_cnmm_r(**kw):
    """Tiny residual grid for tests: depth 4, scales 3, widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return ResCNMM(depth=4, **kw)


@register_model(family="cnmm")
def test_cnmm(**kw):
    """Tiny grid for tests and the demo: depth 4, scales 3, widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return CNMM(depth=4, **kw)


def spec_on_path(model: CNMM, path: list[PruneSpec], budget: float) -> PruneSpec | None:
    """The first (largest) network of a nested pruning path within ``budget`` MACs; None if
    not even its last fits."""
    return next((s for s in path if model.spec_macs(s) <= budget), None)


def check_path(model: CNMM, path: list) -> list[PruneSpec]:
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


def pruning_operating_points(model: CNMM, fractions=(1.0, 0.75, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15),
                             mechanisms=MECHANISMS, bn_loader=None, bn_batches: int = 20,
                             calib_loader=None, greedy_path: list | None = None, progress: bool = False) -> dict:
    """Operating points of one trained CNMM: for each mechanism and budget fraction of the
    full MACs, the PruneSpec (and, when ``bn_loader`` is given, a second point with BN
    statistics re-estimated on it). ``"greedy"`` and ``"greedy-unit"`` share one edge order,
    found on ``calib_loader`` (its path is returned too), or ``greedy_path`` when it is given
    (a path found before, e.g. the ``greedy_path`` of a calibrate record of the same model:
    the search is the slow part). Budgets a mechanism cannot reach are listed, not hidden."""
    full = model.full_macs()
    path = None
    if any(m in CALIBRATED_MECHANISMS for m in mechanisms):
        if greedy_path is not None:
            path = check_path(model, greedy_path)
        elif calib_loader is None:
            raise ValueError("the 'greedy' mechanisms need calib_loader: held-out batches to order the edges on")
        else:
            path = model.greedy_edge_path(calib_loader, progress=progress)
    ops, unreachable = {}, []
    if bn_loader is not None:
        # the same batches for every network, so that a +bn point does not depend on which
        # other points were computed before it (a shuffled loader moves on at every pass)
        bn_loader = list(itertools.islice(iter(bn_loader), bn_batches))
    for mech in mechanisms:
        for f in fractions:
            spec = model.prune_spec(f * full, mech, path=path)
            if spec is None:
                unreachable.append({"mechanism": mech, "fraction": f})
                continue
            params = {"prune": spec.to_dict(), "mechanism": mech, "budget_fraction": f}
            ops.setdefault(mech, []).append(OperatingPoint(f"{mech} {f:.0%}", params))
            if bn_loader is not None:
                net = reestimate_bn(model._export(spec), bn_loader, bn_batches)
                ops.setdefault(f"{mech}+bn", []).append(
                    OperatingPoint(f"{mech}+bn {f:.0%}", dict(params, bn=net.bn_stats(), mechanism=f"{mech}+bn")))
    return {"ops": ops, "unreachable": unreachable, "greedy_path": [s.to_dict() for s in path] if path else None}
