"""The static networks a :class:`PruneSpec` keeps, and their BatchNorm statistics.

A pruned network holds sliced copies of the kept edges and no reference to its parent, so it
is what ``export`` ships: static control flow (it scripts under TorchScript and exports to
ONNX), and FlopCounterMode / 2 on it equals the MACs the parent accounts for (``.macs``).
BatchNorm statistics re-estimated for one pruned network are that point's *op state*:
:func:`bn_state` reads them, :func:`load_bn_state` puts them back."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .blocks import ResEdgeBlock, copy_bn_channels
from .grid import PruneSpec

if TYPE_CHECKING:  # the parents are only read while building
    from .model import CNMM
    from .residual import ResCNMM


class PrunedNet(nn.Module):
    """What both pruned networks share: ``spec`` (the PruneSpec, a Python-side record that
    TorchScript skips) and ``macs`` (per input, as the parent accounts for it)."""

    __jit_ignored_attributes__ = ["spec"]


class PrunedCNMM(PrunedNet):
    """The plain grid's pruned network: sliced copies of the kept edges, mean-field weights
    renormalised over each node's kept edges (as the mixture normalises at inference)."""

    def __init__(self, cnmm: "CNMM", spec: PruneSpec):
        super().__init__()
        self.spec, self.task = spec, cnmm.task
        alive = cnmm.alive_spec(spec)  # edges on no input -> output path never run
        kept = alive.edges
        if not cnmm._connects(set(kept)):
            raise ValueError("the pruned network no longer connects input to output")
        live = cnmm._live_channels(alive)  # node -> its live channels
        p = torch.ones(len(cnmm.edge_list)) if spec.unit_weights else cnmm.probabilities()
        self.stem = copy.deepcopy(cnmm.stem)
        self.convs = nn.ModuleList()
        self.src = []
        self.dst = []
        self.whole = []  # the edge writes every live channel of its node, in order
        starts, flat, weights = [0], [], []
        for e in kept:
            a, d = cnmm.edge_list[e]
            out_c = spec.channels.get(e, list(range(cnmm.channel_count(e))))
            self.convs.append(_sliced_edge(cnmm.edges[e], live[a], out_c))
            pos = [live[d].index(c) for c in out_c]
            self.src.append(a)
            self.dst.append(d)
            self.whole.append(pos == list(range(len(live[d]))))
            flat += pos
            starts.append(len(flat))
            weights.append(float(p[e]))
        tot: dict[int, float] = {}
        for d, w in zip(self.dst, weights):
            tot[d] = tot.get(d, 0.0) + w
        self.weights = [w / tot[d] for d, w in zip(self.dst, weights)]
        # where each edge's channels go in its node: pos[starts[i]:starts[i + 1]]
        self.register_buffer("pos", torch.tensor(flat, dtype=torch.long))
        self.starts = starts
        self.width = {d: len(live[d]) for d in sorted(set(self.dst))}
        self.out_nodes = [n for n in cnmm.out_nodes if n in self.width]
        self._build_readout(cnmm, live)
        self.macs = cnmm.spec_macs(alive)

    def _build_readout(self, cnmm: "CNMM", live: dict[int, list[int]]) -> None:
        self.seg_proj = nn.ModuleList()  # empty when classifying: TorchScript compiles both branches
        self.input_hw = cnmm.input_hw
        if self.task == "classify":
            (o,) = self.out_nodes
            self.head = nn.Linear(self.width[o], cnmm.num_classes)
            self.head.weight.data = cnmm.head.weight.data[:, live[o]].clone()
            self.head.bias.data = cnmm.head.bias.data.clone()
            return
        for i, proj in zip(cnmm.out_nodes, cnmm.seg_proj):
            if i in self.width:
                c = nn.Conv2d(self.width[i], proj.out_channels, 1, bias=False)
                c.weight.data = proj.weight.data[:, live[i]].clone()
                self.seg_proj.append(c)
        self.head = copy.deepcopy(cnmm.head)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K) or (B, K, H, W)
        vals: Dict[int, Tensor] = {0: self.stem(x)}
        for i, conv in enumerate(self.convs):
            d = self.dst[i]
            y = self.weights[i] * conv(vals[self.src[i]])  # (B, kept channels, h, w)
            if not self.whole[i]:  # scatter the kept channels into the node's live ones
                base = vals[d] if d in vals else y.new_zeros(y.shape[0], self.width[d], y.shape[2], y.shape[3])
                vals[d] = base.index_add(1, self.pos[self.starts[i]:self.starts[i + 1]], y)
            elif d in vals:
                vals[d] = vals[d] + y
            else:
                vals[d] = y
        return self._readout(vals)

    def _readout(self, vals: Dict[int, Tensor]) -> Tensor:
        if self.task == "classify":
            return self.head(torch.flatten(F.adaptive_avg_pool2d(vals[self.out_nodes[0]], 1), 1))
        z: Optional[Tensor] = None
        for j, proj in enumerate(self.seg_proj):  # every last-layer node, at the input resolution
            f = proj(vals[self.out_nodes[j]])
            if f.shape[-1] != self.input_hw:
                f = F.interpolate(f, size=[self.input_hw, self.input_hw], mode="bilinear", align_corners=False)
            z = f if z is None else z + f
        assert z is not None
        return self.head(z)


def _sliced_edge(blk: nn.Sequential, cin: list[int], cout: list[int]) -> nn.Sequential:
    """A conv-BN-ReLU edge keeping input channels ``cin`` and output channels ``cout``."""
    conv = nn.Conv2d(len(cin), len(cout), 3, blk[0].stride, 1, bias=False)
    conv.weight.data = blk[0].weight.data[cout][:, torch.tensor(cin)].clone()
    bn = nn.BatchNorm2d(len(cout))
    copy_bn_channels(bn, blk[1], cout)
    return nn.Sequential(conv, bn, nn.ReLU(inplace=True))


class PrunedResCNMM(PrunedNet):
    """The residual grid's pruned network: the live edges with their kept inner channels,
    scaled by their mean-field weights ``p_e`` (by 1 with ``spec.unit_weights``); nodes left
    with no edge are their skip's value and vanish."""

    def __init__(self, cnmm: "ResCNMM", spec: PruneSpec):
        super().__init__()
        self.spec = spec
        alive = sorted(cnmm._alive(set(spec.edges)))
        p = [1.0] * len(cnmm.edge_list) if spec.unit_weights else cnmm.edge_weights().tolist()
        rep = _representatives(cnmm, {cnmm.edge_list[e][1] for e in alive})
        self.stem = copy.deepcopy(cnmm.stem)
        self.blocks = nn.ModuleList()
        self.src = []
        self.dst = []
        self.weights = []
        self.first = []  # the node's first incoming edge: start its sum
        self.last = []  # the node's last incoming edge: add the skip, apply the ReLU
        self.skip_of = []
        channels = {}
        for k, e in enumerate(alive):
            a, d = cnmm.edge_list[e]
            keep = spec.channels.get(e, list(range(cnmm.channel_count(e))))
            if len(keep) < cnmm.channel_count(e):
                channels[e] = keep
            self.blocks.append(_sliced_branch(cnmm.edges[e], keep))
            self.src.append(rep[a])
            self.dst.append(d)
            self.weights.append(float(p[e]))
            self.first.append(k == 0 or cnmm.edge_list[alive[k - 1]][1] != d)
            last = k + 1 == len(alive) or cnmm.edge_list[alive[k + 1]][1] != d
            self.last.append(last)
            self.skip_of.append(rep[cnmm.skip[d]] if last and cnmm.skip[d] >= 0 else -1)
        self.out = rep[cnmm.out_nodes[0]]
        self.head = copy.deepcopy(cnmm.head)
        self.macs = cnmm.spec_macs(PruneSpec(alive, channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K)
        vals: Dict[int, Tensor] = {0: self.stem(x)}
        acc = vals[0]  # the running sum of the edges into the current node (restarted at each node's first)
        for i, blk in enumerate(self.blocks):
            y = self.weights[i] * blk(vals[self.src[i]])
            acc = y if self.first[i] else acc + y
            if self.last[i]:
                s = self.skip_of[i]
                vals[self.dst[i]] = F.relu(acc + vals[s]) if s >= 0 else F.relu(acc)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(vals[self.out], 1), 1))


def _representatives(cnmm: "ResCNMM", computed: set[int]) -> dict[int, int]:
    """node -> the node holding its value: itself when an edge computes it, else its skip's."""
    rep = {0: 0}
    for i in range(1, len(cnmm.node_list)):
        if i in computed:
            rep[i] = i
        elif cnmm.skip[i] in rep:
            rep[i] = rep[cnmm.skip[i]]
    return rep


def _sliced_branch(blk: ResEdgeBlock, keep: list[int]) -> ResEdgeBlock:
    """A basic-block branch keeping inner channels ``keep`` (both convs are linear in them)."""
    new = ResEdgeBlock(blk.conv1.in_channels, blk.conv2.out_channels, blk.conv1.stride[0], mid=len(keep))
    idx = torch.tensor(keep, dtype=torch.long)
    new.conv1.weight.data = blk.conv1.weight.data[idx].clone()
    new.conv2.weight.data = blk.conv2.weight.data[:, idx].clone()
    copy_bn_channels(new.bn1, blk.bn1, idx)
    new.bn2.load_state_dict(blk.bn2.state_dict())
    return new


# ----------------------------------------------------------------- BatchNorm statistics


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader, batches: int = 20) -> nn.Module:
    """Recompute BatchNorm running statistics on a few batches (no weight updates): a pruned
    network's activations differ from the full mixture's."""
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


def bn_state(net: nn.Module) -> dict[str, Tensor]:
    """The running statistics of every BatchNorm of ``net``, keyed as in its state_dict
    (``"<module>.running_mean"``, ``"<module>.running_var"``), on the CPU."""
    return {f"{n}.{k}": getattr(m, k).detach().cpu().clone() for n, m in net.named_modules()
            if isinstance(m, nn.BatchNorm2d) for k in ("running_mean", "running_var")}


@torch.no_grad()
def load_bn_state(net: nn.Module, state: Mapping[str, Tensor], name: str) -> None:
    """Put a point's statistics (from :func:`bn_state`) into the network its spec builds;
    statistics that do not fit it (other keys or shapes) are an error naming the point."""
    want = {k: v.shape for k, v in bn_state(net).items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if set(want) != set(have) or any(tuple(want[k]) != have[k] for k in want):
        bad = sorted(set(want) ^ set(have)) or [k for k in want if tuple(want[k]) != have[k]]
        raise ValueError(f"the BatchNorm statistics stored for operating point {name!r} do not fit its pruned "
                         f"network (e.g. {bad[0]!r}): were they saved for another spec or model?")
    mods = dict(net.named_modules())
    for k, v in state.items():
        mod, _, buf = k.rpartition(".")
        getattr(mods[mod], buf).copy_(v)
