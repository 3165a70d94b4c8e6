"""Network selection (Bolukbasi et al., ICML 2017, scheme (b)): a cascade over independently
trained classifiers that share a label space, left intact. Network 0 runs on every input;
its policy stops, sends the input to network 1, or (learned policies with a jump gate)
jumps straight to the last network. Later networks stop or go on. Inputs really leave the
batch where they stop (``BatchRouter``); per-input MACs are the networks each input ran
plus the policy's decisions (F MACs per learned decision, 0 for thresholds)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from anycost.cost import DynamicOutput, module_macs
from anycost.eval import OperatingPoint
from anycost.policies import NUM_FEATURES, ExitCache, decide, gate_decide
from anycost.routing import BatchRouter


class Cascade(nn.Module):
    def __init__(self, nets: list[nn.Module], input_size: tuple[int, int, int], names: list[str] | None = None):
        super().__init__()
        if len(nets) < 2:
            raise ValueError("a cascade needs at least two networks")
        self.nets = nn.ModuleList(nets)
        self.input_size = tuple(input_size)
        self.names = names or [getattr(n, "model_name", f"net{i}") for i, n in enumerate(nets)]
        self.net_macs = [module_macs(n, self.input_size) for n in nets]
        self.num_exits = len(nets)
        self.num_classes = None

    def forward(self, x: Tensor) -> Tensor:
        return self.nets[-1](x)

    def operating_points(self) -> list[OperatingPoint]:
        return [OperatingPoint(f"only {n}", {"policy": "single", "net": i}) for i, n in enumerate(self.names)]

    @torch.no_grad()
    def cache_outputs(self, loader, split: str | None = None) -> ExitCache:
        self.eval()
        outs, labels = [], []
        for x, y in loader:
            outs.append(torch.stack([n(x).float() for n in self.nets]).cpu())
            labels.append(y.cpu())
        m = torch.tensor(self.net_macs, dtype=torch.float64)
        return ExitCache(torch.cat(outs, 1), torch.cat(labels), m.cumsum(0), m[0] + m, split=split)

    @torch.no_grad()
    def infer(self, x: Tensor, op: OperatingPoint | None = None) -> DynamicOutput:
        op = op or OperatingPoint("largest", {"policy": "single", "net": self.num_exits - 1})
        kind = op.get("policy")
        n, last = x.shape[0], self.num_exits - 1
        if kind == "single":
            i = int(op["net"])
            z = self.nets[i](x).float()
            return DynamicOutput(z, torch.full((n,), float(self.net_macs[i]), dtype=torch.float64, device=x.device),
                                 torch.full((n,), i, dtype=torch.long, device=x.device), self.num_exits)
        if kind not in ("threshold", "learned", "fixed"):
            raise ValueError(f"unknown cascade policy '{kind}' (single, fixed, threshold or learned)")
        router = BatchRouter(n, x.device)
        logits, macs = None, torch.zeros(n, dtype=torch.float64, device=x.device)
        path = torch.full((n,), last, dtype=torch.long, device=x.device)
        xa, spent = x, 0.0
        for d in range(self.num_exits):
            z = self.nets[d](xa).float()
            if logits is None:
                logits = torch.empty(n, z.shape[1], device=x.device)
            spent += self.net_macs[d]
            if d == last:
                logits[router.rows], macs[router.rows] = z, spent
                break
            stop, dec_macs = decide(z, d, op)
            spent += dec_macs
            rows, pos = router.leave(stop)
            logits[rows], macs[rows], path[rows] = z[pos], spent, d
            (xa, z) = router.keep(stop, xa, z)
            if d == 0 and kind == "learned" and op.get("jump_gate") and router.active:
                jump = gate_decide(z, op["jump_gate"])
                spent += NUM_FEATURES
                rows, pos = router.leave(jump)
                if rows.numel():
                    logits[rows] = self.nets[last](xa[pos]).float()
                    macs[rows] = spent + self.net_macs[last]
                (xa,) = router.keep(jump, xa)
            if router.active == 0:
                break
        return DynamicOutput(logits, macs, path, self.num_exits)
