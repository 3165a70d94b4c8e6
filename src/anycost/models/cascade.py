"""Network selection (Bolukbasi et al., ICML 2017, scheme (b)): a cascade over independently
trained classifiers that share a label space, left intact. Network 0 runs on every input;
its policy stops, sends the input to network 1, or (learned policies with a jump gate)
jumps straight to the last network. Later networks stop or go on. Inputs really leave the
batch where they stop (:class:`~anycost.models.exits.ExitRuntime`, the network ``export``
returns); per-input MACs are the networks each input ran plus the policy's decisions (F MACs
per learned decision, 0 for thresholds). The ``fixed`` point for member e runs that member
alone."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from anycost.core import OperatingPoint
from anycost.cost import module_macs

from .exits import ExitPolicyModel, ExitRuntime, ExitStage, policy_kwargs
from .registry import create_model, register_model
from .resnet_cifar import CifarResNet

__all__ = ["Cascade", "cascade", "test_cascade"]


class Cascade(ExitPolicyModel):
    family = "cascade"
    supports_jump = True

    def __init__(self, nets: list[nn.Module], input_size: tuple[int, int, int], names: list[str] | None = None):
        super().__init__()
        if len(nets) < 2:
            raise ValueError("a cascade needs at least two networks")
        self.nets = nn.ModuleList(nets)
        self.input_size = tuple(input_size)
        self.names = list(names or [getattr(n, "model_name", f"net{i}") for i, n in enumerate(nets)])
        if len(self.names) != len(nets):
            raise ValueError(f"{len(nets)} networks but {len(self.names)} names")
        self.net_macs = [module_macs(n, self.input_size) for n in nets]
        self.num_exits = len(nets)
        self.num_classes = self._shared_classes()

    def _shared_classes(self) -> int:
        """Members must share a label space: their logits widths must agree."""
        dev = next(self.nets[0].parameters()).device
        was = [n.training for n in self.nets]
        with torch.no_grad():
            widths = [n.eval()(torch.zeros(1, *self.input_size, device=dev)).shape[-1] for n in self.nets]
        for n, w in zip(self.nets, was):
            n.train(w)
        if len(set(widths)) != 1:
            raise ValueError(f"cascade members disagree on the number of classes: {dict(zip(self.names, widths))}")
        return int(widths[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.nets[-1](x)

    # ------------------------------------------------------------------ contract

    def exit_name(self, e: int) -> str:
        return f"only {self.names[e]}"

    def default_op(self) -> OperatingPoint:
        """The most expensive member alone."""
        return self.fixed_op(max(range(self.num_exits), key=lambda e: self.net_macs[e]))

    def exit_costs(self) -> Tensor:  # (E,) networks 0..e run
        return torch.tensor(self.net_macs, dtype=torch.float64).cumsum(0)

    def jump_costs(self) -> Tensor:  # (E,) network 0, then straight to e
        m = torch.tensor(self.net_macs, dtype=torch.float64)
        return m[0] + m

    def fixed_macs(self, e: int) -> int:
        return self.net_macs[e]

    def exit_logits(self, x: Tensor) -> Tensor:  # (E, B, K)
        return torch.stack([n(x).float() for n in self.nets])

    def runtime(self, op: OperatingPoint) -> ExitRuntime:
        """The members as stages on the input itself (shared modules, not copies)."""
        if op["policy"] == "fixed":
            e = int(op["exit"])
            return ExitRuntime(nn.Identity(), [], self.nets[e], self.num_classes, exit_index=e)
        stages = [ExitStage(nn.Identity(), n) for n in self.nets[:-1]]
        return ExitRuntime(nn.Identity(), stages, self.nets[-1], self.num_classes, **policy_kwargs(op))


@register_model(family="cascade")
def cascade(members: list[str] | tuple[str, ...] = ("resnet8", "resnet20"), input_hw: int = 32, in_chans: int = 3,
            **kw) -> Cascade:
    """A cascade over registered architectures (cheapest first), each built with ``kw``."""
    if isinstance(members, str) or len(members) < 2:
        raise ValueError(f"a cascade needs a list of at least two member architectures, got {members!r}")
    nets = [create_model(m, in_chans=in_chans, **kw) for m in members]
    return Cascade(nets, (in_chans, input_hw, input_hw), list(members))


@register_model(family="cascade")
def test_cascade(num_classes: int = 10, in_chans: int = 3, input_hw: int = 8) -> Cascade:
    """Tiny two-member cascade for tests: a narrow ResNet-8, then a wider ResNet-14."""
    nets = [CifarResNet(8, num_classes, in_chans, (4, 8, 16)), CifarResNet(14, num_classes, in_chans, (8, 16, 32))]
    return Cascade(nets, (in_chans, input_hw, input_hw), ["test_resnet8w4", "test_resnet14w8"])
