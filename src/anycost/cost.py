"""Cost accounting. The unit is MACs (multiply-accumulates) per input; FLOPs = 2 x MACs.

Costs are never typed in by hand: each unit's cost (a block, an exit head, a gate, a
policy network) is measured from the live module with ``torch.utils.flop_counter``'s
FlopCounterMode at that unit's input shape, divided by 2 (it counts 2 per MAC). Like
FlopCounterMode, we count what executes as conv/matmul; BN, ReLU, pooling, softmax and
sorting cost 0.

A dynamic model answers ``infer(x, op) -> DynamicOutput`` with the MACs it really spent on
each input; :func:`check_reported_macs` runs it under FlopCounterMode and compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from anycost.core import DynamicOutput

__all__ = ["DynamicOutput", "count_macs", "module_macs", "check_reported_macs", "MacsCheck"]


def count_macs(fn, *args, **kwargs) -> int:
    """Total MACs that ``fn(*args, **kwargs)`` executes (whole batch), from FlopCounterMode / 2."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn(*args, **kwargs)
    return int(fc.get_total_flops()) // 2


def module_macs(module: nn.Module, input_shape: tuple[int, ...], device=None, dtype=torch.float32) -> int:
    """Per-sample MACs of ``module`` at ``input_shape`` (no batch dim), measured at batch 1 in eval mode."""
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else "cpu"
    was_training = module.training
    module.eval()
    try:
        return count_macs(module, torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        module.train(was_training)


@dataclass
class MacsCheck:
    counted: int  # FlopCounterMode total / 2 over the batch
    reported: float  # sum of the model's per-sample MACs
    rel_err: float
    ok: bool

    def __str__(self) -> str:
        return f"counted {self.counted:,} MACs, reported {self.reported:,.0f} (rel. error {self.rel_err:.2%})"


def check_reported_macs(model: nn.Module, x: Tensor, op=None, rtol: float = 0.01) -> MacsCheck:
    """Run a batch through ``model.infer`` with real routing under FlopCounterMode: the
    counted total / 2 must equal the sum of the reported per-sample MACs within ``rtol``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            out = model.infer(x, op)
    finally:
        model.train(was_training)
    counted = int(fc.get_total_flops()) // 2
    reported = float(out.macs.sum())
    rel = abs(counted - reported) / max(counted, 1)
    return MacsCheck(counted, reported, rel, rel <= rtol)
