"""The static family: one network, one operating point ('full'), constant MACs per input.

:class:`StaticNet` is the contract for a network class that is static by design (the CIFAR
ResNets inherit it); :class:`StaticModel` wraps any other ``nn.Module``.
Calibration measures the single point; ``export`` returns a copy of the network itself."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import Tensor

from anycost.core import DynamicModel, DynamicOutput, OperatingPoint
from anycost.cost import module_macs


class StaticNet(DynamicModel):
    """A network that runs the same layers for every input. Its MACs are measured at each
    input's own size (``any_input_hw``): ``input_size`` is the nominal size, where calibrated
    points were measured, and fixes only the number of channels."""

    family = "static"
    any_input_hw = True

    def check_op(self, op: OperatingPoint) -> OperatingPoint:
        if op.params:
            raise ValueError(f"a static network has one operating point ('full') without params, got {dict(op.params)}")
        return op

    def macs_at(self, input_size: tuple[int, ...]) -> int:
        """Per-input MACs at ``input_size`` (C, H, W), measured once per size (fully convolutional)."""
        cache = self.__dict__.setdefault("_anycost_macs", {})
        key = tuple(int(v) for v in input_size)
        if key not in cache:
            try:
                cache[key] = module_macs(self, key)
            except RuntimeError as e:  # a layer that cannot take this size (e.g. a fixed-size linear)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"{type(self).__name__} cannot take inputs of size {key} ({first:.120})") from None
        return cache[key]

    def is_static(self, op=None) -> bool:
        return True

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:
        macs = float(self.macs_at(tuple(x.shape[1:])))
        return DynamicOutput(self(x), torch.full((x.shape[0],), macs, dtype=torch.float64, device=x.device))

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:
        self._export_op(op)
        return plain_copy(self)


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode without anycost's Python-side state (shipped points, caches),
    which TorchScript cannot type."""
    net = copy.deepcopy(module).eval()
    for m in net.modules():
        for k in [k for k in m.__dict__ if k.startswith("_anycost")]:
            del m.__dict__[k]
    return net


class StaticModel(StaticNet):
    """Any plain classifier under the contract (one point, constant MACs at ``input_size``);
    its export is the wrapped network itself."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self.input_size = tuple(input_size)
        self.macs_per_sample = self.macs_at(self.input_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def export(self, op: OperatingPoint | str | None = None) -> nn.Module:
        self._export_op(op)
        return plain_copy(self.model)


def as_dynamic(model: nn.Module, input_size: tuple[int, int, int]) -> DynamicModel:
    """The model itself if it implements the contract; else a StaticModel around it."""
    return model if isinstance(model, DynamicModel) else StaticModel(model, input_size)
