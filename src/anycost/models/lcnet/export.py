"""Standalone LC-Net networks for one operating point, accepted by ``torch.jit.script``.

* :class:`GatedNet` (``tau`` / ``budget`` / ``execute_all`` points): per-input control flow
  that really skips. Each block runs its predictor, then only the rows whose layer gate is on
  (gather / scatter; a batch of one decides in Python), and for channel gates each such row
  through convolutions sliced to its kept channels. The operations are those of
  ``LCResNet._infer`` (same kernels, same float32 threshold), so decisions and MACs agree.
  With ``execute_all`` the control flow is static.
* :class:`PrunedNet` (``fixed`` points): a plain pruned ResNet. Skipped blocks are gone (or
  reduced to their shortcut where it changes the shape), kept channels are sliced out of the
  weights, channel scales are folded into conv2 and the layer scale into bn2; static
  control flow, so it also exports to ONNX. ``LCResNet._infer`` runs this same module.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .points import Setting

__all__ = ["GatedNet", "PrunedNet", "build_gated", "build_pruned", "build_pruned_block"]


class OptionA(nn.Module):
    """The CIFAR ResNet's parameter-free shortcut: subsample, zero-pad the new channels."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:
            x = F.pad(x, [0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2])
        return x


def shortcut_of(blk: nn.Module) -> nn.Module:
    """A standalone copy of a block's shortcut (option A, or torchvision's downsample)."""
    if hasattr(blk, "blk"):  # TorchvisionBlock
        down = blk.blk.downsample
        return copy.deepcopy(down) if down is not None else nn.Identity()
    return OptionA(blk.stride, blk.planes - blk.in_planes)


class Head(nn.Module):
    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = copy.deepcopy(fc)

    def forward(self, h: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class SlicedBN(nn.Module):
    """Eval-mode BatchNorm over all channels or a subset; plain buffers (TorchScript types a
    BatchNorm2d's statistics as Optional)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        for k in ("running_mean", "running_var", "weight", "bias"):
            self.register_buffer(k, getattr(bn, k).detach().clone())
        self.eps = float(bn.eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def sliced(self, x: Tensor, idx: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean[idx], self.running_var[idx], self.weight[idx], self.bias[idx],
                            False, 0.0, self.eps)


class GatedBlock(nn.Module):
    """One residual block with its predictor, for one (non-fixed) operating point."""

    def __init__(self, blk: nn.Module, pred: nn.Module, s: Setting):
        super().__init__()
        self.fc1, self.fc2 = copy.deepcopy(pred.fc1), copy.deepcopy(pred.fc2)
        self.shortcut = shortcut_of(blk)
        self.register_buffer("w1", blk.conv1.weight.detach().clone())  # (C, C_in, 3, 3)
        self.register_buffer("w2", blk.conv2.weight.detach().clone())  # (C, C, 3, 3)
        self.stride1, self.pad1, self.pad2 = int(blk.conv1.stride[0]), int(blk.conv1.padding[0]), int(blk.conv2.padding[0])
        self.bn1, self.bn2 = SlicedBN(blk.bn1), SlicedBN(blk.bn2)
        self.layers, self.channels, self.conditioned = bool(pred.layers), bool(pred.channels), bool(pred.conditioned)
        self.gated = s.gated
        self.thr = s.thr
        self.budget = float(s.budget) if s.budget is not None else 0.0
        self.c = int(blk.planes)
        self.c0 = pred.rows("channels").start if pred.channels else 0

    def predict(self, h: Tensor) -> Tensor:
        """(B, C_in, H, W) -> predictor outputs (B, outputs), as LCResNet._pooled + predictor."""
        z = h.mean((2, 3))
        if self.conditioned:
            b = torch.full((h.size(0), 1), self.budget, dtype=z.dtype, device=h.device)
            z = torch.cat([z, 4.0 * (b - 0.6)], 1)
        return self.fc2(F.relu(self.fc1(z)))

    def kept(self, h: Tensor, kidx: Tensor, scale: Tensor, short: Tensor) -> Tensor:
        """Residual branch over kept channels ``kidx`` (k,) with scales (B, k); k == C: whole weights."""
        k = kidx.numel()
        if k == 0:  # nothing runs: bn2 of zeros, a per-channel constant
            return self.bn2(torch.zeros(h.size(0), self.c, short.size(2), short.size(3), device=h.device))
        if k == self.c:
            mid = F.relu(self.bn1(F.conv2d(h, self.w1, None, self.stride1, self.pad1)))
            return self.bn2(F.conv2d(mid * scale[:, :, None, None], self.w2, None, 1, self.pad2))
        mid = F.relu(self.bn1.sliced(F.conv2d(h, self.w1.index_select(0, kidx), None, self.stride1, self.pad1), kidx))
        return self.bn2(F.conv2d(mid * scale[:, :, None, None], self.w2.index_select(1, kidx), None, 1, self.pad2))

    def branch(self, h: Tensor, out: Tensor, short: Tensor) -> Tensor:
        """Scaled residual branch of the rows ``h`` (A, C_in, H, W) that execute, outputs ``out`` (A, .)."""
        if not self.channels:
            b = self.bn2(F.conv2d(F.relu(self.bn1(F.conv2d(h, self.w1, None, self.stride1, self.pad1))),
                                  self.w2, None, 1, self.pad2))
        else:
            scale = 1 + torch.tanh(out[:, self.c0 + self.c:self.c0 + 2 * self.c])  # (A, C)
            if not self.gated:
                b = self.kept(h, torch.arange(self.c, device=h.device), scale, short)
            else:  # per row: its own kept channels, weight-sliced
                parts = []
                for r in range(h.size(0)):
                    kidx = (out[r, self.c0:self.c0 + self.c] > self.thr).nonzero().squeeze(1)
                    parts.append(self.kept(h[r:r + 1], kidx, scale[r:r + 1].index_select(1, kidx), short))
                b = torch.cat(parts, 0)
        if self.layers:
            b = b * (1 + torch.tanh(out[:, 1]))[:, None, None, None]
        return b

    def forward(self, h: Tensor) -> Tensor:
        out = self.predict(h)
        short = self.shortcut(h)
        if not (self.layers and self.gated):
            return F.relu(short + self.branch(h, out, short))
        if h.size(0) == 1:  # batch of one: decide in Python, no index bookkeeping
            if float(out[0, 0]) > self.thr:
                return F.relu(short + self.branch(h, out, short))
            return F.relu(short)
        rows = (out[:, 0] > self.thr).nonzero().squeeze(1)
        if rows.numel() == 0:
            return F.relu(short)
        b = self.branch(h.index_select(0, rows), out.index_select(0, rows), short)
        return F.relu(short.index_add(0, rows, b))  # scatter the executed branches back


class GatedNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K)
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


def build_gated(model, s: Setting) -> GatedNet:
    blocks = [GatedBlock(b, p, s) for b, p in zip(model.blocks_list, model.predictors)]
    return GatedNet(copy.deepcopy(model.backbone.stem), blocks, Head(model.backbone.fc)).eval()


# ------------------------------------------------------------------ fixed points: a pruned ResNet


class PrunedBlock(nn.Module):
    """conv1 (k kept outputs) - bn1 - ReLU - conv2 (k inputs, channel scales folded) - bn2
    (layer scale folded) + shortcut, ReLU."""

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d, bn2: nn.BatchNorm2d, shortcut: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2, self.shortcut = conv1, bn1, conv2, bn2, shortcut

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ConstBlock(nn.Module):
    """A block that runs with no channel kept: its branch is the constant bn2(0) * scale."""

    def __init__(self, bias: Tensor, shortcut: nn.Module):
        super().__init__()
        self.register_buffer("bias", bias)  # (1, C, 1, 1)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.bias)


class ShortcutBlock(nn.Module):
    """A skipped block whose shortcut changes the shape (stride, channels, downsample)."""

    def __init__(self, shortcut: nn.Module):
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x))


class PrunedNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.blocks(self.stem(x)))


def _identity_shortcut(blk: nn.Module) -> bool:
    if hasattr(blk, "blk"):
        return blk.blk.downsample is None
    return blk.stride == 1 and blk.planes == blk.in_planes


@torch.no_grad()
def build_pruned_block(blk: nn.Module, entry: dict | None, layers: bool, channels: bool) -> nn.Module | None:
    """The static block of one ``fixed`` entry (None: the block disappears). Its input is a
    ReLU output, so a skipped block with an identity shortcut (ReLU of it) is the identity."""
    if entry is None:
        return None if _identity_shortcut(blk) else ShortcutBlock(shortcut_of(blk))
    ls = float(entry["scale"]) if layers else 1.0
    idx = torch.tensor(entry["channels"] if channels else range(blk.planes), dtype=torch.long)
    cs = torch.tensor(entry["scales"], dtype=torch.float32) if channels else torch.ones(blk.planes)
    bn2 = copy.deepcopy(blk.bn2).eval()
    bn2.weight.mul_(ls)
    bn2.bias.mul_(ls)
    if idx.numel() == 0:
        bias = bn2(torch.zeros(1, blk.planes, 1, 1))
        return ConstBlock(bias, shortcut_of(blk))
    c1, c2 = blk.conv1, blk.conv2
    conv1 = nn.Conv2d(c1.in_channels, idx.numel(), c1.kernel_size, c1.stride, c1.padding, bias=False)
    conv1.weight.copy_(c1.weight.index_select(0, idx))
    bn1 = nn.BatchNorm2d(idx.numel(), eps=blk.bn1.eps)
    for k in ("running_mean", "running_var", "weight", "bias"):
        getattr(bn1, k).copy_(getattr(blk.bn1, k).index_select(0, idx))
    conv2 = nn.Conv2d(idx.numel(), c2.out_channels, c2.kernel_size, c2.stride, c2.padding, bias=False)
    conv2.weight.copy_(c2.weight.index_select(1, idx) * cs[None, :, None, None])  # conv2(mid * s) = conv2'(mid)
    return PrunedBlock(conv1, bn1.eval(), conv2, bn2, shortcut_of(blk)).eval()


def build_pruned(model, fixed: list) -> PrunedNet:
    blocks = [build_pruned_block(b, e, model.layers, model.channels) for b, e in zip(model.blocks_list, fixed)]
    return PrunedNet(copy.deepcopy(model.backbone.stem), [b for b in blocks if b is not None],
                     Head(model.backbone.fc)).eval()
