"""The plain CNMM: a grid of conv3x3-BN-ReLU edges whose sub-networks form the mixture.

* **Mixing weights.** Edge e has a logit ``theta_e`` and is on with probability
  ``p_e = keep_max * sigmoid(theta_e)``. Training draws a relaxed-Bernoulli (Concrete) mask
  ``m_e`` per example and edge, temperature annealed from ``tau0`` to ``tau1``; a node is the
  normalised sum ``sum_e m_e f_e(x_src) / sum_e m_e`` of its incoming edges (a convex
  combination, so any subset of edges gives activations of the same scale). ``keep_max < 1``
  caps every edge's keep probability so that each edge is off for a share of the training
  examples: without it confident edges are never off, and the networks pruning leaves are
  ones training never ran. An optional cost term ``cost_weight * E[MACs] / MACs_full`` lets
  expensive edges learn to switch off.
* **Mixture output at inference** (one pass, mean-field): ``m_e`` is replaced by ``p_e``, with
  the same normalisation, over the edges that are kept.
* **Segmentation.** ``task="segment"``: every last-layer node is upsampled to the input
  resolution and summed, then a 1x1 conv gives per-pixel logits.
* **Late down-sampling** (``scale_starts``): scale s begins at depth ``scale_starts[s]``
  rather than s, so the always-on trunk can down-sample where a ResNet does.

Costs are measured per edge on the live modules (FlopCounterMode); a pruned network's MACs
are those, scaled by its live input and kept output channels (:meth:`CNMM.spec_macs`)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.core import DynamicModel
from anycost.cost import module_macs

from . import pruning
from .blocks import EdgeBlock
from .grid import GridSpec, PruneSpec
from .points import PrunedPoints
from .pruned import PrunedCNMM


def anneal(start: float, end: float, progress: float) -> float:
    """A value going from ``start`` to ``end`` as ``progress`` goes from 0 to 1: geometric, as
    temperatures are annealed, or linear when an end is 0 (a geometric schedule cannot reach it)."""
    t = min(1.0, max(0.0, progress))
    return start * (end / start) ** t if start > 0 and end > 0 else start + (end - start) * t


class CNMM(PrunedPoints, DynamicModel):
    family = "cnmm"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 8, scales: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), input_hw: int = 32, init_logit: float = 2.0,
                 tau: tuple[float, float] = (1.0, 0.2), cost_weight: float = 0.0, slim_l1: float = 0.0,
                 task: str = "classify", keep_max: float = 1.0, scale_starts: tuple[int, ...] | None = None):
        super().__init__()
        _check_args(widths, scales, depth, task, keep_max)
        self.keep_max = float(keep_max)
        self.grid = GridSpec(depth, scales, scale_starts)  # checks scale_starts
        self.widths, self.num_classes, self.in_chans, self.input_hw = tuple(widths), num_classes, in_chans, input_hw
        self.task, self.tau, self.cost_weight, self.slim_l1 = task, tuple(tau), cost_weight, slim_l1
        self.node_list = self.grid.nodes()
        self.node_index = {n: i for i, n in enumerate(self.node_list)}
        self.edge_list = [(self.node_index[a], self.node_index[b]) for a, b in self.grid.edges()]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        self.edges = nn.ModuleList(EdgeBlock(*self._edge_shape(e)) for e in range(len(self.edge_list)))
        self.logits = nn.Parameter(torch.full((len(self.edge_list),), float(init_logit)))
        self._build_head()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.progress = 0.0  # set by training_loss; only the temperature schedule reads it
        self.incoming: dict[int, list[int]] = {}  # node -> its incoming edges
        for ei, (_, d) in enumerate(self.edge_list):
            self.incoming.setdefault(d, []).append(ei)
        self.measure_costs()

    def _edge_shape(self, e: int) -> tuple[int, int, int]:
        """(in channels, out channels, stride) of edge ``e``."""
        (_, sa), (_, sb) = self.node_list[self.edge_list[e][0]], self.node_list[self.edge_list[e][1]]
        return self.widths[sa], self.widths[sb], 1 + sb - sa

    def _build_head(self) -> None:
        depth, scales, widths = self.grid.depth, self.grid.scales, self.widths
        if self.task == "classify":
            self.head = nn.Linear(widths[-1], self.num_classes)
            self.out_nodes = [self.node_index[(depth, scales - 1)]]
            return
        self.out_nodes = [i for i, (l, s) in enumerate(self.node_list) if l == depth]
        self.head = nn.Conv2d(widths[0], self.num_classes, 1)
        self.seg_proj = nn.ModuleList(nn.Conv2d(widths[self.node_list[i][1]], widths[0], 1, bias=False)
                                      for i in self.out_nodes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_chans, self.input_hw, self.input_hw)

    # ----------------------------------------------------------------- structure and costs

    def node_hw(self, i: int) -> int:
        return -(-self.input_hw // (2 ** self.node_list[i][1]))

    def channel_count(self, e: int) -> int:
        """How many channels of edge ``e`` channel pruning chooses from."""
        return self._slim_gammas()[e].numel()

    def measure_costs(self) -> None:
        """Per-edge, stem and head MACs per input, measured on the live modules."""
        self.stem_macs = module_macs(self.stem, self.input_size)
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
        if tuple(input_size) != self.input_size:
            raise ValueError(f"costs were measured for {self.input_size}")
        return self.full_macs()

    def _p(self) -> Tensor:
        """(E,) edge keep probabilities ``keep_max * sigmoid(theta)``."""
        return self.keep_max * torch.sigmoid(self.logits)

    def probabilities(self) -> Tensor:
        return self._p().detach()

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

    def _live_channels(self, spec: PruneSpec) -> dict[int, list[int]]:
        """node -> its live channels: the union of the kept output channels of its edges."""
        live = {0: list(range(self.widths[0]))}
        for ei in sorted(spec.edges):
            d = self.edge_list[ei][1]
            chans = spec.channels.get(ei, list(range(self.widths[self.node_list[d][1]])))
            live[d] = sorted(set(live.get(d, [])) | set(chans))
        return live

    def alive_spec(self, spec: PruneSpec) -> PruneSpec:
        """``spec`` without the edges that lie on no input -> output path (they never run)."""
        kept = sorted(self._alive(set(spec.edges)))
        return PruneSpec(kept, {e: spec.channels[e] for e in kept if e in spec.channels}, spec.unit_weights)

    def spec_macs(self, spec: PruneSpec) -> int:
        """MACs of the network a spec keeps, from the measured per-edge costs scaled by the
        live input and kept output channels (a conv's MACs are linear in both)."""
        spec = self.alive_spec(spec)
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

    # ----------------------------------------------------------------- forward and training

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
            return self.head(torch.flatten(F.adaptive_avg_pool2d(feats[0], 1), 1))  # (B, K)
        hw = (self.input_hw, self.input_hw)
        z = sum(F.interpolate(p(f), size=hw, mode="bilinear", align_corners=False) if f.shape[-1] != hw[-1] else p(f)
                for p, f in zip(self.seg_proj, feats))
        return self.head(z)  # (B, K, H, W)

    def forward(self, x: Tensor) -> Tensor:
        m = self._masks(x.shape[0], x.device)  # (E, B)
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

    # ----------------------------------------------------------------- pruning (see pruning.py)

    def build_pruned(self, spec: PruneSpec) -> PrunedCNMM:
        """The standalone static network ``spec`` keeps, with the model's BN statistics."""
        return PrunedCNMM(self, spec)

    def prune_edges(self, budget: float, score: str = "prob", avoid_cascades: bool = False) -> PruneSpec | None:
        return pruning.prune_edges(self, budget, score, avoid_cascades)

    def prune_channels(self, budget: float, start: PruneSpec | None = None, min_keep: int = 2) -> PruneSpec | None:
        return pruning.prune_channels(self, budget, start, min_keep)

    def _prune_in_order(self, order: list[int], budget: float, avoid_cascades: bool = False) -> PruneSpec | None:
        return pruning.prune_in_order(self, order, budget, avoid_cascades)

    def greedy_edge_path(self, loader, progress: bool = False) -> list[PruneSpec]:
        return pruning.greedy_edge_path(self, loader, progress)

    def prune_spec(self, budget: float, mechanism: str = "edges", edge_share: float = 0.5,
                   path: list[PruneSpec] | None = None) -> PruneSpec | None:
        return pruning.prune_spec(self, budget, mechanism, edge_share, path)

    def prune(self, budget: float, mechanism: str = "edges", edge_share: float = 0.5) -> PrunedCNMM:
        """A standalone static network within ``budget`` MACs (mechanism edges, channels or
        both; with both, edges take ``edge_share`` of the reduction and channels the rest)."""
        spec = self.prune_spec(budget, mechanism, edge_share)
        if spec is None:
            raise ValueError(f"budget {budget / 1e6:.3f} M MACs is below the cheapest network this "
                             f"mechanism ('{mechanism}') can reach")
        return self.build_pruned(spec)


def _check_args(widths, scales: int, depth: int, task: str, keep_max: float) -> None:
    if len(widths) != scales:
        raise ValueError(f"need one width per scale: {scales} scales, {len(widths)} widths")
    if depth < scales - 1:
        raise ValueError("depth must allow a stride-2 edge into every scale")
    if task not in ("classify", "segment"):
        raise ValueError("task is 'classify' or 'segment'")
    if not 0.0 < keep_max <= 1.0:
        raise ValueError(f"keep_max is a probability in (0, 1], got {keep_max}")
