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

__all__ = ["DynamicOutput", "count_macs", "module_macs", "trainable_macs", "check_reported_macs", "MacsCheck"]


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


def trainable_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Per-sample forward MACs of the layers that hold trainable parameters (any parameter of
    their own with ``requires_grad``), at ``input_shape``, in eval mode: the part of a
    forward pass whose backward a training step pays for (a frozen backbone under trained
    heads costs one forward pass and no backward)."""
    p = next(module.parameters(), None)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        module.train(was_training)
    # FlopCounterMode totals each module with its descendants, keyed "<class>.<path>"
    totals = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    root = type(module).__name__

    def below(key: str, m: nn.Module) -> int:  # flops of the called modules under m (containers are never called)
        return sum(totals[f"{key}.{c}"] if f"{key}.{c}" in totals else below(f"{key}.{c}", child)
                   for c, child in m.named_children())

    flops = 0
    for name, m in module.named_modules():
        key = f"{root}.{name}" if name else root
        if key in totals and any(q.requires_grad for q in m.parameters(recurse=False)):
            flops += totals[key] - below(key, m)
    return int(flops) // 2


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
