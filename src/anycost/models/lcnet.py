"""LC-Net: per-input layer skipping (L-Net) and channel skipping (C-Net) with learned
scaling of what is kept (Xia, Yin, Dai, Jha, "Fully Dynamic Inference with Deep Neural
Networks", 2020).

From the abstract: two compact networks predict, per input, which layers and which
filters are redundant, and how to scale the computation that is kept; LC-Net combines
both. Everything else is **our design**:

* One predictor per residual block: the block input, global-average-pooled, into a tiny
  MLP (C_in -> 16 -> outputs). L-Net outputs a skip/execute logit and a scale ``1 + tanh``
  for the residual branch; C-Net outputs a keep logit and a scale ``1 + tanh`` for each of
  the block's inner channels (conv1's outputs, conv2's inputs). The predictors start
  biased to "execute everything", so training starts from the backbone's behaviour.
* Training: hard decisions in the forward pass with a straight-through Gumbel-sigmoid
  estimator; loss = cross-entropy + ``lam * relu(E[MACs] / MACs_full - target) ** 2``, where the
  expectation uses the keep probabilities and includes the predictors' own MACs. Training
  starts from a trained zoo ResNet (``--init-from resnet20.cifar10``) or from scratch.
  ``penalty="example"`` (default) applies the hinge per input; ``penalty="batch"`` to the
  batch mean only, which leaves room for per-input differences (see the README's findings).
  ``target_ramp=r`` slides the target from 1 to ``target`` over the first r of training.
  ``channel_init`` is the channel gates' initial keep logit (3: kept for 95 % of training
  draws); a lower one (1.5: 82 %) gives the cost penalty ~3x the gradient on them and
  trains the backbone with channels dropped from the start.
  ``channel_target=c`` adds a second squared hinge, ``channel_lam * relu(kept - c) ** 2``, on
  the share of the *executed* blocks' MACs that the channel gates keep (block execution
  probabilities detached, so it never pays to skip a block to dodge it). The MAC hinge alone
  prices a channel at 1/C of its block, so the layer gates met every budget and executed
  blocks kept all their channels (staged ResNet-56 LC-Net); this prices channels against
  their own block, with the layer/channel split set by the user.
* Budget-conditioned (beyond the paper): the predictors also see the target budget; each
  training example draws its target uniformly in ``[budget_min, 1]`` and is penalised
  against it, so one model serves every budget at inference (the budget is in the
  operating point).
* Inference: hard decisions; operating points move the decision thresholds (or, for the
  conditioned model, the budget). Skipped blocks leave the batch (gather/scatter per
  block). Channel skipping groups the rows that share a keep-mask and runs each group
  through weight-sliced convolutions: at batch 1 that is plain weight slicing, and in a
  batch per-input MACs stay exact; how much time batches save depends on how many
  distinct masks the batch holds (reported by the bench, not assumed).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.cost import DynamicOutput, module_macs
from anycost.eval import OperatingPoint

from .registry import register_model
from .resnet_cifar import BasicBlock, CifarResNet, conv_macs


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


class LCResNet(nn.Module):
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
        """Start from a trained LC-Net family member, e.g. an LC-Net from a trained L-Net (our
        staged training: joint training let the layer gates take the whole budget and left
        every channel on). The backbone and each predictor's hidden layer carry over whole;
        the output rows carry over for the decisions both models make (layer rows, channel
        rows); the new rows keep their "execute everything" biases with zero weights, so the
        new model starts as the source model (fc1 still gets gradients through the carried
        rows). Same flags: a plain strict load."""
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
        training, so a trained backbone gives up blocks gradually instead of all in the first
        steps, where a full-strength penalty on a ~100 % overshoot shut most gates at once
        (ResNet-56 L-Net, epoch 1: 76 % val from 88.6 %)."""
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
        # "example": every input must meet its budget, which on CIFAR-10 drove every gate to one
        # input-independent decision; "batch": only the batch mean must, so easy inputs may pay
        # for hard ones (the budget is a mean-MAC budget at inference too)
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

    # ----------------------------------------------------------------- inference

    def operating_points(self, taus=(0.3, 0.5, 0.7, 0.85, 0.95, 0.99),
                         budgets=(1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2)) -> list[OperatingPoint]:
        """Thresholds on the keep probabilities (a conditioned model: budgets at tau 0.5),
        plus 'full': every block and channel, with the learned scales."""
        full = [OperatingPoint("full", {"tau": 0.0, "execute_all": True})]
        if self.conditioned:
            return [OperatingPoint(f"budget {b:.2f}", {"budget": b}) for b in budgets] + full
        return [OperatingPoint(f"tau {t:.2f}", {"tau": t}) for t in taus] + full

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

    @torch.no_grad()
    def infer(self, x: Tensor, op: OperatingPoint | None = None) -> DynamicOutput:
        """Hard decisions with real skipping. op: {"tau": t} keeps a block / channel when its
        keep probability exceeds t (the conditioned model: {"budget": b}, tau 0.5);
        {"execute_all": True} runs the backbone with its learned scales."""
        op = op or OperatingPoint("default", {})
        n = x.shape[0]
        tau = float(op.get("tau", 0.5))
        thr = torch.logit(torch.tensor(min(max(tau, 1e-6), 1 - 1e-6))).item()
        all_ = bool(op.get("execute_all", False))
        budget = torch.full((n,), float(op.get("budget", self.target)), device=x.device) if self.conditioned else None
        if n == 1:
            return self._infer_one(x, thr, all_, budget)
        macs = torch.full((n,), float(self.always_macs), dtype=torch.float64, device=x.device)
        h = self.backbone.stem(x)
        skipped = torch.zeros(n, dtype=torch.long, device=x.device)
        for i, (blk, pred) in enumerate(zip(self.blocks_list, self.predictors)):
            ll, ls, cl, cs = pred.split(pred(self._pooled(h, budget)))
            macs += self.pred_macs[i]
            go = (ll > thr) | all_ if self.layers else torch.ones(n, dtype=torch.bool, device=x.device)
            out = blk.shortcut(h)
            rows = go.nonzero().squeeze(1)
            skipped += (~go).long()
            if rows.numel():
                hr = h.index_select(0, rows)  # only the rows that execute this block
                if self.channels:
                    keep = (cl.index_select(0, rows) > thr) | all_  # (A, C)
                    scale = cs.index_select(0, rows)
                    branch = torch.empty(rows.numel(), blk.planes, out.shape[2], out.shape[3], device=x.device)
                    masks, inv = torch.unique(keep, dim=0, return_inverse=True)
                    for g in range(masks.shape[0]):  # one weight-sliced pass per distinct keep-mask
                        grp = (inv == g).nonzero().squeeze(1)
                        kidx = masks[g].nonzero().squeeze(1)
                        k = kidx.numel()
                        macs[rows[grp]] += (self.conv1_macs[i] + self.conv2_macs[i]) * k / blk.planes
                        branch[grp] = self._kept_branch(blk, hr.index_select(0, grp), kidx,
                                                        scale.index_select(0, grp).index_select(1, kidx), out.shape[2:])
                else:
                    branch = blk.forward_branch(hr)
                    macs[rows] += self.conv1_macs[i] + self.conv2_macs[i]
                if self.layers:
                    branch = branch * ls.index_select(0, rows)[:, None, None, None]
                out = out.index_add(0, rows, branch)  # scatter the executed branches back
            h = F.relu(out)
        return DynamicOutput(self.backbone.forward_head(h), macs, skipped, len(self.blocks_list) + 1)

    def _infer_one(self, x: Tensor, thr: float, all_: bool, budget: Tensor | None) -> DynamicOutput:
        """Batch 1: plain control flow instead of gather/scatter and mask grouping. On a 2-core
        CPU a ResNet-56 L-Net spent more time in ~20 small tensor ops per block (index
        bookkeeping, per-row MAC counts) than in the convolutions it kept, and ran slower than
        the static ResNet-56 at batch 1. Here each block reads its predictor's output once
        (``tolist``) and decides in Python; kept channels run as weight-sliced convolutions
        (the whole weight when every channel is kept). Same decisions, logits and MACs as the
        batched path (tested)."""
        # the batched path compares float32 logits with thr rounded to float32; so does this
        thr = float(torch.tensor(thr, dtype=torch.float32))
        macs = float(self.always_macs)
        skipped = 0
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


def _lc(depth, layers, channels, conditioned=False, **kw):
    return LCResNet(depth=depth, layers=layers, channels=channels, conditioned=conditioned, **kw)


for _d in (20, 32, 56):
    register_model(lambda _d=_d, **kw: _lc(_d, True, False, **kw), name=f"lnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, False, True, **kw), name=f"cnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, True, True, **kw), name=f"lcnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, True, True, True, **kw), name=f"lcnet_cond_resnet{_d}", family="lcnet")


@register_model(family="lcnet")
def test_lcnet(**kw):
    """Tiny LC-Net for tests and the demo: resnet14 layout at widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return LCResNet(depth=14, **kw)
