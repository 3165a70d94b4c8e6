"""The LC-Net model: backbone adapters, per-block predictors, training (masked forward with
straight-through gates), and the anycost contract (routed inference, masked measurement,
calibration candidates, export)."""

from __future__ import annotations

import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.core import (DynamicModel, DynamicOutput, Mixture, OperatingPoint, normalised, progress_bar,
                          pareto_subset)
from anycost.cost import module_macs

from ..resnet_cifar import BasicBlock, CifarResNet
from .export import build_gated, build_pruned, build_pruned_block
from .points import DEFAULT_TAU, Setting, check_params, setting, tau_name, threshold

# A masked-pass decision (or top-1) closer than this to its threshold (runner-up logit) is
# re-run through routed inference: the two paths round activations differently (the masked
# one multiplies dropped channels by 0 where routed inference slices them out). On the zoo's
# ResNet-56 C-Net and LC-Net the gate logits of the two paths differed by at most 3e-6, a
# tenth of this margin.
MARGIN = 3e-5
# The masked pass runs a block's rows in groups of equal keep-mask (as routed inference does)
# when there are at least this many rows per mask on average; fewer, and one dense pass over
# the union of kept channels is cheaper than the per-group overheads.
GROUP_ROWS = 8


class TorchvisionBlock(nn.Module):
    """A torchvision BasicBlock seen through the interface LC-Net uses (same modules, shared weights)."""

    def __init__(self, blk: nn.Module):
        super().__init__()
        self.blk = blk
        self.conv1, self.bn1, self.conv2, self.bn2 = blk.conv1, blk.bn1, blk.conv2, blk.bn2
        self.planes, self.in_planes, self.stride = blk.conv2.out_channels, blk.conv1.in_channels, blk.conv1.stride[0]

    def shortcut(self, x: Tensor) -> Tensor:
        return self.blk.downsample(x) if self.blk.downsample is not None else x

    def forward_branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class TorchvisionBackbone(nn.Module):
    """torchvision ResNet-18/34 (BasicBlock) presented like CifarResNet: stem, blocks, head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not all(hasattr(b, "conv2") and not hasattr(b, "conv3") for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
                   for b in layer):
            raise ValueError("LC-Net supports BasicBlock ResNets (resnet18/34), not Bottleneck ones")
        self.net = net
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self._blocks = [TorchvisionBlock(b) for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        self.fc = net.fc
        self.widths = (net.conv1.out_channels,)

    def blocks(self):
        return self._blocks

    def forward_head(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.net.avgpool(h), 1))


def _st_gate(logit: Tensor, training: bool, threshold_logit: float = 0.0) -> tuple[Tensor, Tensor]:
    """(hard 0/1 decision with straight-through gradient, keep probability)."""
    p = torch.sigmoid(logit)
    if training:
        u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid(logit + u.log() - (-u).log1p())
        hard = (soft > 0.5).to(logit.dtype)
        return hard + soft - soft.detach(), p
    return (logit > threshold_logit).to(logit.dtype), p


class BlockPredictor(nn.Module):
    def __init__(self, c_in: int, c_mid: int, layers: bool, channels: bool, conditioned: bool, hidden: int = 16,
                 channel_init: float = 3.0):
        super().__init__()
        self.layers, self.channels, self.conditioned, self.c_mid = layers, channels, conditioned, c_mid
        n_out = (2 if layers else 0) + (2 * c_mid if channels else 0)
        self.fc1 = nn.Linear(c_in + (1 if conditioned else 0), hidden)
        self.fc2 = nn.Linear(hidden, n_out)
        nn.init.normal_(self.fc2.weight, std=0.01)  # small, not zero: gradients must reach fc1 too
        with torch.no_grad():  # start by executing everything at scale ~1
            self.fc2.bias.zero_()
            if layers:
                self.fc2.bias[self.rows("layers").start] = 3.0
            if channels:
                c = self.rows("channels").start
                self.fc2.bias[c:c + c_mid] = channel_init

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(pooled)))

    def rows(self, part: str) -> slice:
        """fc2 output rows of 'layers' (logit, scale) or 'channels' (C logits, then C scales):
        the one place that knows the output layout."""
        if part == "layers":
            return slice(0, 2)
        b = 2 if self.layers else 0
        return slice(b, b + 2 * self.c_mid)

    def split(self, out: Tensor):
        """-> (layer logit (B,), layer scale (B,), channel logits (B, C), channel scales (B, C)) or Nones."""
        ll = ls = cl = cs = None
        if self.layers:
            lo = out[:, self.rows("layers")]  # (B, 2)
            ll, ls = lo[:, 0], 1 + torch.tanh(lo[:, 1])
        if self.channels:
            co = out[:, self.rows("channels")]  # (B, 2C)
            cl, cs = co[:, :self.c_mid], 1 + torch.tanh(co[:, self.c_mid:])
        return ll, ls, cl, cs


class LCResNet(DynamicModel):
    """L-Net (``layers``), C-Net (``channels``), LC-Net (both), optionally budget-conditioned,
    on a CIFAR ResNet or a torchvision BasicBlock ResNet. Operating points: see
    :mod:`anycost.models.lcnet.points`."""

    family = "lcnet"

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64),
                 layers: bool = True, channels: bool = True, conditioned: bool = False, target: float = 0.5,
                 lam: float = 2.0, budget_min: float = 0.2, input_hw: int = 32, backbone: nn.Module | None = None,
                 penalty: str = "example", gate_l2: float = 0.0, target_ramp: float = 0.0,
                 channel_init: float = 3.0, channel_target: float | None = None, channel_lam: float | None = None):
        super().__init__()
        if not (layers or channels):
            raise ValueError("enable layer skipping, channel skipping or both")
        if penalty not in ("example", "batch"):
            raise ValueError(f"penalty must be 'example' or 'batch', not {penalty!r}")
        if not 0.0 <= target_ramp <= 1.0:
            raise ValueError(f"target_ramp is a fraction of training in [0, 1], got {target_ramp}")
        if channel_target is not None and not (channels and 0.0 < channel_target <= 1.0):
            raise ValueError(f"channel_target is a kept fraction in (0, 1] and needs channel gates, got {channel_target}")
        self.penalty, self.gate_l2, self.target_ramp = penalty, gate_l2, target_ramp
        self.channel_target = channel_target
        self.channel_lam = lam if channel_lam is None else channel_lam
        self.backbone = backbone if backbone is not None else CifarResNet(depth, num_classes, in_chans, widths)
        self.blocks_list: list[BasicBlock] = self.backbone.blocks()
        self.layers, self.channels, self.conditioned = layers, channels, conditioned
        self.target, self.lam, self.budget_min = target, lam, budget_min
        self.num_classes, self.in_chans, self.input_hw = num_classes, in_chans, input_hw
        self.input_size = (in_chans, input_hw, input_hw)
        self.predictors = nn.ModuleList(BlockPredictor(b.in_planes, b.planes, layers, channels, conditioned,
                                                       channel_init=channel_init)
                                        for b in self.blocks_list)
        self.measure_costs()

    # ----------------------------------------------------------------- costs

    def measure_costs(self) -> None:
        """Unit costs measured on the live modules, shapes found by running a zero image."""
        from anycost.cost import count_macs

        hw = self.input_hw
        was = self.training
        self.eval()
        with torch.no_grad():
            x = torch.zeros(1, self.in_chans, hw, hw)
            self.stem_macs = count_macs(self.backbone.stem, x)
            h = self.backbone.stem(x)
            self.conv1_macs, self.conv2_macs, self.pred_macs, self.shortcut_macs = [], [], [], []
            for b, p in zip(self.blocks_list, self.predictors):
                self.conv1_macs.append(count_macs(b.conv1, h))
                mid = F.relu(b.bn1(b.conv1(h)))
                self.conv2_macs.append(count_macs(b.conv2, mid))
                self.shortcut_macs.append(count_macs(b.shortcut, h))  # option A: 0; a 1x1 conv in torchvision
                self.pred_macs.append(module_macs(p, (p.fc1.in_features,)))
                h = F.relu(b.forward_branch(h) + b.shortcut(h))
            self.head_macs = count_macs(self.backbone.forward_head, h)
        self.train(was)
        self.always_macs = self.stem_macs + self.head_macs + sum(self.shortcut_macs)  # paid by every input
        self.full_macs = self.always_macs + sum(self.conv1_macs) + sum(self.conv2_macs)

    @torch.no_grad()
    def init_from_trained(self, src: "LCResNet") -> None:
        """Start from a trained LC-Net family member, e.g. an LC-Net from a trained L-Net
        (staged training: channel gates are added to trained layer gates instead of being
        trained jointly with them). The backbone and each predictor's hidden layer carry
        over whole; the output rows carry over for the decisions both models make (layer
        rows, channel rows); the new rows keep their "execute everything" biases with zero
        weights, so the new model starts as the source model (fc1 still gets gradients
        through the carried rows). Same flags: a plain strict load."""
        from anycost.checkpoint import CheckpointError, load_state_dict_strict

        if (src.layers, src.channels) == (self.layers, self.channels) or src.conditioned != self.conditioned:
            load_state_dict_strict(self, src.state_dict(), "init_from")  # a mismatch is a clear error there
            return
        load_state_dict_strict(self.backbone, src.backbone.state_dict(), "init_from backbone")
        if len(src.predictors) != len(self.predictors):
            raise CheckpointError("init_from: the LC-Nets have different numbers of blocks")
        for mine, theirs in zip(self.predictors, src.predictors):
            load_state_dict_strict(mine.fc1, theirs.fc1.state_dict(), "init_from predictor")
            for part in ("layers", "channels"):
                if not getattr(mine, part):
                    continue
                a = mine.rows(part)
                if getattr(theirs, part):
                    mine.fc2.weight[a] = theirs.fc2.weight[b := theirs.rows(part)]
                    mine.fc2.bias[a] = theirs.fc2.bias[b]
                else:  # new decisions start input-independent: their keep bias, scale exactly 1
                    mine.fc2.weight[a] = 0.0

    @classmethod
    def from_torchvision(cls, net: nn.Module, input_hw: int = 224, **kw) -> "LCResNet":
        """LC-Net on a torchvision ResNet-18/34 (e.g. ImageNet-pretrained weights you load yourself)."""
        return cls(num_classes=net.fc.out_features, in_chans=net.conv1.in_channels, input_hw=input_hw,
                   backbone=TorchvisionBackbone(net), **kw)

    def declared_macs(self, input_size) -> int:
        """MACs of ``forward`` in eval mode with every block and channel kept (predictors included)."""
        return self.full_macs + sum(self.pred_macs)

    # ----------------------------------------------------------------- training

    def _pooled(self, h: Tensor, budget: Tensor | None) -> Tensor:
        z = h.mean((2, 3))
        # the budget enters centred and scaled, comparable to the pooled features
        return torch.cat([z, 4.0 * (budget[:, None].to(z.dtype) - 0.6)], 1) if self.conditioned else z

    def forward_train(self, x: Tensor, budget: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Masked (full-compute) forward with hard ST decisions; returns (logits, expected MACs
        per row (B,), every gate logit (B, G), expected share of the executed blocks' MACs that
        the channel gates keep (B,); ones without channel gates)."""
        n = x.shape[0]
        gates = []
        h = self.backbone.stem(x)
        exp = torch.full((n,), float(self.always_macs), device=x.device)
        ch_kept = torch.zeros(n, device=x.device)  # sum over blocks of P(run) * kept share * block MACs
        ch_all = torch.zeros(n, device=x.device)  # sum over blocks of P(run) * block MACs
        for i, (blk, pred) in enumerate(zip(self.blocks_list, self.predictors)):
            ll, ls, cl, cs = pred.split(pred(self._pooled(h, budget)))
            gates += [g.reshape(n, -1) for g in (ll, cl) if g is not None]
            exp = exp + self.pred_macs[i]
            if self.channels:
                keep, pk = _st_gate(cl, self.training)  # (B, C)
                q = pk.mean(1)
                mid = F.relu(blk.bn1(blk.conv1(h))) * (keep * cs)[:, :, None, None]
                branch = blk.bn2(blk.conv2(mid))
            else:
                q = torch.ones(n, device=x.device)
                branch = blk.forward_branch(h)
            if self.layers:
                go, pl = _st_gate(ll, self.training)
                branch = branch * (go * ls)[:, None, None, None]
            else:
                pl = torch.ones(n, device=x.device)
            block = self.conv1_macs[i] + self.conv2_macs[i]
            exp = exp + pl * q * block
            ch_kept = ch_kept + pl.detach() * q * block
            ch_all = ch_all + pl.detach() * block
            h = F.relu(branch + blk.shortcut(h))
        kept = ch_kept / ch_all.clamp_min(1e-9) if self.channels else torch.ones(n, device=x.device)
        return self.backbone.forward_head(h), exp, torch.cat(gates, 1), kept

    def forward(self, x: Tensor) -> Tensor:
        budget = torch.full((x.shape[0],), self.target, device=x.device) if self.conditioned else None
        return self.forward_train(x, budget)[0]

    def ramped(self, target: Tensor, progress: float) -> Tensor:
        """The budget in force at ``progress`` (fraction of training done): with ``target_ramp``
        r > 0 it slides linearly from 1 (the whole backbone) to ``target`` over the first r of
        training, so a trained backbone gives up blocks gradually instead of meeting a
        full-strength penalty on its whole overshoot in the first steps."""
        if self.target_ramp <= 0:
            return target
        return 1.0 - (1.0 - target) * min(1.0, progress / self.target_ramp)

    def training_loss(self, x: Tensor, y: Tensor, criterion, progress: float = 0.0):
        n = x.shape[0]
        if self.conditioned:
            target = self.budget_min + (1 - self.budget_min) * torch.rand(n, device=x.device)
        else:
            target = torch.full((n,), self.target, device=x.device)
        target = self.ramped(target, progress)
        logits, exp, gates, kept = self.forward_train(x, target if self.conditioned else None)
        ratio = exp / self.full_macs
        # squared hinge: the push grows with the overshoot, so inputs with small budgets are
        # pushed harder than inputs with large ones (what lets a conditioned model tell them apart).
        # "example": every input must meet its budget by itself, which favours one decision for
        # all inputs; "batch": only the batch mean must, so easy inputs may pay for hard ones
        # (the budget is a mean-MAC budget at inference too)
        over = ratio - target  # (B,)
        pen = F.relu(over).pow(2).mean() if self.penalty == "example" else F.relu(over.mean()).pow(2)
        c_pen = 0.0
        if self.channel_target is not None:  # same per-input / batch-mean choice as the MAC hinge
            c_over = kept - self.channel_target  # (B,)
            c_pen = F.relu(c_over).pow(2).mean() if self.penalty == "example" else F.relu(c_over.mean()).pow(2)
        # gate_l2 keeps the gate logits near 0, where the Gumbel noise still flips decisions and
        # the straight-through gradient is largest: a saturated gate gets ~no gradient for any input
        reg = self.gate_l2 * gates.pow(2).mean() if self.gate_l2 else 0.0
        return criterion(logits, y) + self.lam * pen + self.channel_lam * c_pen + reg, logits

    # ----------------------------------------------------------------- operating points

    def check_op(self, op: OperatingPoint) -> OperatingPoint:
        check_params(self, op)
        return op

    def setting(self, op: OperatingPoint) -> Setting:
        return setting(self, self.check_op(op))

    def default_op(self) -> OperatingPoint:
        return OperatingPoint("full", {"execute_all": True})

    def default_operating_points(self) -> list[OperatingPoint]:
        """Uncalibrated: thresholds on the keep probabilities (a conditioned model: budgets),
        plus 'full': every block and channel, with the learned scales."""
        if self.conditioned:
            pts = [OperatingPoint(f"budget {b:.2f}", {"budget": b}) for b in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2)]
        else:
            pts = [OperatingPoint(tau_name(t), {"tau": t}) for t in (0.3, 0.5, 0.7, 0.85, 0.95, 0.99)]
        return pts + [self.default_op()]

    def is_static(self, op: OperatingPoint | str | None = None) -> bool:
        """'full' and fixed points run every input through the same network."""
        return not isinstance(op, Mixture) and not setting(self, self._export_op(op)).gated

    # ----------------------------------------------------------------- calibration candidates

    def candidate_operating_points(self, data, split: str, *, batch_size: int = 500, progress: bool = False,
                                   n_taus: int = 18, n_fixed: int = 8, samples: int = 1000) -> list[OperatingPoint]:
        """Gated points spread over where decisions change (MAC-weighted quantiles of the gate
        logits on ``split``; a conditioned model: a grid of budgets), 'full', and up to
        ``n_fixed`` input-independent points derived from every few gated ones."""
        x = self._sample(data, split, samples)
        if self.conditioned:
            lo = max(0.05, self.budget_min / 2)
            budgets = sorted({round(lo + (1 - lo) * j / (n_taus - 1), 3) for j in range(n_taus)})
            gated = [OperatingPoint(f"budget {b:.3f}", {"budget": b}) for b in budgets]
        else:
            gated = [OperatingPoint(tau_name(t), {"tau": t}) for t in self.tau_grid(x, n_taus, batch_size)]
        step = max(1, round(len(gated) / max(n_fixed, 1)))
        fixed = self.fixed_points(x, gated[::step][:n_fixed], batch_size) if n_fixed else []
        return gated + [self.default_op()] + fixed

    def calibrate(self, data, split: str = "calib", *, batch_size: int = 500, progress: bool = False,
                  most: int = 15, least: int = 8, **kw) -> list[OperatingPoint]:
        """As :meth:`DynamicModel.calibrate`, and where no input-independent point made the
        shipped set, the most accurate one joins it: every calibrated LC-Net then has a point
        that exports to a static network (ONNX)."""
        cands = self.candidate_operating_points(data, split, batch_size=batch_size, progress=progress, **kw)
        measured = self.measure(data.get(split), data.mean, data.std, cands, split=split, batch_size=batch_size,
                                progress=progress)
        ship = pareto_subset(measured, most, least)
        static = [o for o in measured if self.is_static(o)]
        if static and not any(self.is_static(o) for o in ship):
            ship.append(max(static, key=lambda o: (o.accuracy, -o.macs)))
        self.set_operating_points(ship)
        return self.operating_points()

    def _sample(self, data, split: str, n: int) -> Tensor:
        """Up to ``n`` inputs of ``split``, evenly spaced, normalised: (n, C, H, W)."""
        x, _ = normalised(data.get(split), data.mean, data.std)
        if len(x) > n:
            x = x[torch.linspace(0, len(x) - 1, n).long()]
        return x.to(self._device())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def tau_grid(self, x: Tensor, n: int = 18, batch_size: int = 500) -> list[float]:
        """``n`` keep-probability thresholds at MAC-weighted quantiles of the gate logits on ``x``
        (every block executed; a layer gate weighs its block's MACs, a channel gate 1/C of
        them), so consecutive thresholds drop similar MACs; plus 0.5. Each sits in the middle
        of the widest gap between observed logits within +-1 % of its quantile: trained gates
        crowd their logits together, and a threshold inside a crowd makes borderline decisions."""
        was = self.training
        self.eval()
        try:
            parts = [self._gate_logits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            self.train(was)
        lg, order = torch.cat([p[0] for p in parts]).double().sort()
        cum = torch.cat([p[1] for p in parts]).double()[order].cumsum(0)
        cum /= cum[-1].clone()
        gap = lg.diff()  # gap[k] lies between lg[k] and lg[k + 1]
        taus = {DEFAULT_TAU}
        for j in range(n):
            q = 0.03 + 0.94 * j / max(n - 1, 1)
            lo, hi = (int(torch.searchsorted(cum, v)) for v in (q - 0.01, q + 0.01))
            lo, hi = min(lo, len(gap) - 1), min(max(hi, lo + 1), len(gap))
            k = lo + int(gap[lo:hi].argmax())
            taus.add(float(torch.sigmoid((lg[k] + lg[k + 1]) / 2)))
        by_thr = {threshold(t): t for t in sorted(taus, reverse=True)}  # taus past the clamp act alike
        return sorted(by_thr.values())

    def _gate_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every gate logit of every input with everything executed (1-D), and its MAC weight."""
        n = x.shape[0]
        budget = torch.full((n,), float(self.target), device=x.device) if self.conditioned else None
        h = self.backbone.stem(x)
        logits, weights = [], []
        for i, (blk, pred) in enumerate(zip(self.blocks_list, self.predictors)):
            ll, ls, cl, cs = pred.split(pred(self._pooled(h, budget)))
            block = float(self.conv1_macs[i] + self.conv2_macs[i])
            if self.layers:
                logits.append(ll)
                weights.append(torch.full_like(ll, block))
            short = blk.shortcut(h)
            if self.channels:
                logits.append(cl.flatten())
                weights.append(torch.full_like(cl.flatten(), block / blk.planes))
                branch = self._kept_branch(blk, h, None, cs, short.shape[2:])
            else:
                branch = blk.forward_branch(h)
            if self.layers:
                branch = branch * ls[:, None, None, None]
            h = F.relu(branch + short)
        return torch.cat(logits), torch.cat(weights)

    @torch.no_grad()
    def fixed_points(self, x: Tensor, ops: list[OperatingPoint], batch_size: int = 500) -> list[OperatingPoint]:
        """One input-independent point per gated point in ``ops`` (duplicates dropped)."""
        out, seen = [], set()
        for op in ops:
            fixed = self.derive_fixed(x, op, batch_size)
            key = json.dumps([e and {k: v for k, v in e.items() if k == "channels"} for e in fixed])  # gates, not scales
            if key not in seen:
                seen.add(key)
                out.append(OperatingPoint(f"fixed {op.name}", {"fixed": fixed}))
        return out

    @torch.no_grad()
    def derive_fixed(self, x: Tensor, op: OperatingPoint, batch_size: int = 500) -> list:
        """The ``fixed`` params of ``op``'s most frequent decisions on ``x``: a block runs if
        most inputs run it, a channel is kept if most inputs keep it, and scales are their mean
        over ``x``. Derived block by block along the fixed network itself, so each predictor
        sees the features that network will give it."""
        s = self.setting(op)
        was = self.training
        self.eval()
        try:
            h = _chunked(self.backbone.stem, x, batch_size)
            entries = []
            for blk, pred in zip(self.blocks_list, self.predictors):
                out = _chunked(lambda hc, p=pred: p(self._pooled(hc, self._budget(hc, s))), h, batch_size)
                entry = self._majority(blk, pred, out, s)
                block = build_pruned_block(blk, entry, self.layers, self.channels)
                if block is not None:
                    h = _chunked(block.to(h.device), h, batch_size)
                entries.append(entry)
        finally:
            self.train(was)
        return entries

    def _majority(self, blk, pred, out: Tensor, s: Setting) -> dict | None:
        """One block's ``fixed`` entry from its predictor outputs ``out`` (N, outputs)."""
        ll, ls, cl, cs = pred.split(out)
        if self.layers and not s.execute_all and (ll > s.thr).double().mean() <= 0.5:
            return None
        entry = {}
        if self.layers:
            entry["scale"] = round(float(ls.double().mean()), 4)
        if self.channels:
            keep = torch.ones(blk.planes, dtype=torch.bool) if s.execute_all else (cl > s.thr).double().mean(0) > 0.5
            idx = keep.nonzero().squeeze(1).cpu()
            entry["channels"] = idx.tolist()
            entry["scales"] = [round(v, 4) for v in cs.double().mean(0)[idx].tolist()]
        return entry

    def _budget(self, h: Tensor, s: Setting) -> Tensor | None:
        return torch.full((h.shape[0],), s.budget, device=h.device) if self.conditioned else None

    # ----------------------------------------------------------------- routed inference

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:
        s = setting(self, op)
        if s.fixed is not None:
            return self._infer_fixed(x, s.fixed)
        if x.shape[0] == 1:
            return self._infer_one(x, s)
        return self._infer_batch(x, s)

    def fixed_macs(self, fixed: list) -> float:
        """MACs per input of a fixed point: what always runs plus the kept blocks' sliced convs."""
        macs = float(self.always_macs)
        for i, (blk, e) in enumerate(zip(self.blocks_list, fixed)):
            if e is not None:
                k = len(e["channels"]) if self.channels else blk.planes
                macs += (self.conv1_macs[i] + self.conv2_macs[i]) * k / blk.planes
        return macs

    def _infer_fixed(self, x: Tensor, fixed: list) -> DynamicOutput:
        """A fixed point runs its exported pruned network, so export and infer agree by construction."""
        n = x.shape[0]
        logits = build_pruned(self, fixed).to(x.device)(x)
        macs = torch.full((n,), self.fixed_macs(fixed), dtype=torch.float64, device=x.device)
        skipped = torch.full((n,), sum(e is None for e in fixed), dtype=torch.long, device=x.device)
        return DynamicOutput(logits, macs, skipped, len(self.blocks_list) + 1)

    def _conv_sliced(self, conv: nn.Conv2d, x: Tensor, out_idx: Tensor | None, in_idx: Tensor | None) -> Tensor:
        w = conv.weight
        if out_idx is not None:
            w = w.index_select(0, out_idx)
        if in_idx is not None:
            w = w.index_select(1, in_idx)
        return F.conv2d(x, w, None, conv.stride, conv.padding)

    def _kept_branch(self, blk, x: Tensor, kidx: Tensor | None, scale: Tensor, out_hw) -> Tensor:
        """A block's residual branch over its kept inner channels only, as weight-sliced convs.
        x (B, C_in, H, W); kidx (k,) the kept channels (None: all, with the whole weights);
        scale (B, k) their learned scales. With no channel kept nothing runs: the branch is
        bn2 of zeros, a per-channel constant of spatial size out_hw."""
        if kidx is not None and kidx.numel() == 0:
            z = torch.zeros(x.shape[0], blk.planes, *out_hw, device=x.device)
            return F.batch_norm(z, blk.bn2.running_mean, blk.bn2.running_var, blk.bn2.weight, blk.bn2.bias,
                                False, 0.0, blk.bn2.eps)
        mid = F.relu(self._bn(blk.bn1, self._conv_sliced(blk.conv1, x, kidx, None), kidx))
        return blk.bn2(self._conv_sliced(blk.conv2, mid * scale[:, :, None, None], None, kidx))

    @staticmethod
    def _bn(bn: nn.BatchNorm2d, x: Tensor, idx: Tensor | None) -> Tensor:
        if idx is None:
            return bn(x)
        return F.batch_norm(x, bn.running_mean[idx], bn.running_var[idx], bn.weight[idx], bn.bias[idx], False, 0.0, bn.eps)

    def _infer_batch(self, x: Tensor, s: Setting) -> DynamicOutput:
        """Real skipping in a batch: skipped blocks leave the batch (gather / scatter per
        block); channel gating groups the rows that share a keep-mask and runs each group
        through weight-sliced convolutions, so per-input MACs stay exact."""
        return self._batched(x, s)[0]

    def _batched(self, x: Tensor, s: Setting, dense: bool = False) -> tuple[DynamicOutput, Tensor | None]:
        """The batched pass behind routed inference (``dense=False``) and the cheaper masked
        measurement (``dense=True``, see :meth:`_masked`). Skipped blocks leave the batch; the
        rows that execute a block go through it together. Returns the output and, when dense,
        which rows it vouches for (B,); None otherwise."""
        n = x.shape[0]
        macs = torch.full((n,), float(self.always_macs), dtype=torch.float64, device=x.device)
        skipped = torch.zeros(n, dtype=torch.long, device=x.device)
        ok = torch.ones(n, dtype=torch.bool, device=x.device) if dense else None
        approx = torch.zeros(n, dtype=torch.bool, device=x.device) if dense else None  # rows that took a masked pass
        budget = self._budget(x, s)
        h = self.backbone.stem(x)
        for i, (blk, pred) in enumerate(zip(self.blocks_list, self.predictors)):
            ll, ls, cl, cs = pred.split(pred(self._pooled(h, budget)))
            macs += self.pred_macs[i]
            out = blk.shortcut(h)
            if self.layers:
                go = (ll > s.thr) | s.execute_all
                if dense:
                    ok &= ~approx | ((ll - s.thr).abs() > MARGIN)
            else:
                go = torch.ones(n, dtype=torch.bool, device=x.device)
            rows = go.nonzero().squeeze(1)
            skipped += (~go).long()
            if rows.numel():
                hr = h.index_select(0, rows)  # only the rows that execute this block
                if self.channels:
                    clr = cl.index_select(0, rows)  # (A, C)
                    keep = (clr > s.thr) | s.execute_all
                    scale = cs.index_select(0, rows)
                    if dense:
                        ok[rows] &= ~approx[rows] | ((clr - s.thr).abs() > MARGIN).all(1)
                        branch, masked = self._masked_channels(blk, hr, keep, scale, out.shape[2:])
                        approx[rows] |= masked
                    else:
                        masks, inv = torch.unique(keep, dim=0, return_inverse=True)
                        branch = self._grouped_branch(blk, hr, masks, inv, scale, out.shape[2:])
                    macs[rows] += (self.conv1_macs[i] + self.conv2_macs[i]) * keep.sum(1).double() / blk.planes
                else:
                    branch = blk.forward_branch(hr)
                    macs[rows] += self.conv1_macs[i] + self.conv2_macs[i]
                if self.layers:
                    branch = branch * ls.index_select(0, rows)[:, None, None, None]
                out = out.index_add(0, rows, branch)  # scatter the executed branches back
            h = F.relu(out)
        logits = self.backbone.forward_head(h)
        if dense and logits.shape[1] > 1:
            top = logits.topk(2, 1).values
            ok &= ~approx | ((top[:, 0] - top[:, 1]) > MARGIN)
        return DynamicOutput(logits, macs, skipped, len(self.blocks_list) + 1), ok

    def _grouped_branch(self, blk, h: Tensor, masks: Tensor, inv: Tensor, scale: Tensor, out_hw) -> Tensor:
        """Branch of rows h (A, C_in, H, W): one weight-sliced pass per distinct keep-mask
        ``masks`` (G, C), row r having mask ``inv[r]``; scale (A, C)."""
        branch = torch.empty(h.shape[0], blk.planes, *out_hw, device=h.device)
        for g in range(masks.shape[0]):
            grp = (inv == g).nonzero().squeeze(1)
            kidx = masks[g].nonzero().squeeze(1)
            branch[grp] = self._kept_branch(blk, h.index_select(0, grp), kidx,
                                            scale.index_select(0, grp).index_select(1, kidx), out_hw)
        return branch

    def _infer_one(self, x: Tensor, s: Setting) -> DynamicOutput:
        """Batch 1: plain control flow instead of gather/scatter and mask grouping, whose index
        bookkeeping can cost more than the small convolutions it saves. Each block reads its
        predictor's output once (``tolist``) and decides in Python; kept channels run as
        weight-sliced convolutions (the whole weight when every channel is kept). Same
        decisions, logits and MACs as the batched path: the float32 logits, as Python floats,
        are compared with the float32 threshold."""
        all_, thr = s.execute_all, s.thr
        macs = float(self.always_macs)
        skipped = 0
        budget = self._budget(x, s)
        h = self.backbone.stem(x)
        for i, (blk, pred) in enumerate(zip(self.blocks_list, self.predictors)):
            out = pred(self._pooled(h, budget))[0]  # (outputs,)
            vals = out.tolist()
            macs += self.pred_macs[i]
            short = blk.shortcut(h)
            if self.layers and not (all_ or vals[pred.rows("layers").start] > thr):
                h = F.relu(short)
                skipped += 1
                continue
            if not self.channels:
                branch = blk.forward_branch(h)
                macs += self.conv1_macs[i] + self.conv2_macs[i]
            else:
                c0, c = pred.rows("channels").start, blk.planes
                keep = None if all_ else [j for j in range(c) if vals[c0 + j] > thr]
                k = c if keep is None else len(keep)
                macs += (self.conv1_macs[i] + self.conv2_macs[i]) * k / c
                scale = 1 + torch.tanh(out[c0 + c:c0 + 2 * c])  # (C,)
                if k == c:  # every channel: the whole weights, no slicing
                    branch = self._kept_branch(blk, h, None, scale[None], short.shape[2:])
                else:
                    kidx = torch.tensor(keep, dtype=torch.long, device=x.device)
                    branch = self._kept_branch(blk, h, kidx, scale[kidx][None], short.shape[2:])
            if self.layers:
                branch = branch * (1 + torch.tanh(out[pred.rows("layers").start + 1]))
            h = F.relu(branch + short)
        return DynamicOutput(self.backbone.forward_head(h), torch.tensor([macs], dtype=torch.float64, device=x.device),
                             torch.tensor([skipped], device=x.device), len(self.blocks_list) + 1)

    # ----------------------------------------------------------------- masked measurement

    @torch.no_grad()
    def measure(self, ds, mean, std, ops: list[OperatingPoint], split: str | None = None, batch_size: int = 500,
                progress: bool = False) -> list[OperatingPoint]:
        """Each point's mean MACs and top-1, equal to routed ``infer``'s: gated points take the
        cheaper pass of :meth:`_masked` per batch, and the inputs it cannot vouch for (a
        decision or top-1 within MARGIN of flipping after a masked pass) are re-run through
        routed inference; their count per point is kept in ``_anycost_rerouted``."""
        self.check_split(ds)
        x_all, y_all = normalised(ds, mean, std)
        dev = self._device()
        was = self.training
        self.eval()
        rerouted = self.__dict__.setdefault("_anycost_rerouted", {})
        try:
            out = []
            for op in progress_bar(ops, progress, "measuring operating points"):
                op = self.check_op(op)
                macs, correct, rerouted[op.name] = 0.0, 0, 0
                for i in range(0, len(y_all), batch_size):
                    x, y = x_all[i:i + batch_size].to(dev), y_all[i:i + batch_size].to(dev)
                    logits, m, r = self._measure_batch(x, op)
                    macs += float(m.sum())
                    correct += int((logits.argmax(1) == y).sum())
                    rerouted[op.name] += r
                out.append(op.measured(macs / len(y_all), 100.0 * correct / len(y_all), split))
            return out
        finally:
            self.train(was)

    def _measure_batch(self, x: Tensor, op: OperatingPoint) -> tuple[Tensor, Tensor, int]:
        """(logits (B, K), MACs (B,), how many rows went through routed inference)."""
        s = setting(self, op)
        if not s.gated:  # one path for every input: routed inference is already dense
            o = self._infer(x, op)
            return o.logits, o.macs, 0
        logits, macs, ok = self._masked(x, s)
        bad = (~ok).nonzero().squeeze(1)
        if bad.numel():
            o = self._infer(x.index_select(0, bad), op)
            logits[bad], macs[bad] = o.logits, o.macs
        return logits, macs, int(bad.numel())

    def _masked(self, x: Tensor, s: Setting) -> tuple[Tensor, Tensor, Tensor]:
        """Routed inference's decisions and per-input MACs in fewer, larger convolutions.
        Skipped blocks leave the batch as in routed inference. Where a block's rows share few
        keep-masks, they run routed inference's own grouped slicing; where they hold many, one
        dense pass over the union of their kept channels runs instead, each row's dropped
        channels multiplied by 0. Those rows' activations then round differently from routed
        inference's, so from there on their decisions (and top-1) are only vouched for with
        more than MARGIN to spare. Returns (logits (B, K), MACs (B,), ok (B,))."""
        o, ok = self._batched(x, s, dense=True)
        return o.logits, o.macs, ok

    def _masked_channels(self, blk, h: Tensor, keep: Tensor, scale: Tensor, out_hw) -> tuple[Tensor, Tensor]:
        """Branch of rows h (A, C_in, H, W) with keep-masks (A, C) and scales (A, C), and which
        rows took a masked pass (A,): grouped slicing where the masks are few (at least
        GROUP_ROWS rows per mask on average), else convs over the union of kept channels."""
        masks, inv = torch.unique(keep, dim=0, return_inverse=True)
        if masks.shape[0] * GROUP_ROWS <= keep.shape[0]:
            return self._grouped_branch(blk, h, masks, inv, scale, out_hw), torch.zeros_like(keep[:, 0])
        union = keep.any(0)
        kidx = None if bool(union.all()) else union.nonzero().squeeze(1)
        gate = keep.to(scale.dtype) * scale  # (A, C): 0 where dropped
        if kidx is not None:
            gate = gate.index_select(1, kidx)
        return self._kept_branch(blk, h, kidx, gate, out_hw), (keep != union).any(1)

    # ----------------------------------------------------------------- export

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:
        """A standalone network for ``op``: per-input skipping for gated points, a pruned
        ResNet for fixed ones (see :mod:`anycost.models.lcnet.export`)."""
        s = setting(self, self._export_op(op))
        net = build_pruned(self, s.fixed) if s.fixed is not None else build_gated(self, s)
        return net.to(self._device()).eval()


def _chunked(fn, x: Tensor, batch_size: int) -> Tensor:
    """fn over x in chunks of batch_size rows, concatenated."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
