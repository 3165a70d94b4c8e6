"""The convolutions on the grid's edges, and channel slicing for pruned copies."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class EdgeBlock(nn.Sequential):
    """The plain grid's edge: conv3x3-BN-ReLU; ``[0]`` is the conv, ``[1]`` the BN whose
    ``|gamma|`` ranks the output channels for channel pruning."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResEdgeBlock(nn.Module):
    """The residual grid's edge: conv3x3-BN-ReLU-conv3x3-BN (a ResNet basic block's branch;
    the node adds the identity and applies the ReLU). ``mid`` is the inner width, the one
    channel pruning thins, so that node widths (and the identities) stay whole."""

    def __init__(self, cin: int, cout: int, stride: int, mid: int | None = None):
        super().__init__()
        mid = cout if mid is None else mid
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, H, W) -> (B, cout, H / stride, W / stride)
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def copy_bn_channels(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx) -> None:
    """``dst`` takes ``src``'s scales, shifts and running statistics at channels ``idx``."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data = getattr(src, name).data[idx].clone()
