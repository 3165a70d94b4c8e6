"""The model contract, checked for every registered tiny variant (``test_*``): calibrate,
operating_points, at_budget (budget met in expectation, clear errors), infer, export
(equal logits and per-input MACs, TorchScript round trip, ONNX + ONNX Runtime where the
point's control flow is static)."""

import io
import json
import math

import pytest
import torch

from anycost.core import BudgetError, DynamicModel, Mixture, OperatingPoint
from anycost.cost import count_macs
from anycost.data import load_dataset
from anycost.deploy import load_torchscript, to_onnx, run_onnx, to_torchscript
from anycost.models import create_model, list_models

# every tiny registered variant, plus the flag combinations of families that have them
VARIANTS = [(n, {}) for n in list_models("test_*")] + [
    ("test_lcnet", {"channels": False}), ("test_lcnet", {"layers": False}), ("test_lcnet", {"conditioned": True}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in VARIANTS]


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


_CACHE: dict = {}


@pytest.fixture(params=VARIANTS, ids=IDS)
def model(request, data):
    name, kw = request.param
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        m = create_model(name, num_classes=10, in_chans=1, **kw)
        m.calibrate(data, "calib", batch_size=128)
        _CACHE[key] = m
    return _CACHE[key]


def _x(data, n=48):
    ds = data.get("calib")
    m = torch.tensor(data.mean).view(1, -1, 1, 1)
    s = torch.tensor(data.std).view(1, -1, 1, 1)
    return (ds.images[:n].float() / 255 - m) / s


def test_is_a_dynamic_model(model):
    assert isinstance(model, DynamicModel) and isinstance(model.family, str)


def test_points_are_calibrated_plain_json(model):
    ops = model.operating_points()
    assert ops and all(o.calibrated and o.split == "calib" for o in ops)
    assert [o.macs for o in ops] == sorted(o.macs for o in ops)
    assert len({o.name for o in ops}) == len(ops)
    back = [OperatingPoint.from_dict(json.loads(json.dumps(o.to_dict()))) for o in ops]
    assert back == ops


def test_calibrated_numbers_are_reproduced_by_routed_inference(model, data):
    """A family may measure faster than point by point (cached exit outputs, masked passes);
    its numbers must equal those of real routed ``infer`` (the base class's measure)."""
    ops = model.operating_points()
    again = DynamicModel.measure(model, data.get("calib"), data.mean, data.std, ops, split="calib", batch_size=64)
    for a, b in zip(ops, again):
        assert b.macs == pytest.approx(a.macs, rel=1e-9) and b.accuracy == pytest.approx(a.accuracy, abs=1e-9)


def test_outputs_equal_real_routing_point_by_point(model, data):
    """``outputs`` (a family's fast path, e.g. cached exits) gives exactly what streamed
    real routing gives: the same routes, per-input MACs and logits, in ``ops`` order."""
    ops = model.operating_points()
    ds = data.get("holdout")
    fast = list(model.outputs(ds, data.mean, data.std, ops, batch_size=50))
    real = list(model.routed_outputs(ds, data.mean, data.std, ops, batch_size=64))
    assert [o.name for o, _ in fast] == [o.name for o, _ in real] == [o.name for o in ops]
    for (op, a), (_, b) in zip(fast, real):
        assert a.logits.shape == (len(ds.labels), 10) and a.macs.dtype == torch.float64
        assert torch.equal(a.macs, b.macs), op.name
        assert torch.allclose(a.logits, b.logits, atol=1e-4), op.name
        assert (a.path is None) == (b.path is None) and (a.path is None or torch.equal(a.path, b.path)), op.name


def test_at_budget_meets_budget_in_expectation(model, data):
    ops = model.operating_points()
    lo, hi = ops[0].macs, max(o.macs for o in ops)
    best = model.at_budget(hi * 10)
    assert best.accuracy == max(o.accuracy for o in ops)
    if hi <= lo * (1 + 1e-9):
        pytest.skip("one cost level: nothing to mix")
    budget = (lo + hi) / 2
    choice = model.at_budget(budget)
    ds = data.get("calib")
    x = _x(data, len(ds))
    if isinstance(choice, Mixture):
        assert choice.macs == pytest.approx(budget, rel=1e-9)
        spent = model.infer(x, choice, generator=torch.Generator().manual_seed(0)).macs.mean().item()
        assert spent == pytest.approx(budget, rel=0.01)
    else:  # the budget falls on a flat stretch of the frontier: a point at or under it
        assert choice.macs <= budget
    assert isinstance(model.at_budget(budget, mix=False), OperatingPoint)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -5.0, "1e6", None])
def test_at_budget_rejects_non_budgets(model, bad):
    with pytest.raises(BudgetError, match="reachable"):
        model.at_budget(bad)


def test_at_budget_below_cheapest_names_the_range(model):
    with pytest.raises(BudgetError, match="below the cheapest.*reachable"):
        model.at_budget(model.operating_points()[0].macs * 0.5)


def test_infer_checks_its_input(model, data):
    with pytest.raises(ValueError):
        model.infer(_x(data, 2)[0])  # no batch dimension


def test_export_matches_infer(model, data):
    x = _x(data, 24)
    for op in model.operating_points():
        net = model.export(op)
        ref = model.infer(x, op)
        with torch.no_grad():
            out = net(x)
        assert torch.allclose(out, ref.logits, atol=1e-4, rtol=1e-4), op.name
        for i in range(0, 24, 3):  # per-input MACs of the exported network, every path it takes
            xi = x[i:i + 1]
            assert count_macs(net, xi) == pytest.approx(model.infer(xi, op).macs.item(), rel=1e-6), (op.name, i)


def test_export_survives_torchscript(model, data):
    x = _x(data, 16)
    op = model.operating_points()[len(model.operating_points()) // 2]
    net = model.export(op)
    buf = io.BytesIO()
    to_torchscript(net, buf)
    loaded = load_torchscript(buf.getvalue())
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_static_points_export_to_onnx(model, data, tmp_path):
    pytest.importorskip("onnxruntime")
    x = _x(data, 8)
    static = [o for o in model.operating_points() if model.is_static(o)]
    if not static:
        pytest.skip(f"{type(model).__name__} ships no point with static control flow")
    op = static[0]
    net = model.export(op)
    path = to_onnx(net, x[:1], tmp_path / "m.onnx")
    with torch.no_grad():
        assert torch.allclose(run_onnx(path, x), net(x), atol=1e-4)


def test_export_refuses_a_mixture(model):
    ops = model.operating_points()
    with pytest.raises(TypeError):
        model.export(Mixture(ops[0], ops[-1], 0.5))


def test_named_points(model):
    op = model.operating_points()[-1]
    assert model.find_op(op.name) == op
    with pytest.raises(KeyError, match="no operating point named"):
        model.find_op("no such point")
