"""Multi-exit CIFAR ResNets (Bolukbasi et al., ICML 2017, scheme (a): adaptive early exit).

Our design where the paper's abstract is silent:
* exits after each stage (``exits="stage"``), every k blocks (``exits="every2"``), or both
  (``"stage+every2"``); the backbone's own pooling + linear layer is the last exit;
* an exit head is conv3x3 (stride 2 while the map is 16x16 or larger) -> BN -> ReLU ->
  global average pooling -> linear: a few percent of the backbone's MACs each;
* ``infer(x, op)`` really exits: after each exit the policy decides, the inputs that stop
  leave the batch (``BatchRouter``), and only the rest run on. Per-input MACs are the
  blocks and heads an input went through plus its policy decisions, each unit's cost
  measured once from the live module with FlopCounterMode;
* training: ``mode="joint"`` (weighted multi-exit cross-entropy, later exits weigh more)
  or ``mode="heads"``: the paper's "leave the base network intact" two-stage setting, where
  the backbone, its BatchNorm statistics included, is frozen and only the heads learn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.cost import DynamicOutput, module_macs
from anycost.eval import OperatingPoint
from anycost.policies import NUM_FEATURES, ExitCache, LinearGate, confidence, features
from anycost.routing import BatchRouter

from .registry import register_model
from .resnet_cifar import CifarResNet


class ExitHead(nn.Module):
    def __init__(self, in_ch: int, num_classes: int, spatial: int):
        super().__init__()
        stride = 2 if spatial >= 16 else 1
        self.conv = nn.Conv2d(in_ch, in_ch, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(h))), 1), 1))


def _exit_positions(spec: str, blocks_per_stage: int, n_stages: int) -> list[int]:
    """Block indices (0-based, global) after which an intermediate exit sits."""
    total = blocks_per_stage * n_stages
    pos = set()
    for part in spec.split("+"):
        if part == "stage":
            pos |= {blocks_per_stage * (s + 1) - 1 for s in range(n_stages - 1)}
        elif part.startswith("every"):
            k = int(part[5:])
            pos |= set(range(k - 1, total - 1, k))
        elif part:
            raise ValueError(f"unknown exit placement '{part}' (stage, everyK, or both joined by '+')")
    return sorted(p for p in pos if p < total - 1)


class MultiExitResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64),
                 exits: str = "stage", exit_weights: list[float] | None = None, mode: str = "joint",
                 input_hw: int = 32):
        super().__init__()
        self.backbone = CifarResNet(depth, num_classes, in_chans, widths)
        blocks = self.backbone.blocks()
        self.blocks_list = blocks
        self.exit_after = _exit_positions(exits, len(blocks) // len(widths), len(widths))
        self.num_classes, self.in_chans, self.input_hw = num_classes, in_chans, input_hw
        # shapes along the backbone, to build heads and measure unit costs
        shapes, c, h = [], widths[0], input_hw
        for b in blocks:
            h = -(-h // b.stride)
            shapes.append((b.planes, h, h))
        self.heads = nn.ModuleList(ExitHead(shapes[p][0], num_classes, shapes[p][1]) for p in self.exit_after)
        self.num_exits = len(self.exit_after) + 1
        w = exit_weights or [0.5 + 0.5 * (i + 1) / self.num_exits for i in range(self.num_exits)]
        if len(w) != self.num_exits:
            raise ValueError(f"exit_weights needs {self.num_exits} values, got {len(w)}")
        self.exit_weights = [float(v) for v in w]
        self.set_mode(mode)
        self.measure_costs()

    # ----------------------------------------------------------------- costs

    def measure_costs(self) -> None:
        """Unit costs from the live modules (FlopCounterMode / 2), per input."""
        hw = self.input_hw
        self.stem_macs = module_macs(self.backbone.stem, (self.in_chans, hw, hw))
        self.block_macs, self.head_macs = [], []
        c, h = self.backbone.widths[0], hw
        for b in self.blocks_list:
            self.block_macs.append(module_macs(b, (c, h, h)))
            c, h = b.planes, -(-h // b.stride)
            if len(self.block_macs) - 1 in self.exit_after:
                self.head_macs.append(module_macs(self.heads[len(self.head_macs)], (c, h, h)))
        self.final_head_macs = module_macs(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.backbone.fc), (c, h, h))
        # cumulative MACs to stop at each exit (heads of earlier exits included), no policy cost
        cum, out, hi = self.stem_macs, [], 0
        for i, bm in enumerate(self.block_macs):
            cum += bm
            if i in self.exit_after:
                out.append(cum + self.head_macs[hi])
                cum += self.head_macs[hi]
                hi += 1
        out.append(cum + self.final_head_macs)
        self.exit_macs = out

    def declared_macs(self, input_size) -> int:
        """MACs of ``forward`` (every exit computed), summed from the measured unit costs."""
        if tuple(input_size) != (self.in_chans, self.input_hw, self.input_hw):
            raise ValueError(f"costs were measured for {(self.in_chans, self.input_hw, self.input_hw)}, not {tuple(input_size)}")
        return self.exit_macs[-1]

    # ----------------------------------------------------------------- training

    def set_mode(self, mode: str) -> None:
        if mode not in ("joint", "heads"):
            raise ValueError(f"mode must be 'joint' or 'heads', got '{mode}'")
        self.mode = mode
        for p in self.backbone.parameters():
            p.requires_grad_(mode == "joint")
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "mode", "joint") == "heads":
            self.backbone.eval()  # frozen backbone: BN statistics stay as trained
        return self

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Logits at every exit, for the whole batch (training and caching)."""
        outs = []
        h = self.backbone.stem(x)
        hi = 0
        for i, b in enumerate(self.blocks_list):
            h = b(h)
            if i in self.exit_after:
                outs.append(self.heads[hi](h))
                hi += 1
        outs.append(self.backbone.forward_head(h))
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]

    def training_loss(self, x: Tensor, y: Tensor, criterion, progress: float = 0.0):
        if self.mode == "heads":
            with torch.no_grad():
                feats = self._backbone_taps(x)
            outs = [head(f) for head, f in zip(self.heads, feats[:-1])] + [self.backbone.forward_head(feats[-1])]
        else:
            outs = self.forward_all(x)
        w = self.exit_weights
        loss = sum(wi * criterion(o, y) for wi, o in zip(w, outs)) / sum(w)
        return loss, outs[-1]

    def _backbone_taps(self, x: Tensor) -> list[Tensor]:
        taps, h = [], self.backbone.stem(x)
        for i, b in enumerate(self.blocks_list):
            h = b(h)
            if i in self.exit_after:
                taps.append(h)
        taps.append(h)
        return taps

    # ----------------------------------------------------------------- inference

    def operating_points(self) -> list[OperatingPoint]:
        return [OperatingPoint(f"exit{e}", {"policy": "fixed", "exit": e}) for e in range(self.num_exits)]

    def _stops(self, z: Tensor, d: int, op: OperatingPoint) -> tuple[Tensor, int]:
        """(A,) bool stop decisions at decision point d and the MACs each decision cost."""
        kind = op.get("policy", "fixed")
        if kind == "threshold":
            return confidence(z, op.get("metric", "maxprob")) >= op["threshold"], 0
        if kind == "fixed":
            return torch.full((z.shape[0],), d == int(op["exit"]), dtype=torch.bool, device=z.device), 0
        if kind == "learned":
            w, b = LinearGate.folded(op["gates"][d])
            score = features(z) @ w.to(z.device)[:, None]  # (A, F) @ (F, 1): F MACs per input, counted
            return score.squeeze(1) + b > 0, NUM_FEATURES
        raise ValueError(f"unknown policy '{kind}' (threshold, learned or fixed)")

    @torch.no_grad()
    def infer(self, x: Tensor, op: OperatingPoint | None = None) -> DynamicOutput:
        op = op or OperatingPoint("full", {"policy": "fixed", "exit": self.num_exits - 1})
        n = x.shape[0]
        router = BatchRouter(n, x.device)
        logits = torch.empty(n, self.num_classes, device=x.device)
        macs = torch.zeros(n, dtype=torch.float64, device=x.device)
        path = torch.full((n,), self.num_exits - 1, dtype=torch.long, device=x.device)
        spent = float(self.stem_macs)
        h = self.backbone.stem(x)
        hi = 0
        for i, b in enumerate(self.blocks_list):
            h = b(h)
            spent += self.block_macs[i]
            if i not in self.exit_after:
                continue
            z = self.heads[hi](h)
            spent += self.head_macs[hi]
            stop, dec_macs = self._stops(z, hi, op)
            spent += dec_macs
            rows, pos = router.leave(stop)
            logits[rows] = z[pos].float()
            macs[rows] = spent
            path[rows] = hi
            (h,) = router.keep(stop, h)
            hi += 1
            if router.active == 0:
                return DynamicOutput(logits, macs, path, self.num_exits)
        z = self.backbone.forward_head(h)
        logits[router.rows] = z.float()
        macs[router.rows] = spent + self.final_head_macs
        return DynamicOutput(logits, macs, path, self.num_exits)

    @torch.no_grad()
    def cache_outputs(self, loader, split: str | None = None) -> ExitCache:
        """Every exit's logits over a loader (no augmentation), for the policies."""
        was = self.training
        self.eval()
        outs, labels = [], []
        for x, y in loader:
            outs.append(torch.stack([o.float() for o in self.forward_all(x)]).cpu())
            labels.append(y.cpu())
        self.train(was)
        return ExitCache(torch.cat(outs, 1), torch.cat(labels), torch.tensor(self.exit_macs, dtype=torch.float64), split=split)


def _ee(depth, **kw):
    return MultiExitResNet(depth=depth, **kw)


@register_model(family="early_exit")
def ee_resnet20(**kw):
    return _ee(20, **kw)


@register_model(family="early_exit")
def ee_resnet32(**kw):
    return _ee(32, **kw)


@register_model(family="early_exit")
def ee_resnet56(**kw):
    return _ee(56, **kw)


@register_model(family="early_exit")
def ee_resnet110(**kw):
    return _ee(110, **kw)


@register_model(family="early_exit")
def test_ee_resnet(**kw):
    """Tiny multi-exit variant (8x8 inputs, exits after stages 1 and 2)."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return MultiExitResNet(depth=8, **kw)
