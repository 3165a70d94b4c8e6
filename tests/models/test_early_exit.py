import pytest
import torch

from anycost.cost import check_reported_macs
from anycost.data import BatchLoader, load_dataset
from anycost.core import OperatingPoint
from anycost.models import create_model
from anycost.policies import (apply_policy, calibrate_threshold, learn_policy, learned_curve, oracle_exits,
                              oracle_point, threshold_curve, threshold_exits)
from anycost.models.cascade import Cascade
from anycost.train import TrainConfig, train


def _cfg(out, model, **kw):
    return TrainConfig(model=model, dataset="digits", epochs=kw.pop("epochs", 6), batch_size=64, lr=0.1, flip=False,
                       channels_last=False, progress=False, out_dir=str(out), **kw)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ee(tmp_path_factory, digits):
    torch.manual_seed(0)
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1, widths=(8, 16, 32))
    train(_cfg(tmp_path_factory.mktemp("ee"), "test_ee_resnet"), model=m, data=digits)
    return m.eval()


def _loader(d, split):
    return BatchLoader(d.get(split), 128, d.mean, d.std)


def _x(d, split="holdout", n=64):
    return next(iter(BatchLoader(d.get(split), n, d.mean, d.std)))[0]


def test_exit_costs_sum_to_the_whole_model(ee):
    from anycost.cost import module_macs

    assert ee.declared_macs((1, 8, 8)) == module_macs(ee, (1, 8, 8))
    assert ee.exit_macs == sorted(ee.exit_macs) and len(ee.exit_macs) == ee.num_exits == 3


def test_every_policy_reports_honest_macs(ee, digits):
    cache = ee.cache_outputs(_loader(digits, "calib"), "calib")
    ops = [OperatingPoint("t", {"policy": "threshold", "metric": m, "threshold": 0.8}) for m in ("maxprob", "entropy", "margin")]
    ops += [OperatingPoint("l", learn_policy(cache, 0.5)), OperatingPoint("f0", {"policy": "fixed", "exit": 0})]
    x = _x(digits)
    for op in ops:
        chk = check_reported_macs(ee, x, op)
        assert chk.ok and chk.rel_err < 1e-6, (op.name, str(chk))


def test_simulation_on_cache_matches_real_execution(ee, digits):
    """Policies are chosen on cached outputs: the real routed model must do the same thing."""
    calib = ee.cache_outputs(_loader(digits, "calib"), "calib")
    hold = ee.cache_outputs(_loader(digits, "holdout"), "holdout")
    x = torch.cat([xb for xb, _ in _loader(digits, "holdout")])
    for params in ({"policy": "threshold", "metric": "maxprob", "threshold": 0.9}, learn_policy(calib, 0.3)):
        ex, spent = apply_policy(hold, params)
        out = ee.infer(x, OperatingPoint("p", params))
        same = out.path == ex
        assert same.float().mean() >= 0.99, "routing disagrees with the simulation"
        assert torch.equal(out.macs[same], spent[same])
        rows = torch.arange(len(ex))[same]
        assert torch.allclose(out.logits[same], hold.logits[ex[same], rows], atol=1e-4)
    assert 0 < (ex < 2).float().mean() < 1, "the learned policy should stop some inputs early and not others"


def test_batched_routing_equals_batch_of_one(ee, digits):
    x = _x(digits, n=24)
    op = OperatingPoint("t", {"policy": "threshold", "metric": "maxprob", "threshold": 0.9})
    big = ee.infer(x, op)
    ones = [ee.infer(x[i:i + 1], op) for i in range(x.shape[0])]
    assert torch.equal(big.path, torch.cat([o.path for o in ones]))
    assert torch.equal(big.macs, torch.cat([o.macs for o in ones]))
    assert torch.allclose(big.logits, torch.cat([o.logits for o in ones]), atol=1e-4)


def test_policies_on_cache(ee, digits):
    cache = ee.cache_outputs(_loader(digits, "calib"), "calib")
    macs = cache.macs
    th = threshold_curve(cache, "maxprob", n=10)
    assert min(th.macs) >= macs[0] and max(th.macs) == pytest.approx(float(macs[-1]))
    lc = learned_curve(cache, [0.0, 0.1, 1.0, 100.0])
    by_lam = {p.operating_point["lam"]: p for p in lc.points}
    assert by_lam[100.0].macs_mean < by_lam[0.1].macs_mean <= by_lam[0.0].macs_mean
    assert by_lam[100.0].path_fractions[0] == 1.0  # cost dominates: everyone stops at exit 0
    orc = oracle_point(cache)
    any_correct = 100 * cache.correct().any(0).float().mean().item()
    assert orc.accuracy == pytest.approx(any_correct)
    assert all(p.accuracy <= orc.accuracy + 1e-9 for p in th.points + lc.points)
    # lower bound, input by input: a policy that is right on an input went at least as far as the oracle
    ex_o = oracle_exits(cache)
    for t in (0.5, 0.9, 0.99):
        ex_t = threshold_exits(cache, t)
        right = cache.correct()[ex_t, torch.arange(len(ex_t))]
        assert torch.all(ex_o[right] <= ex_t[right])


def test_threshold_calibration_reachable_and_not(ee, digits):
    cache = ee.cache_outputs(_loader(digits, "calib"), "calib")
    budget = float(cache.macs[0] + cache.macs[-1]) / 2
    pt, ok = calibrate_threshold(cache, budget)
    assert ok and pt.macs_mean <= budget
    pt, ok = calibrate_threshold(cache, float(cache.macs[0]) / 2)
    assert not ok and pt.macs_mean == pytest.approx(float(cache.macs[0]))


def test_two_stage_training_leaves_the_backbone_intact(tmp_path, digits):
    torch.manual_seed(0)
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1, mode="heads")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in m.heads.state_dict().items()}
    train(_cfg(tmp_path, "test_ee_resnet", epochs=1), model=m, data=digits)
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items()), "backbone (or its BN stats) changed"
    assert any(not torch.equal(heads_before[k], v) for k, v in m.heads.state_dict().items())


def test_exit_placement_by_block_index():
    from anycost.models.early_exit import _exit_positions

    assert _exit_positions("stage+1+3", 3, 3) == [1, 2, 3, 5]  # resnet20: 9 blocks
    assert _exit_positions("every2", 3, 3) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="numbered"):
        _exit_positions("8", 3, 3)  # block 8 feeds the final exit
    with pytest.raises(ValueError, match="unknown exit placement"):
        _exit_positions("stages", 3, 3)


def test_self_distillation_trains_early_exits_only():
    """The distillation term's gradient reaches the early heads, never the last exit's
    classifier (the teacher is detached); with distill=0 the loss is plain weighted CE."""
    torch.manual_seed(0)
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1, distill=1.0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    outs = m.forward_all(x)
    # distill=1: early exits see only the KL term, so the last exit's fc gets gradient
    # from its own CE alone, equal to that of a loss where early exits are cut off
    loss = m._weighted_loss(outs, y, torch.nn.functional.cross_entropy)
    g_fc = torch.autograd.grad(loss, m.backbone.fc.weight, retain_graph=True)[0]
    only_last = torch.nn.functional.cross_entropy(outs[-1], y)  # the last exit weighs 1, as in a static net
    assert m.exit_weights[-1] == 1.0
    g_ref = torch.autograd.grad(only_last, m.backbone.fc.weight, retain_graph=True)[0]
    assert torch.allclose(g_fc, g_ref, atol=1e-6)
    g_head = torch.autograd.grad(loss, m.heads[0].fc.weight)[0]
    assert g_head.abs().sum() > 0
    plain = create_model("test_ee_resnet", num_classes=10, in_chans=1)
    plain.load_state_dict(m.state_dict())
    p_outs = plain.forward_all(x)
    ce = sum(w * torch.nn.functional.cross_entropy(o, y) for w, o in zip(plain.exit_weights, p_outs))
    assert torch.allclose(plain._weighted_loss(p_outs, y, torch.nn.functional.cross_entropy), ce)
    assert not torch.allclose(loss.detach(), ce.detach())
    with pytest.raises(ValueError, match="distill"):
        create_model("test_ee_resnet", num_classes=10, in_chans=1, distill=1.5)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, digits):
    nets = []
    for w in (4, 8, 16):
        torch.manual_seed(0)
        net = create_model("resnet8", num_classes=10, in_chans=1, widths=(w, 2 * w, 4 * w))
        train(_cfg(tmp_path_factory.mktemp(f"c{w}"), "resnet8", epochs=4), model=net, data=digits)
        nets.append(net.eval())
    return Cascade(nets, (1, 8, 8), ["w4", "w8", "w16"])


def test_cascade_honest_and_matches_simulation(cascade, digits):
    calib = cascade.cache_outputs(_loader(digits, "calib"), "calib")
    hold = cascade.cache_outputs(_loader(digits, "holdout"), "holdout")
    x = torch.cat([xb for xb, _ in _loader(digits, "holdout")])
    params = learn_policy(calib, 0.05, jump=True)
    assert params["jump_gate"] is not None
    for op in (OperatingPoint("l", params), OperatingPoint("t", {"policy": "threshold", "threshold": 0.9}),
               OperatingPoint("s", {"policy": "fixed", "exit": 1})):
        chk = check_reported_macs(cascade, x[:50], op)
        assert chk.ok and chk.rel_err < 1e-6, (op.name, str(chk))
    ex, spent = apply_policy(hold, params)
    out = cascade.infer(x, OperatingPoint("l", params))
    same = out.path == ex
    assert same.float().mean() >= 0.99 and torch.equal(out.macs[same], spent[same])


def test_cascade_jump_skips_the_middle_network(cascade, digits):
    """A policy forced to jump: nobody pays for network 1."""
    gate_never = {"weight": [0.0] * 4, "bias": -1.0, "mean": [0.0] * 4, "std": [1.0] * 4}
    gate_always = dict(gate_never, bias=1.0)
    op = OperatingPoint("jump", {"policy": "learned", "lam": 0.0, "gates": [gate_never, gate_never], "jump_gate": gate_always})
    out = cascade.infer(_x(digits, n=10), op)
    m = cascade.net_macs
    assert torch.all(out.macs == m[0] + m[2] + 2 * 4) and torch.all(out.path == 2)
    chk = check_reported_macs(cascade, _x(digits, n=10), op)
    assert chk.counted == 10 * (m[0] + m[2] + 2 * 4)


def test_exit_wrapper_on_a_torchvision_backbone():
    """Exits at named layers of torchvision's resnet18, its forward untouched: real early
    exit, honest MACs, and the same answers as the unwrapped network at the last exit."""
    from torchvision.models import resnet18

    from anycost.models.early_exit import ExitWrapper

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    w = ExitWrapper(net, ["layer1", "layer2", "layer3"], 10, (3, 32, 32)).eval()
    x = torch.randn(6, 3, 32, 32)
    assert torch.allclose(w.infer(x).logits, net(x), atol=1e-4)
    assert w.exit_macs == sorted(w.exit_macs) and w.exit_macs[-1] == w.full_macs + sum(w.head_macs)
    for op in (OperatingPoint("t", {"policy": "threshold", "metric": "maxprob", "threshold": 0.105}),
               OperatingPoint("f1", {"policy": "fixed", "exit": 1}), OperatingPoint("full", {"policy": "fixed", "exit": 3})):
        chk = check_reported_macs(w, x, op)
        assert chk.ok and chk.rel_err < 1e-6, (op.name, str(chk))
    out = w.infer(x, OperatingPoint("f1", {"policy": "fixed", "exit": 1}))
    # a fixed exit is the backbone cut there: exit 0's head is not paid
    assert torch.all(out.path == 1) and torch.all(out.macs == w.prefix[1] + w.head_macs[1])
    assert w.prefix[1] + w.head_macs[1] < w.exit_macs[1]
    assert torch.all(w.infer(x).macs == w.full_macs)
    with pytest.raises(KeyError, match="no layer named 'layer9'"):
        ExitWrapper(net, ["layer9"], 10, (3, 32, 32))


def test_branch_heads_reach_the_last_stage_and_report_honest_macs(digits):
    from anycost.models.early_exit import BranchHead

    torch.manual_seed(0)
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1, widths=(8, 16, 32), head="branch").eval()
    assert all(isinstance(h, BranchHead) for h in m.heads)
    # a branch maps its tap to the last stage's width and size: (8, 8x8) -> 2 stride-2 steps + 1
    convs = [[l for l in h.body if isinstance(l, torch.nn.Conv2d)] for h in m.heads]
    assert [len(c) for c in convs] == [3, 2] and all(c[-1].out_channels == 32 for c in convs)
    light = create_model("test_ee_resnet", num_classes=10, in_chans=1, widths=(8, 16, 32))
    assert all(b > l for b, l in zip(m.head_macs, light.head_macs))  # deeper heads cost more, and it is counted
    x = _x(digits)
    for op in [OperatingPoint("t", {"policy": "threshold", "metric": "maxprob", "threshold": 0.3}),
               OperatingPoint("f0", {"policy": "fixed", "exit": 0})]:
        chk = check_reported_macs(m, x, op)
        assert chk.ok and chk.rel_err < 1e-6, (op.name, str(chk))
    with pytest.raises(ValueError, match="head must be"):
        create_model("test_ee_resnet", head="wide")


def test_init_from_a_run_of_the_same_model_takes_the_heads_too(tmp_path, digits):
    """Two-stage heads, then a joint fine-tune that starts from all of that run's weights."""
    torch.manual_seed(0)
    kw = {"mode": "heads", "widths": [8, 16, 32], "head": "branch"}
    train(_cfg(tmp_path / "heads", "test_ee_resnet", epochs=1, model_kwargs=kw), data=digits)
    from anycost.zoo import resolve_model
    from anycost.train import init_weights

    src = resolve_model(str(tmp_path / "heads"))
    joint = create_model("test_ee_resnet", num_classes=10, in_chans=1, **{**kw, "mode": "joint"})
    init_weights(joint, str(tmp_path / "heads"))
    ref = src.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in joint.state_dict().items())
    with pytest.raises(Exception, match="init_from"):  # other exits: the shapes differ, a clear error
        init_weights(create_model("test_ee_resnet", num_classes=10, in_chans=1, widths=[8, 16, 32], exits="1"),
                     str(tmp_path / "heads"))
