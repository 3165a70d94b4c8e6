"""CIFAR ResNets of He et al. (2016), section 4.2: depth 6n+2, three stages of n basic
blocks at widths (16, 32, 64) and resolutions (32, 16, 8), parameter-free "option A"
shortcuts (stride-2 subsampling and zero-padded channels), global pooling and one linear
layer. resnet20 = 40.55 M MACs, resnet56 = 125.49 M MACs per 32x32 image (the literature's
40.8 M / 125.75 M also count BN and ReLU, which FlopCounterMode and we do not).

These are the static baselines every adaptive family is compared with; the blocks are
reused by the early-exit and LC-Net families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .registry import register_model
from .static import StaticNet

__all__ = ["BasicBlock", "CifarResNet", "conv_macs"]


def conv_macs(conv: nn.Conv2d, h_out: int, w_out: int) -> int:
    """MACs of one conv per sample: out_positions x out_channels x (in/groups) x kernel area."""
    kh, kw = conv.kernel_size
    return h_out * w_out * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU. ``forward_branch`` exposes the
    residual branch alone so that dynamic families can skip or scale it."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def shortcut(self, x: Tensor) -> Tensor:
        # Option A: subsample spatially, zero-pad the new channels. No parameters, no MACs.
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.planes != self.in_planes:
            extra = self.planes - self.in_planes
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def forward_branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.forward_branch(x) + self.shortcut(x))

    def declared_macs(self, h_in: int, w_in: int) -> int:
        h, w = -(-h_in // self.stride), -(-w_in // self.stride)
        return conv_macs(self.conv1, h, w) + conv_macs(self.conv2, h, w)


class CifarResNet(StaticNet):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: int | None = None,
                 zero_init_residual: bool = False, input_hw: int = 32):
        super().__init__()
        if isinstance(input_hw, bool) or not isinstance(input_hw, int) or input_hw < 1:
            raise ValueError(f"input_hw is the nominal input height and width, a positive int, got {input_hw!r}")
        self.input_size = (in_chans, input_hw, input_hw)  # nominal: MACs are counted at each input's size
        if blocks_per_stage is None:
            if (depth - 2) % 6 != 0 or depth < 8:
                raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
            blocks_per_stage = (depth - 2) // 6
        self.depth, self.widths, self.num_classes = depth, tuple(widths), num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, w, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool = False):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Optionally zero-init the last BN of each residual branch (every block starts as
        # identity; Goyal et al. 2017). Off by default: with the short CIFAR-10 schedules it
        # slowed early training (measurement in docs/training.md).
        for m in self.modules():
            if zero_init_residual and isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def blocks(self) -> list[BasicBlock]:
        return [b for s in self.stages for b in s]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for s in self.stages:
            x = s(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def declared_macs(self, input_size: tuple[int, int, int]) -> int:
        """Analytic MACs per sample, derived from layer shapes (tested against FlopCounterMode)."""
        _, h, w = input_size
        total = conv_macs(self.stem[0], h, w)
        for b in self.blocks():
            total += b.declared_macs(h, w)
            h, w = -(-h // b.stride), -(-w // b.stride)
        return total + self.fc.in_features * self.fc.out_features


def _resnet(depth: int, **kw) -> CifarResNet:
    return CifarResNet(depth=depth, **kw)


@register_model(family="resnet")
def resnet8(**kw):
    return _resnet(8, **kw)


@register_model(family="resnet")
def resnet14(**kw):
    return _resnet(14, **kw)


@register_model(family="resnet")
def resnet20(**kw):
    return _resnet(20, **kw)


@register_model(family="resnet")
def resnet32(**kw):
    return _resnet(32, **kw)


@register_model(family="resnet")
def resnet44(**kw):
    return _resnet(44, **kw)


@register_model(family="resnet")
def resnet56(**kw):
    return _resnet(56, **kw)


@register_model(family="resnet")
def resnet110(**kw):
    return _resnet(110, **kw)


@register_model(family="resnet")
def test_resnet(**kw):
    """Tiny variant for tests and the offline demo: one block per stage, widths (4, 8, 16),
    nominally for 8x8 inputs like the other tiny variants (it takes any size)."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return CifarResNet(depth=8, **kw)
