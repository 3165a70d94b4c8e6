"""Multi-exit CIFAR ResNets (Bolukbasi et al., ICML 2017, scheme (a): adaptive early exit).

Our design where the paper's abstract is silent:
* exits after each stage (``exits="stage"``), every k blocks (``exits="every2"``), after
  named block indices (``"1+3"``), or any union (``"stage+1+3"``); the backbone's own
  pooling + linear layer is the last exit;
* an exit head is conv3x3 (stride 2 while the map is 16x16 or larger) -> BN -> ReLU ->
  global average pooling -> linear: a few percent of the backbone's MACs each
  (``head="light"``). ``head="branch"`` is a BranchyNet-style side branch instead: stride-2
  conv-BN-ReLU layers that double the channels until the map has the last stage's size
  and width, one more conv-BN-ReLU there, then pooling -> linear. An exit early in the
  backbone then sees features processed about as deeply as a small static network's,
  for about one residual block's MACs (why: a light head on early, frozen features is
  right too rarely for many inputs to exit there; results in docs/families/early-exit.md);
* ``infer(x, op)`` really exits: after each exit the policy decides, the inputs that stop
  leave the batch, and only the rest run on (:class:`~anycost.models.exits.ExitRuntime`,
  the same network ``export(op)`` returns). Per-input MACs are the blocks and heads an
  input went through plus its policy decisions, each unit's cost measured once from the
  live module with FlopCounterMode. A ``fixed`` exit is the backbone cut there, without
  the earlier exits' heads;
* training: ``mode="joint"`` (weighted sum of the exits' cross-entropies, later exits weigh
  more, the last weighs 1 as in a static network;
  optionally ``distill=alpha``: each intermediate exit also matches the last exit's
  softened, detached prediction, a self-distillation that lifts early exits without
  pulling the last exit towards them) or ``mode="heads"``: the paper's "leave the base network intact" two-stage setting, where
  the backbone, its BatchNorm statistics included, is frozen and only the heads learn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from anycost.core import DynamicOutput, OperatingPoint
from anycost.cost import module_macs
from anycost.losses import distillation_loss
from anycost.policies import decide
from anycost.routing import BatchRouter

from .exits import ExitPolicyModel, ExitRuntime, ExitStage, policy_kwargs
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


class BranchHead(nn.Module):
    """Side branch from a (in_ch, spatial, spatial) map to the last stage's (out_ch, out_hw):
    stride-2 conv-BN-ReLU steps that double the channels (capped at out_ch), then one
    stride-1 conv-BN-ReLU, global average pooling and a linear classifier."""

    def __init__(self, in_ch: int, num_classes: int, spatial: int, out_ch: int, out_hw: int):
        super().__init__()
        layers, c, h = [], in_ch, spatial
        while h > out_hw:
            nc = min(2 * c, out_ch)
            layers += [nn.Conv2d(c, nc, 3, 2, 1, bias=False), nn.BatchNorm2d(nc), nn.ReLU(inplace=True)]
            c, h = nc, -(-h // 2)
        layers += [nn.Conv2d(c, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(out_ch, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.body(h), 1), 1))


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
        elif part.isdigit():
            if int(part) >= total - 1:
                raise ValueError(f"exit after block {part}: blocks are numbered 0..{total - 2} "
                                 f"(the last block feeds the final exit)")
            pos.add(int(part))
        elif part:
            raise ValueError(f"unknown exit placement '{part}' (stage, everyK, a block index, joined by '+')")
    return sorted(p for p in pos if p < total - 1)


class PoolHead(nn.Module):
    """The backbone's own last exit: global average pooling, then its linear layer."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = fc

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class _MultiExitBase(ExitPolicyModel):
    """What multi-exit models share: training modes and the early-exit contract."""

    family = "early_exit"

    def _weighted_loss(self, outs: list[Tensor], y: Tensor, criterion) -> Tensor:
        losses = [criterion(o, y) for o in outs]
        alpha, t = getattr(self, "distill", 0.0), getattr(self, "distill_temp", 1.0)
        if alpha > 0:
            # the teacher is detached: distillation trains the early exits only
            teacher = outs[-1].detach()  # (B, classes)
            for i, o in enumerate(outs[:-1]):
                losses[i] = (1 - alpha) * losses[i] + alpha * distillation_loss(o, teacher, t)
        # a plain weighted sum, not a weighted mean: the last exit's loss keeps the weight (1)
        # it has in a static network, so the recipe's learning rate and weight decay mean the
        # same. (Dividing by sum(w), about 4, shrinks the backbone's data gradient by that
        # factor against a fixed weight decay, and a joint ResNet-20 underfit; see
        # docs/families/early-exit.md.)
        return sum(wi * li for wi, li in zip(self.exit_weights, losses))

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


class MultiExitResNet(_MultiExitBase):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64),
                 exits: str = "stage", exit_weights: list[float] | None = None, mode: str = "joint",
                 input_hw: int = 32, distill: float = 0.0, distill_temp: float = 3.0, head: str = "light"):
        super().__init__()
        if head not in ("light", "branch"):
            raise ValueError(f"head must be 'light' or 'branch', got '{head}'")
        if not 0.0 <= distill <= 1.0 or distill_temp <= 0:
            raise ValueError(f"distill must lie in [0, 1] and distill_temp be > 0, got {distill}, {distill_temp}")
        self.distill, self.distill_temp = float(distill), float(distill_temp)
        self.backbone = CifarResNet(depth, num_classes, in_chans, widths)
        blocks = self.backbone.blocks()
        self.blocks_list = blocks
        self.exit_after = _exit_positions(exits, len(blocks) // len(widths), len(widths))
        self.num_classes, self.in_chans, self.input_hw = num_classes, in_chans, input_hw
        self.input_size = (in_chans, input_hw, input_hw)
        # shapes along the backbone, to build heads and measure unit costs
        shapes, c, h = [], widths[0], input_hw
        for b in blocks:
            h = -(-h // b.stride)
            shapes.append((b.planes, h, h))
        if head == "light":
            self.heads = nn.ModuleList(ExitHead(shapes[p][0], num_classes, shapes[p][1]) for p in self.exit_after)
        else:
            last_c, last_hw = shapes[-1][0], shapes[-1][1]
            self.heads = nn.ModuleList(BranchHead(shapes[p][0], num_classes, shapes[p][1], last_c, last_hw)
                                       for p in self.exit_after)
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
        return self._weighted_loss(outs, y, criterion), outs[-1]

    def _backbone_taps(self, x: Tensor) -> list[Tensor]:
        taps, h = [], self.backbone.stem(x)
        for i, b in enumerate(self.blocks_list):
            h = b(h)
            if i in self.exit_after:
                taps.append(h)
        taps.append(h)
        return taps

    # ----------------------------------------------------------------- contract

    def exit_costs(self) -> Tensor:
        return torch.tensor(self.exit_macs, dtype=torch.float64)

    def jump_costs(self) -> None:
        return None

    def fixed_macs(self, e: int) -> int:
        if e == self.num_exits - 1:
            return self.stem_macs + sum(self.block_macs) + self.final_head_macs
        return self.stem_macs + sum(self.block_macs[: self.exit_after[e] + 1]) + self.head_macs[e]

    def exit_logits(self, x: Tensor) -> Tensor:  # (E, B, K)
        return torch.stack([o.float() for o in self.forward_all(x)])

    def runtime(self, op: OperatingPoint) -> ExitRuntime:
        """The backbone cut into stages at the exits (shared modules, not copies)."""
        stem, final = self.backbone.stem, PoolHead(self.backbone.fc)
        if op["policy"] == "fixed":  # exit e alone: blocks up to it and its head, no earlier heads
            e = int(op["exit"])
            cut = len(self.blocks_list) if e == self.num_exits - 1 else self.exit_after[e] + 1
            head = final if e == self.num_exits - 1 else self.heads[e]
            return ExitRuntime(stem, [], nn.Sequential(*self.blocks_list[:cut], head), self.num_classes, exit_index=e)
        bounds = [0] + [p + 1 for p in self.exit_after]
        stages = [ExitStage(nn.Sequential(*self.blocks_list[a:b]), h) for a, b, h in zip(bounds, bounds[1:], self.heads)]
        tail = nn.Sequential(*self.blocks_list[bounds[-1]:], final)
        return ExitRuntime(stem, stages, tail, self.num_classes, **policy_kwargs(op))


class _AllExited(Exception):
    pass


def prefix_macs(backbone: nn.Module, layer: nn.Module, x: Tensor) -> int:
    """MACs the backbone's own forward spends until ``layer`` has produced its output."""
    from torch.utils.flop_counter import FlopCounterMode

    def stop(*_):
        raise _AllExited

    h = layer.register_forward_hook(stop)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            try:
                backbone(x)
            except _AllExited:
                pass
    finally:
        h.remove()
    return int(fc.get_total_flops()) // 2


class ExitWrapper(_MultiExitBase):
    """Early exits at named layers of any backbone (e.g. torchvision ``resnet18`` at
    'layer1', 'layer2', 'layer3') without rewriting its forward.

    Forward hooks on the named layers capture their outputs for training and caching. At
    inference the same hooks evaluate each exit and *return only the rows that go on*, so
    the backbone's unmodified forward continues on a smaller batch; once no row is left it
    stops. This needs a backbone whose forward treats batch rows independently (CNNs in
    eval mode do). The backbone's own output is the last exit. ``mode="heads"`` freezes the
    backbone, BN statistics included (the paper's two-stage setting)."""

    def __init__(self, backbone: nn.Module, exit_layers: list[str], num_classes: int,
                 input_size: tuple[int, int, int], mode: str = "heads"):
        super().__init__()
        self.backbone = backbone
        mods = dict(backbone.named_modules())
        missing = [n for n in exit_layers if n not in mods]
        if missing:
            raise KeyError(f"backbone has no layer named {missing[0]!r}")
        self.exit_layers = list(exit_layers)
        self.input_size = tuple(input_size)
        self.num_classes = num_classes
        self.num_exits = len(exit_layers) + 1
        self._mode_hooks: list = []
        x = torch.zeros(1, *input_size)
        was = backbone.training
        backbone.eval()
        shapes = self._capture(x)[0]
        self.heads = nn.ModuleList(ExitHead(s.shape[1], num_classes, s.shape[-1]) for s in shapes)
        self.exit_weights = [1.0] * self.num_exits
        # unit costs, measured: backbone prefix up to each exit, each head, the whole backbone
        self.prefix = [prefix_macs(backbone, mods[n], x) for n in exit_layers]
        self.head_macs = [module_macs(h, tuple(s.shape[1:])) for h, s in zip(self.heads, shapes)]
        self.full_macs = module_macs(backbone, self.input_size)
        backbone.train(was)
        self.exit_macs = [p + sum(self.head_macs[: i + 1]) for i, p in enumerate(self.prefix)]
        self.exit_macs.append(self.full_macs + sum(self.head_macs))
        self.set_mode(mode)

    def _capture(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        feats, mods = [], dict(self.backbone.named_modules())
        hooks = [mods[n].register_forward_hook(lambda m, i, o: feats.append(o)) for n in self.exit_layers]
        try:
            out = self.backbone(x)
        finally:
            for h in hooks:
                h.remove()
        return feats, out

    def forward_all(self, x: Tensor) -> list[Tensor]:
        feats, out = self._capture(x)
        return [h(f) for h, f in zip(self.heads, feats)] + [out]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]

    def declared_macs(self, input_size) -> int:
        return self.exit_macs[-1]

    def training_loss(self, x: Tensor, y: Tensor, criterion, progress: float = 0.0):
        if self.mode == "heads":
            with torch.no_grad():
                feats, out = self._capture(x)
        else:
            feats, out = self._capture(x)
        outs = [h(f) for h, f in zip(self.heads, feats)] + [out]
        return self._weighted_loss(outs, y, criterion), out

    # ----------------------------------------------------------------- contract

    def exit_costs(self) -> Tensor:
        return torch.tensor(self.exit_macs, dtype=torch.float64)

    def jump_costs(self) -> None:
        return None

    def fixed_macs(self, e: int) -> int:
        return self.full_macs if e == self.num_exits - 1 else self.prefix[e] + self.head_macs[e]

    def exit_logits(self, x: Tensor) -> Tensor:  # (E, B, K)
        return torch.stack([o.float() for o in self.forward_all(x)])

    def runtime(self, op: OperatingPoint) -> ExitRuntime:
        """The backbone split at the exit layers by torch.fx (shared modules, not copies):
        hooks cannot be scripted, a chain of traced segments can. ``infer`` keeps its hooks,
        which need no tracing; both run the same operations."""
        segs, last = self.segments(), self.num_exits - 1
        if op["policy"] == "fixed":
            e = int(op["exit"])
            body = segs if e == last else segs[: e + 1] + [self.heads[e]]
            return ExitRuntime(nn.Identity(), [], nn.Sequential(*body), self.num_classes, exit_index=e)
        stages = [ExitStage(segs[k], self.heads[k]) for k in range(last)]
        return ExitRuntime(nn.Identity(), stages, segs[last], self.num_classes, **policy_kwargs(op))

    def segments(self) -> list[nn.Module]:
        """The backbone as E traced segments: input -> exit layer 0 -> ... -> exit layer E-2 -> output."""
        import torch.fx
        from torch.fx.passes.split_module import split_module

        layers = set(self.exit_layers)

        class _Tracer(torch.fx.Tracer):  # exit layers stay whole: the cuts fall on their outputs
            def is_leaf_module(self, m, qualname):
                return qualname in layers or super().is_leaf_module(m, qualname)

        why = "ExitWrapper cannot export this backbone"
        try:
            gm = torch.fx.GraphModule(self.backbone, _Tracer().trace(self.backbone))
        except Exception as e:  # data-dependent control flow and the like
            raise NotImplementedError(f"{why}: torch.fx cannot trace it ({type(e).__name__}: {e}); use infer") from None
        part, cur = {}, 0
        for n in gm.graph.nodes:
            part[n.name] = cur
            cur += n.op == "call_module" and n.target in layers
        if cur != len(self.exit_layers):
            raise NotImplementedError(f"{why}: each exit layer must run exactly once in its forward")
        split = split_module(gm, self.backbone, lambda n: part[n.name])
        segs = [getattr(split, f"submod_{k}") for k in range(self.num_exits)]
        for k, seg in enumerate(segs):
            ins = [n for n in seg.graph.nodes if n.op == "placeholder"]
            if len(ins) != 1:  # e.g. a skip connection across an exit layer
                raise NotImplementedError(f"{why}: {len(ins)} tensors cross the cut before segment {k}, not one")
        return segs

    def _infer(self, x: Tensor, op: OperatingPoint) -> DynamicOutput:
        """Hooks on the exit layers evaluate the exits and return only the rows that go on, so
        the backbone's unmodified forward continues on a smaller batch; a fixed exit e hooks
        layer e alone (no earlier heads) and stops everyone there."""
        n, last = x.shape[0], self.num_exits - 1
        router = BatchRouter(n, x.device)
        logits = torch.zeros(n, self.num_classes, device=x.device)
        code = torch.full((n,), last, dtype=torch.long, device=x.device)
        fixed = int(op["exit"]) if op["policy"] == "fixed" else None

        def make_hook(k: int):
            def hook(module, inputs, out):
                z = self.heads[k](out).float()
                stop, _ = decide(z, k, op)
                rows, pos = router.leave(stop)
                logits[rows], code[rows] = z[pos], k
                (out,) = router.keep(stop, out)
                if router.active == 0:
                    raise _AllExited  # nobody is left: the rest of the backbone never runs
                return out  # the backbone goes on with the remaining rows only
            return hook

        mods = dict(self.backbone.named_modules())
        hooked = [k for k in range(last) if fixed in (None, k)]
        hooks = [mods[self.exit_layers[k]].register_forward_hook(make_hook(k)) for k in hooked]
        try:
            logits[router.rows] = self.backbone(x).float()
        except _AllExited:
            pass
        finally:
            for h in hooks:
                h.remove()
        return DynamicOutput(logits, self.route_costs(op).to(x.device)[code], code, self.num_exits)


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
