"""The residual grid (:class:`ResCNMM`): the CNMM's nodes and edges with identity skips.

* **Why.** A plain edge cannot be dropped without cutting its path, so pruning the plain grid
  leaves thin, deep, plain CNNs. Here every node with a same-scale predecessor adds it as an
  identity skip, ``x(l, s) = relu(x(l-1, s) + sum_e m_e f_e(x_src))``, with basic-block edges:
  any subset of edges is then a working ResNet (fewer blocks, other down-sampling depths),
  down to stem -> the always-on diagonal edges -> head.
* **Per-batch sampling.** Training runs one network of the mixture per batch (hard Bernoulli,
  straight-through for ``p``) instead of per-example Concrete masks, so a step pays only for
  the sampled edges that reach the output.
* **Budget sampling** (``sampling="budget"``). With independent edges and near-equal
  probabilities, the networks trained are random halves of the grid while the networks
  deployed are probability-ordered prefixes, and the mean-field full mixture is a network
  training never ran. Budget sampling draws, per batch, a MAC budget uniform between the
  cheapest and the full network and runs the network edge pruning keeps at that budget, edges
  ranked by their logits plus annealed logistic noise (exploration early, the deployed order
  late). Kept edges run at weight 1 in training, in the full network and in every pruned one,
  so each operating point is a network that training ran; the logits still learn by
  straight-through from the edges that ran, against the cost term, and set the order.
* **Sandwich rule** (``sandwich=True``, after slimmable networks' training of the largest and
  smallest widths in every step). Under per-edge sampling the deployed full network (every
  edge at weight ``p_e``) is one no step ever runs; with the option each step also runs the
  full network and the cheapest one (the diagonal chain) and averages the three losses; the
  full pass sees ``p`` detached, so the mixing probabilities learn from the sampled networks
  (and the cost term) alone."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .blocks import ResEdgeBlock
from .grid import PruneSpec
from .model import CNMM, anneal
from .pruned import PrunedResCNMM


class ResCNMM(CNMM):
    """The diagonal edge into each scale's first node is that scale's only entry, so it is
    always on (``p = 1``, the ``mandatory`` mask) and never pruned. Inference is mean-field,
    ``m_e = p_e`` (exact in expectation for the sum), or weight 1 under budget sampling.
    Pruned networks drop inner channels of the branches (by ``|gamma|`` of the first BN), so
    node widths, and the identities, stay whole. Classification only."""

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
        self.edges = nn.ModuleList(ResEdgeBlock(*self._edge_shape(e)) for e in range(len(self.edge_list)))
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

    def _edge_plan(self, net: str) -> tuple[Tensor, list[bool]]:
        """(E,) edge weights and which edges run, for ``net`` (see :meth:`forward`)."""
        p = self._p()  # (E,)
        if self.training and net == "full":
            return self.edge_weights().detach().to(p.dtype), [True] * len(self.edge_list)
        if self.training and net == "min":
            return torch.ones_like(p), self.mandatory.tolist()
        if not self.training:
            return self.edge_weights().to(p.dtype), [True] * len(self.edge_list)
        # one network of the mixture per batch: independent Bernoulli edges, or a random budget
        b = (torch.rand(p.shape, device=p.device) < p).to(p.dtype) if self.sampling == "edges" \
            else self._budget_sample().to(device=p.device, dtype=p.dtype)
        # run only the sampled edges that reach the output: a sampled edge whose every way on
        # is off changes nothing and learns nothing, and would cost its MACs all the same
        alive = self._alive({e for e, v in enumerate(b.tolist()) if v})
        return b + (p - p.detach()), [e in alive for e in range(len(self.edge_list))]  # value b, gradient of p

    def forward(self, x: Tensor, net: str = "sample") -> Tensor:
        """Logits (B, K). In eval mode: the mean-field full mixture. In training mode ``net``
        picks what runs: ``"sample"`` one network of the mixture (the default), ``"full"``
        every edge at its inference weight (the deployed full network, with ``p`` detached so
        the mixing probabilities still learn from sampling alone), ``"min"`` the cheapest
        network (the always-on diagonal chain)."""
        if net not in ("sample", "full", "min"):
            raise ValueError(f"net is 'sample', 'full' or 'min', got {net!r}")
        w, on = self._edge_plan(net)
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
        """As :meth:`CNMM.training_loss`; with ``sandwich=True`` the loss is the mean of the
        sampled network's, the full network's and the cheapest network's, and the logits come
        back as a tuple ``(sampled, full, cheapest)`` so that distillation reaches all three
        (the trainer averages it over the tuple and counts accuracy on the first)."""
        if not self.sandwich:
            return super().training_loss(x, y, criterion, progress)
        self.progress = progress
        outs = (self(x), self(x, net="full"), self(x, net="min"))
        return sum(criterion(o, y) for o in outs) / len(outs) + self._penalties(), outs

    # ----------------------------------------------------------------- structure (identities kept)

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

    def build_pruned(self, spec: PruneSpec) -> PrunedResCNMM:
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
