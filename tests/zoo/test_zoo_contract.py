"""Every committed zoo entry through the contract: it loads by name, ships calibrated points
(at least 8 for a dynamic model), and exports at its middle point to a module with the same
logits and per-input MACs as ``infer``."""

import pytest
import torch

import anycost
from anycost.cost import count_macs
from anycost.zoo import list_weights

NAMES = [w.name for w in list_weights()]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_entry_answers_the_contract(name):
    model = anycost.load(name)
    ops = model.operating_points()
    assert all(o.calibrated and o.split == "calib" for o in ops), [o.name for o in ops if not o.calibrated]
    assert len(ops) >= (1 if model.family == "static" else 8)
    mid = ops[len(ops) // 2]
    net = model.export(mid)
    x = torch.randn(4, *model.weights.input_size, generator=torch.Generator().manual_seed(0))
    ref = model.infer(x, mid)
    with torch.no_grad():
        assert torch.allclose(net(x), ref.logits, atol=1e-3, rtol=1e-3)
    assert count_macs(net, x[:1]) == pytest.approx(ref.macs[0].item(), rel=1e-6)
    if len(ops) > 1:  # a budget between the cheapest and the dearest point is met by a point or a mixture
        choice = model.at_budget((ops[0].macs + ops[-1].macs) / 2)
        assert choice.macs <= (ops[0].macs + ops[-1].macs) / 2 * (1 + 1e-9)
