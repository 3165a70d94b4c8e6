"""A toy dynamic model for the measurement-spine tests: stage 1 + exit head for everyone;
the rows named by the operating point's ``continue_mask`` go on through stage 2 + head 2,
routed as a smaller batch."""

import torch
import torch.nn as nn

from anycost.core import DynamicModel, DynamicOutput, OperatingPoint
from anycost.cost import count_macs, module_macs
from anycost.routing import BatchRouter


class Head(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.fc = nn.Linear(c, k)

    def forward(self, h):
        return self.fc(h.mean((2, 3)))


class TwoStage(DynamicModel):
    def __init__(self, honest: bool = True):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head1 = Head(4, 3)
        self.stage2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU())
        self.head2 = Head(8, 3)
        self.honest = honest
        # unit costs measured from the live modules, never typed in
        self.c1 = module_macs(self.stage1, (1, 8, 8))
        self.h1 = module_macs(self.head1, (4, 8, 8))
        self.c2 = module_macs(self.stage2, (4, 8, 8))
        self.h2 = module_macs(self.head2, (8, 4, 4))

    def default_op(self):
        return self.default_operating_points()[0]

    def default_operating_points(self):
        return [OperatingPoint("all", {"continue_fraction": 1.0}), OperatingPoint("half", {"continue_fraction": 0.5}),
                OperatingPoint("none", {"continue_fraction": 0.0})]

    def forward(self, x):
        return self._infer(x, OperatingPoint("all", {"continue_fraction": 1.0})).logits

    def _infer(self, x, op):
        b = x.shape[0]
        if "continue_mask" in op.params:
            go_on = torch.tensor(op["continue_mask"], dtype=torch.bool)
        else:  # the first round(f * B) rows continue
            go_on = torch.arange(b) < round(op["continue_fraction"] * b)
        router = BatchRouter(b)
        h = self.stage1(x)
        out1 = self.head1(h)
        logits = out1.clone()
        macs = torch.full((b,), float(self.c1 + self.h1), dtype=torch.float64)
        path = torch.zeros(b, dtype=torch.long)
        rows, pos = router.leave(~go_on)  # these exit at head 1
        (h,) = router.keep(~go_on, h)
        if router.active:
            out2 = self.head2(self.stage2(h))
            logits.index_copy_(0, router.rows, out2)
            macs[router.rows] += (self.c2 if self.honest else 0) + self.h2  # dishonest: forgets stage 2
            path[router.rows] = 1
        return DynamicOutput(logits, macs, path, 2)
