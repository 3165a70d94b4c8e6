"""Early exit and network selection under the model contract: exported networks really stop
early (and count what infer reports), fixed exits are the cut network, check_op's errors,
the cached measure equals routed inference, the cascade's jump gate."""

import json

import pytest
import torch

from anycost.core import DynamicModel, OperatingPoint
from anycost.cost import count_macs, module_macs
from anycost.data import load_dataset
from anycost.deploy import to_torchscript
from anycost.models import create_model, model_family
from anycost.models.cascade import Cascade
from anycost.policies import NUM_FEATURES

NEVER = {"weight": [0.0] * 4, "bias": -1.0, "mean": [0.0] * 4, "std": [1.0] * 4}  # gate: never fires
ALWAYS = dict(NEVER, bias=1.0)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ee():
    torch.manual_seed(0)
    return create_model("test_ee_resnet", num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def casc():
    torch.manual_seed(0)
    return create_model("test_cascade", num_classes=10, in_chans=1).eval()


def _x(data, n=32):
    ds = data.get("holdout")
    m, s = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    return (ds.images[:n].float() / 255 - m) / s


def _threshold(t, metric="maxprob"):
    return OperatingPoint("t", {"policy": "threshold", "metric": metric, "threshold": t})


@torch.no_grad()
def _split_threshold(logits):
    """A maxprob threshold halfway between the two middle confidences of a batch: half the
    rows stop, and no row sits on the threshold (float noise cannot flip a decision)."""
    c = torch.softmax(logits, -1).max(-1).values.sort().values
    k = len(c) // 2
    return _threshold(float(c[k - 1] + c[k]) / 2)


def _rows_seen(module):
    """Forward hook recording the batch size each call of ``module`` saw."""
    seen = []
    module.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    return seen


def test_families_and_registration(ee, casc):
    assert isinstance(ee, DynamicModel) and ee.family == "early_exit" and ee.input_size == (1, 8, 8)
    assert isinstance(casc, DynamicModel) and casc.family == "cascade" and casc.input_size == (1, 8, 8)
    assert model_family("test_cascade") == model_family("cascade") == "cascade"
    c = create_model("cascade", members=["resnet8", "test_resnet"], num_classes=10, in_chans=1, input_hw=8)
    assert c.names == ["resnet8", "test_resnet"] and c.num_exits == 2
    with pytest.raises(ValueError, match="at least two"):
        create_model("cascade", members=["resnet8"])


def test_export_stops_when_every_input_has_exited(ee, data):
    """threshold 0: everyone stops at exit 0, so the exported network never runs later blocks."""
    x = _x(data, 8)
    net = ee.export(_threshold(0.0))
    tail = _rows_seen(net.tail)
    out = ee.infer(x, _threshold(0.0))
    assert torch.all(out.path == 0) and torch.all(out.macs == ee.exit_macs[0])
    assert count_macs(net, x) == 8 * ee.exit_macs[0] < 8 * ee.exit_macs[-1]
    assert tail == []
    full = ee.export(_threshold(float("inf")))
    assert count_macs(full, x) == 8 * ee.exit_macs[-1]


def test_export_runs_later_blocks_on_the_remaining_rows_only(ee, data):
    x = _x(data, 32)
    op = _split_threshold(ee.forward_all(x)[0])
    out = ee.infer(x, op)
    going_on = int((out.path > 0).sum())
    assert 0 < going_on < 32
    net = ee.export(op)
    stage1 = _rows_seen(net.stages[1])
    assert torch.allclose(net(x), out.logits, atol=1e-4)
    assert stage1 == [going_on]  # only the rows that did not stop at exit 0
    assert count_macs(net, x) == pytest.approx(float(out.macs.sum()), rel=1e-9)


def test_learned_decisions_are_counted_in_the_export(ee, data):
    """A gate is an (A, F) x (F, 1) matmul: F MACs per decision, in infer and export alike."""
    x = _x(data, 4)
    op = OperatingPoint("l", {"policy": "learned", "lam": 0.0, "gates": [NEVER] * (ee.num_exits - 1), "jump_gate": None})
    per_input = ee.exit_macs[-1] + NUM_FEATURES * (ee.num_exits - 1)
    assert torch.all(ee.infer(x, op).macs == per_input)
    assert count_macs(ee.export(op), x) == 4 * per_input
    op = OperatingPoint("l", {"policy": "learned", "lam": 0.0, "gates": [ALWAYS] * (ee.num_exits - 1)})
    assert count_macs(ee.export(op), x) == 4 * (ee.exit_macs[0] + NUM_FEATURES)


def test_fixed_exit_is_the_cut_network_without_earlier_heads(ee, data):
    x = _x(data, 4)
    op = ee.fixed_op(1)
    net = ee.export(op)
    assert ee.is_static(op) and not ee.is_static(_threshold(0.5))
    assert not any(m is ee.heads[0] for m in ee.runtime(op).modules())
    cut = ee.fixed_macs(1)
    assert cut == ee.exit_macs[1] - ee.head_macs[0]  # the first head is not paid
    assert count_macs(net, x) == 4 * cut and torch.all(ee.infer(x, op).macs == cut)
    assert torch.allclose(net(x), ee.forward_all(x)[1], atol=1e-5)
    # the default point: the plain backbone, no heads at all
    assert ee.default_op() == ee.fixed_op(ee.num_exits - 1)
    assert ee.fixed_macs(ee.num_exits - 1) == module_macs(ee.backbone, (1, 8, 8))
    assert torch.allclose(ee.infer(x).logits, ee.backbone(x), atol=1e-5)


@pytest.mark.parametrize("params, msg", [
    ({"policy": "sometimes"}, "unknown policy"),
    ({}, "unknown policy"),
    ({"policy": "fixed", "exit": 3}, "int in 0..2"),
    ({"policy": "fixed", "exit": -1}, "int in 0..2"),
    ({"policy": "fixed", "exit": "1"}, "int in 0..2"),
    ({"policy": "fixed", "exit": True}, "int in 0..2"),
    ({"policy": "threshold"}, "needs a 'threshold'"),
    ({"policy": "threshold", "threshold": "high"}, "must be a number"),
    ({"policy": "threshold", "threshold": float("nan")}, "NaN"),
    ({"policy": "threshold", "threshold": 0.5, "metric": "vibes"}, "unknown confidence metric"),
    ({"policy": "learned", "gates": [NEVER]}, "one per decision point"),
    ({"policy": "learned", "gates": [NEVER, {"weight": [1.0]}]}, "a gate is a dict"),
    ({"policy": "learned", "gates": [NEVER, NEVER], "jump_gate": ALWAYS}, "jump gate is for cascades"),
])
def test_check_op_says_what_is_wrong(ee, params, msg):
    with pytest.raises(ValueError, match=msg):
        ee.check_op(OperatingPoint("bad", params))
    with pytest.raises(ValueError, match=msg):  # infer and set_operating_points validate too
        ee.infer(torch.zeros(1, 1, 8, 8), OperatingPoint("bad", params))
    with pytest.raises(ValueError, match=msg):
        ee.set_operating_points([OperatingPoint("bad", params)])


def test_infinite_threshold_survives_json(ee):
    op = ee.check_op(OperatingPoint.from_dict(json.loads(json.dumps(_threshold(float("inf")).to_dict()))))
    assert float(op["threshold"]) == float("inf")
    assert ee.check_op(_threshold("inf"))["threshold"] == "inf"


@pytest.mark.parametrize("which", ["ee", "casc"])
def test_cached_measure_equals_routed_inference(which, ee, casc, data):
    model = {"ee": ee, "casc": casc}[which]
    cands = model.candidate_operating_points(data, "calib", batch_size=64)
    kinds = {o["policy"] for o in cands}
    assert kinds == {"fixed", "threshold", "learned"}
    assert len({o.name for o in cands}) == len(cands)
    json.dumps([o.to_dict() for o in cands])  # plain JSON
    ops = cands[:: max(1, len(cands) // 12)]
    ds = data.get("holdout")
    fast = model.measure(ds, data.mean, data.std, ops, split="holdout", batch_size=100)
    slow = DynamicModel.measure(model, ds, data.mean, data.std, ops, split="holdout", batch_size=37)
    for a, b in zip(fast, slow):
        assert a.macs == pytest.approx(b.macs, rel=1e-12) and a.accuracy == pytest.approx(b.accuracy, abs=1e-9), a.name


def test_cascade_jump_skips_the_middle_network(data):
    torch.manual_seed(0)
    nets = [create_model("test_resnet", num_classes=10, in_chans=1, widths=(w, 2 * w, 4 * w)) for w in (2, 4, 8)]
    casc = Cascade(nets, (1, 8, 8), ["w2", "w4", "w8"]).eval()
    op = OperatingPoint("jump", {"policy": "learned", "lam": 0.0, "gates": [NEVER, NEVER], "jump_gate": ALWAYS})
    x = _x(data, 10)
    m = casc.net_macs
    out = casc.infer(x, op)
    assert torch.all(out.macs == m[0] + m[2] + 2 * NUM_FEATURES) and torch.all(out.path == 2)
    assert torch.allclose(out.logits, nets[2](x), atol=1e-5)
    net = casc.export(op)
    middle = _rows_seen(net.stages[1])
    assert count_macs(net, x) == 10 * (m[0] + m[2] + 2 * NUM_FEATURES)
    assert middle == []
    assert torch.allclose(to_torchscript(casc.export(op))(x), out.logits, atol=1e-4)
    # the cached simulation agrees with the routed jump
    code, macs = casc.simulate(casc.exit_cache(x, torch.zeros(10, dtype=torch.long)), op)
    assert torch.all(code == 3) and torch.equal(macs, out.macs)


def test_cascade_fixed_point_is_one_member_alone(casc, data):
    x = _x(data, 4)
    assert casc.default_op()["exit"] == 1 and casc.default_op().name == "only test_resnet14w8"
    op = casc.fixed_op(0)
    assert casc.is_static(op)
    out = casc.infer(x, op)
    assert torch.all(out.macs == casc.net_macs[0]) and torch.allclose(out.logits, casc.nets[0](x), atol=1e-5)
    assert count_macs(casc.export(op), x) == 4 * casc.net_macs[0]
    with pytest.raises(ValueError, match="int in 0..1"):
        casc.check_op(OperatingPoint("x", {"policy": "fixed", "exit": 2}))


def test_cascade_members_must_share_labels():
    a = create_model("test_resnet", num_classes=10, in_chans=1)
    b = create_model("test_resnet", num_classes=7, in_chans=1)
    with pytest.raises(ValueError, match="number of classes"):
        Cascade([a, b], (1, 8, 8))


def test_exit_wrapper_exports_a_traced_split_backbone():
    """torchvision's resnet18 split at its exit layers by torch.fx: export == infer (logits and
    per-input MACs, hooks vs traced segments), scriptable, fixed exits without earlier heads."""
    from torchvision.models import resnet18

    from anycost.models.early_exit import ExitWrapper

    torch.manual_seed(0)
    w = ExitWrapper(resnet18(num_classes=10).eval(), ["layer1", "layer2", "layer3"], 10, (3, 32, 32)).eval()
    x = torch.randn(6, 3, 32, 32)
    mixed = _split_threshold(w.forward_all(x)[0])
    assert 0 < int((w.infer(x, mixed).path == 0).sum()) < 6
    for op in (mixed, w.fixed_op(1), w.default_op()):
        net, ref = w.export(op), w.infer(x, op)
        assert torch.allclose(net(x), ref.logits, atol=1e-4), op.name
        for i in range(6):
            assert count_macs(net, x[i:i + 1]) == ref.macs[i].item(), (op.name, i)
    assert w.fixed_macs(1) == w.prefix[1] + w.head_macs[1]
    assert torch.allclose(to_torchscript(w.export(w.fixed_op(0)))(x), w.infer(x, w.fixed_op(0)).logits, atol=1e-4)
