"""LC-Net specifics of the model contract: the masked measurement equals routed inference,
exported networks really skip (and count what infer reports), fixed-gate points export to a
plain pruned ResNet, and operating-point validation says what is wrong."""

import json

import pytest
import torch

import anycost.models.lcnet.model as lcmodel
from anycost.core import DynamicModel, OperatingPoint, normalised
from anycost.cost import count_macs
from anycost.data import ImageDataset
from anycost.deploy import to_torchscript
from anycost.models import create_model
from anycost.models.lcnet import GatedNet, PrunedNet
from lcnet_util import randomise_predictors

KINDS = {"lnet": dict(layers=True, channels=False), "cnet": dict(layers=False, channels=True),
         "lcnet": dict(layers=True, channels=True), "cond": dict(layers=True, channels=True, conditioned=True)}


def varied(n, seed=1):
    """Inputs whose pooled statistics differ (plain noise pools to ~0 for every input)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * (0.5 + 2 * torch.rand(n, 1, 1, 1, generator=g)) \
        + 2 * torch.randn(n, 1, 1, 1, generator=g)


def tiny(kind):
    """A tiny model whose predictors make varied per-input decisions (fresh ones keep everything)."""
    torch.manual_seed(0)
    return randomise_predictors(create_model("test_lcnet", num_classes=10, in_chans=1, widths=(8, 16, 32), **KINDS[kind]))


def gated(kind, tau=0.5):
    return OperatingPoint("t", {"tau": tau, "budget": 0.5} if kind == "cond" else {"tau": tau})


def as_dataset(x):
    """x (N, 1, 8, 8) as a uint8 ImageDataset that normalises (mean 0.5, std 1/255) back to x, clipped."""
    img = (x.clamp(-127, 127) + 128).round().to(torch.uint8)
    return ImageDataset(img, torch.arange(len(x)) % 10, [str(i) for i in range(10)], "varied")


NORM = dict(mean=(128 / 255,), std=(1 / 255,))


# ------------------------------------------------------------------ masked measurement


@pytest.mark.parametrize("kind", KINDS)
def test_masked_pass_alone_matches_routed_inference(kind, monkeypatch):
    """Forced to mask every block (union of kept channels, dropped ones times 0) and with no
    margin (nothing re-routed), the pass itself gives routed inference's per-input MACs and
    logits, on inputs whose decisions differ."""
    monkeypatch.setattr(lcmodel, "MARGIN", 0.0)
    monkeypatch.setattr(lcmodel, "GROUP_ROWS", float("inf"))
    m = tiny(kind)
    x = varied(40)
    for tau in (0.3, 0.5, 0.8):
        op = gated(kind, tau)
        ref = m.infer(x, op)
        logits, macs, ok = m._masked(x, m.setting(op))
        assert ok.all()
        assert torch.equal(macs, ref.macs), tau
        assert torch.allclose(logits, ref.logits, atol=1e-4), tau
    assert ref.macs.min() < ref.macs.max()  # decisions really differ per input


def test_grouped_blocks_are_routed_inference_itself(monkeypatch):
    """Where a block's masks are few, the pass runs routed inference's grouped slicing: same
    numbers bit for bit, and no row needs vouching for."""
    monkeypatch.setattr(lcmodel, "GROUP_ROWS", 0)
    monkeypatch.setattr(lcmodel, "MARGIN", float("inf"))
    m = tiny("lcnet")
    x = varied(40)
    op = gated("lcnet")
    ref = m.infer(x, op)
    logits, macs, ok = m._masked(x, m.setting(op))
    assert ok.all() and torch.equal(logits, ref.logits) and torch.equal(macs, ref.macs)


@pytest.mark.parametrize("kind", KINDS)
def test_measure_equals_the_base_class_routed_measure(kind):
    m = tiny(kind)
    ds = as_dataset(varied(60))
    ops = [gated(kind, t) for t in (0.2, 0.5, 0.7)] + [m.default_op()]
    ops = [OperatingPoint(f"p{i}", o.params) for i, o in enumerate(ops)]
    fast = m.measure(ds, NORM["mean"], NORM["std"], ops, split="s", batch_size=25)
    slow = DynamicModel.measure(m, ds, NORM["mean"], NORM["std"], ops, split="s", batch_size=7)
    assert [(a.macs, a.accuracy) for a in fast] == [(b.macs, b.accuracy) for b in slow]
    assert len({a.macs for a in fast}) == len(fast)  # the points really differ


def test_rows_near_a_threshold_are_rerouted(monkeypatch):
    """A margin wider than every gate sends every row that took a masked pass through routed
    inference; the numbers stay those of routed inference."""
    monkeypatch.setattr(lcmodel, "GROUP_ROWS", float("inf"))  # mask every block
    m = tiny("lcnet")
    ds = as_dataset(varied(30))
    ops = [gated("lcnet", 0.5)]
    base = DynamicModel.measure(m, ds, NORM["mean"], NORM["std"], ops, batch_size=30)
    m.measure(ds, NORM["mean"], NORM["std"], ops, batch_size=30)
    normally = m._anycost_rerouted["t"]
    monkeypatch.setattr(lcmodel, "MARGIN", float("inf"))
    out = m.measure(ds, NORM["mean"], NORM["std"], ops, batch_size=30)
    x, _ = normalised(ds, NORM["mean"], NORM["std"])
    masked = int((~m._masked(x, m.setting(ops[0]))[2]).sum())
    assert normally < masked == m._anycost_rerouted["t"]  # the masked pass vouches for most rows
    assert (out[0].macs, out[0].accuracy) == (base[0].macs, base[0].accuracy)


# ------------------------------------------------------------------ export of gated points


@pytest.mark.parametrize("kind", KINDS)
def test_gated_export_really_skips_and_counts_what_infer_reports(kind):
    m = tiny(kind)
    x = varied(12)
    op = gated(kind)
    net = m.export(op)
    assert isinstance(net, GatedNet) and not m.is_static(op)
    ref = m.infer(x, op)
    with torch.no_grad():
        assert torch.allclose(net(x), ref.logits, atol=1e-4)  # a batch: gather / scatter per block
    full = m.infer(x[:1], m.default_op()).macs.item()
    counted = [count_macs(net, x[i:i + 1]) for i in range(12)]
    assert counted == ref.macs.tolist()  # exact, predictors included
    assert min(counted) < full  # skipped blocks / channels are not computed
    scripted = to_torchscript(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), ref.logits, atol=1e-4)
        assert torch.allclose(scripted(x[3:4]), ref.logits[3:4], atol=1e-4)


def test_full_point_runs_everything_with_static_control_flow():
    m = tiny("lcnet")
    x = varied(4)
    op = m.default_op()
    assert op.params == {"execute_all": True} and m.is_static(op) and m.is_static(None)
    assert torch.all(m.infer(x).macs == m.full_macs + sum(m.pred_macs))
    assert count_macs(m.export(op), x[:1]) == m.full_macs + sum(m.pred_macs)


# ------------------------------------------------------------------ fixed (input-independent) points


def flat(kind):
    """Input-independent predictors: every logit is its bias. Block 1 is skipped (layer gate),
    and block 2 keeps channels 0, 2, 4, ... only (channel gates)."""
    m = tiny(kind)
    with torch.no_grad():
        for p in m.predictors:
            p.fc2.weight.zero_()
            p.fc2.bias.uniform_(-0.5, 0.5)
            if p.layers:
                p.fc2.bias[0] = 2.0
            if p.channels:
                p.fc2.bias[p.rows("channels").start:p.rows("channels").start + p.c_mid] = 2.0
        if m.layers:
            m.predictors[1].fc2.bias[0] = -2.0
        if m.channels:
            p = m.predictors[2]
            p.fc2.bias[p.rows("channels").start + 1:p.rows("channels").start + p.c_mid:2] = -2.0
    return m


@pytest.mark.parametrize("kind", ["lnet", "cnet", "lcnet"])
def test_fixed_point_of_input_independent_gates_is_the_gated_network(kind):
    m = flat(kind)
    x = varied(16)
    fixed = m.derive_fixed(x, gated(kind))
    assert (fixed[1] is None) == m.layers
    if m.channels:
        assert fixed[2]["channels"] == list(range(0, m.blocks_list[2].planes, 2))
    op = OperatingPoint("fixed", {"fixed": fixed})
    assert json.loads(json.dumps(op.to_dict()))["params"] == {"fixed": fixed}
    a, b = m.infer(x, op), m.infer(x, gated(kind))
    assert torch.allclose(a.logits, b.logits, atol=1e-3)  # scales are rounded to 4 decimals
    assert torch.all(a.macs == b.macs - sum(m.pred_macs))  # the fixed network runs no predictors


@pytest.mark.parametrize("kind", ["lnet", "lcnet"])
def test_fixed_export_is_a_plain_pruned_resnet(kind, tmp_path):
    m = flat(kind)
    x = varied(8)
    op = OperatingPoint("fixed", {"fixed": m.derive_fixed(x, gated(kind))})
    net = m.export(op)
    assert isinstance(net, PrunedNet) and m.is_static(op)
    assert len(net.blocks) == len(m.blocks_list) - 1  # the skipped block (identity shortcut) is gone
    assert not any("fc1" in n for n, _ in net.named_modules())  # no predictors
    with torch.no_grad():
        assert torch.allclose(net(x), m.infer(x, op).logits, atol=1e-5)
    assert count_macs(net, x[:1]) == m.fixed_macs(op["fixed"]) == m.infer(x[:1], op).macs.item()
    assert m.fixed_macs(op["fixed"]) < m.full_macs
    pytest.importorskip("onnxruntime")
    from anycost.deploy import run_onnx, to_onnx

    path = to_onnx(net, x[:1], tmp_path / "fixed.onnx")
    with torch.no_grad():
        assert torch.allclose(run_onnx(path, x), net(x), atol=1e-4)


def test_fixed_blocks_without_channels_and_downsampling_skips():
    """Edge entries: a running block with no channel kept is a constant branch; a skipped
    block whose shortcut changes the shape stays as its shortcut."""
    m = tiny("lcnet")
    x = varied(6)
    planes = [b.planes for b in m.blocks_list]
    fixed = [{"scale": 1.0, "channels": list(range(c)), "scales": [1.0] * c} for c in planes]
    fixed[0] = {"scale": 0.9, "channels": [], "scales": []}
    down = next(i for i, b in enumerate(m.blocks_list) if b.stride != 1)
    fixed[down] = None
    op = OperatingPoint("edge", {"fixed": fixed})
    net = m.export(op)
    assert len(net.blocks) == len(planes)
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(out, m.infer(x, op).logits) and count_macs(net, x[:1]) == m.fixed_macs(fixed)


# ------------------------------------------------------------------ candidates and calibration


def test_tau_grid_spreads_the_points_over_the_cost_range():
    m = tiny("lcnet")
    with torch.no_grad():  # gate logits mostly within the thresholds' range (+-13.8)
        for p in m.predictors:
            p.fc2.weight.mul_(0.2)
    x = varied(64)
    taus = m.tau_grid(x, 18)
    assert 0.5 in taus and taus == sorted(taus) and all(0 <= t <= 1 for t in taus) and len(taus) >= 12
    macs = [m.infer(x, OperatingPoint("t", {"tau": t})).macs.mean().item() for t in taus]
    assert len({round(v) for v in macs}) >= 10
    assert max(macs) > 2 * min(macs)


def test_calibration_ships_a_static_point_and_plain_json():
    m = tiny("lcnet")

    class Data:  # the SplitData interface calibrate reads
        mean, std = NORM["mean"], NORM["std"]

        @staticmethod
        def get(split):
            return as_dataset(varied(80))

    ops = m.calibrate(Data(), "calib", batch_size=40)
    assert len(ops) >= 8 and any(m.is_static(o) for o in ops)
    assert all(len(json.dumps(o.to_dict())) < 8000 for o in ops)


# ------------------------------------------------------------------ validation


BAD = [
    ({}, "need one of"),
    ({"tau": 0.5, "temperature": 1}, "unknown params"),
    ({"tau": 1.5}, "tau is a keep probability"),
    ({"tau": True}, "tau is a keep probability"),
    ({"tau": float("nan")}, "tau is a keep probability"),
    ({"execute_all": False}, "execute_all must be true"),
    ({"budget": 0.5}, "needs a budget-conditioned model"),
    ({"fixed": [], "tau": 0.5}, "takes no other params"),
    ({"fixed": [None]}, "list of 6 per-block entries"),
]


@pytest.mark.parametrize("params,match", BAD, ids=[m for _, m in BAD])
def test_check_op_rejects_bad_params_in_one_line(params, match):
    m = tiny("lcnet")
    with pytest.raises(ValueError, match=match) as e:
        m.infer(varied(2), OperatingPoint("bad", params))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("budget", [0, 1.5, -0.1, "0.5"])
def test_conditioned_budget_range(budget):
    m = tiny("cond")
    with pytest.raises(ValueError, match=r"budget is a fraction of the full MACs in \(0, 1\]"):
        m.check_op(OperatingPoint("b", {"budget": budget}))
    m.check_op(OperatingPoint("b", {"budget": 1.0}))


def _entry(m, i, **kw):
    c = m.blocks_list[i].planes
    e = {"scale": 1.0, "channels": list(range(c)), "scales": [1.0] * c}
    e.update(kw)
    return e


@pytest.mark.parametrize("mutate,match", [
    (lambda m, f: f.__setitem__(0, {"scale": 1.0}), "needs exactly the keys"),
    (lambda m, f: f.__setitem__(0, _entry(m, 0, scale="1")), "'scale' must be a finite number"),
    (lambda m, f: f.__setitem__(0, _entry(m, 0, channels=[1, 0], scales=[1.0, 1.0])), "sorted distinct indices"),
    (lambda m, f: f.__setitem__(0, _entry(m, 0, channels=[0, 99], scales=[1.0, 1.0])), "sorted distinct indices"),
    (lambda m, f: f.__setitem__(0, _entry(m, 0, channels=[0, 1], scales=[1.0])), "'scales' must be 2 finite numbers"),
], ids=["keys", "scale", "unsorted", "range", "scales"])
def test_check_op_rejects_bad_fixed_entries(mutate, match):
    m = tiny("lcnet")
    fixed = [_entry(m, i) for i in range(len(m.blocks_list))]
    m.check_op(OperatingPoint("ok", {"fixed": fixed}))
    mutate(m, fixed)
    with pytest.raises(ValueError, match=match):
        m.check_op(OperatingPoint("bad", {"fixed": fixed}))


def test_a_cnet_cannot_skip_a_fixed_block():
    m = tiny("cnet")
    fixed = [{"channels": [0], "scales": [1.0]} for _ in m.blocks_list]
    m.check_op(OperatingPoint("ok", {"fixed": fixed}))
    fixed[1] = None
    with pytest.raises(ValueError, match="no layer gates"):
        m.check_op(OperatingPoint("bad", {"fixed": fixed}))
