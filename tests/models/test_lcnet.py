import pytest
import torch

from anycost.cost import check_reported_macs, count_macs
from anycost.data import BatchLoader, load_dataset
from anycost.core import OperatingPoint
from anycost.eval import evaluate_curve
from anycost.models import create_model
from anycost.train import TrainConfig, train
from lcnet_util import randomise_predictors

VARIANTS = [("lnet", dict(layers=True, channels=False)), ("cnet", dict(layers=False, channels=True)),
            ("lcnet", dict(layers=True, channels=True)), ("cond", dict(layers=True, channels=True, conditioned=True))]


def varied(n):
    """Inputs whose pooled statistics differ (plain noise pools to ~0 for every input)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g) * (0.5 + 2 * torch.rand(n, 1, 1, 1, generator=g)) \
        + 2 * torch.randn(n, 1, 1, 1, generator=g)


def tiny(kw, **extra):
    torch.manual_seed(0)
    return create_model("test_lcnet", num_classes=10, in_chans=1, widths=(8, 16, 32), **kw, **extra)


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_reported_macs_are_honest(name, kw):
    m = randomise_predictors(tiny(kw))
    x = varied(12)
    fixed = OperatingPoint("fixed", {"fixed": m.derive_fixed(x, m.default_operating_points()[1])})
    for op in m.default_operating_points() + [fixed]:
        for xs in (x, x[:1], x[5:6]):  # batch 1 takes its own path
            chk = check_reported_macs(m, xs, op)
            assert chk.ok and chk.rel_err < 1e-6, (name, op.name, str(chk))


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_real_skipping_matches_masked_forward_and_batch_of_one(name, kw):
    m = randomise_predictors(tiny(kw))
    x = varied(10)
    op = OperatingPoint("t", {"tau": 0.5, "budget": 0.5} if kw.get("conditioned") else {"tau": 0.5})
    out = m.infer(x, op)
    if not kw.get("conditioned"):  # forward() uses the default target as budget; compare like with like
        assert torch.allclose(out.logits, m(x), atol=1e-4)
    ones = [m.infer(x[i:i + 1], op) for i in range(10)]
    assert torch.allclose(out.logits, torch.cat([o.logits for o in ones]), atol=1e-4)
    assert torch.equal(out.macs, torch.cat([o.macs for o in ones]))
    assert out.macs.min() < out.macs.max()  # decisions really differ per input


def test_thresholds_and_budgets_trade_macs():
    m = randomise_predictors(tiny(dict(layers=True, channels=True)))
    x = varied(32)
    macs = [m.infer(x, OperatingPoint("t", {"tau": t})).macs.mean().item() for t in (0.1, 0.5, 0.9)]
    assert macs[0] >= macs[1] >= macs[2] and macs[0] > macs[2]
    full = m.infer(x, OperatingPoint("full", {"execute_all": True})).macs
    assert torch.all(full == m.full_macs + sum(m.pred_macs))
    assert torch.equal(m.infer(x).macs, full)  # no point: the most expensive one


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(tmp, model_kwargs, data, epochs=8, **cfg_kw):
    cfg = TrainConfig(model="test_lcnet", model_kwargs=model_kwargs, dataset="digits", epochs=epochs, batch_size=64,
                      flip=False, channels_last=False, progress=False, out_dir=str(tmp), **cfg_kw)
    torch.manual_seed(0)
    train(cfg, data=data)
    from anycost.zoo import load_model_file

    return load_model_file(tmp / "last.pt")


@pytest.mark.slow
def test_cost_penalty_learns_to_skip(tmp_path, digits):
    m = _train(tmp_path, {"widths": [8, 16, 32], "target": 0.4, "lam": 4.0}, digits)
    c = evaluate_curve(m, digits.get("holdout"), digits.mean, digits.std, m.operating_points(), measured_on="holdout")
    by = {p.operating_point.name: p for p in c.points}
    assert by["tau 0.50"].macs_mean < 0.8 * by["full"].macs_mean  # it learned to skip
    assert by["tau 0.50"].accuracy > 60  # and still classifies (chance: 10 %)


@pytest.mark.slow
def test_budget_conditioned_model_follows_its_budget(tmp_path, digits):
    m = _train(tmp_path, {"widths": [8, 16, 32], "conditioned": True, "lam": 4.0, "budget_min": 0.2}, digits)
    x = next(iter(BatchLoader(digits.get("holdout"), 128, digits.mean, digits.std)))[0]
    lo = m.infer(x, OperatingPoint("b", {"budget": 0.25})).macs.mean()
    hi = m.infer(x, OperatingPoint("b", {"budget": 1.0})).macs.mean()
    assert lo < hi


def test_start_from_a_trained_resnet(tmp_path, digits):
    cfg = TrainConfig(model="resnet14", model_kwargs={"widths": [8, 16, 32]}, dataset="digits", epochs=1, batch_size=64,
                      flip=False, channels_last=False, progress=False, out_dir=str(tmp_path / "r14"))
    train(cfg, data=digits)
    m = _train(tmp_path / "lc", {"widths": [8, 16, 32]}, digits, epochs=1, init_from=str(tmp_path / "r14"))
    assert m.backbone.fc.weight.shape == (10, 32)
    with pytest.raises(Exception, match="does not match"):
        _train(tmp_path / "bad", {"widths": [4, 8, 16]}, digits, epochs=1, init_from=str(tmp_path / "r14"))


def test_lcnet_on_a_torchvision_resnet18():
    """ImageNet users: LC-Net around torchvision's resnet18 (downsample shortcuts and the
    max-pool stem are measured and always charged); honest MACs, real skipping."""
    from torchvision.models import resnet18

    from anycost.models.lcnet import LCResNet

    torch.manual_seed(0)
    m = randomise_predictors(LCResNet.from_torchvision(resnet18(num_classes=10), input_hw=32))
    assert len(m.blocks_list) == 8 and sum(m.shortcut_macs) > 0 and m.input_size == (3, 32, 32)
    x = torch.randn(6, 3, 32, 32) * (0.5 + 2 * torch.rand(6, 1, 1, 1))
    for op in m.operating_points():
        chk = check_reported_macs(m, x, op)
        assert chk.ok and chk.rel_err < 1e-6, (op.name, str(chk))
    full = m.infer(x, OperatingPoint("full", {"execute_all": True}))
    assert torch.all(full.macs == m.full_macs + sum(m.pred_macs))
    # exports keep the downsample shortcuts (1x1 conv + BN) and count what infer reports
    tau = OperatingPoint("t", {"tau": 0.5})
    fixed = OperatingPoint("f", {"fixed": m.derive_fixed(x, tau)})
    for op in (tau, fixed):
        net, ref = m.export(op), m.infer(x, op)
        with torch.no_grad():
            assert torch.allclose(net(x), ref.logits, atol=1e-4), op.name
        assert count_macs(net, x[:1]) == ref.macs[0].item(), op.name
    loss, _ = m.training_loss(x, torch.arange(6), criterion=torch.nn.CrossEntropyLoss())
    loss.backward()
    assert m.predictors[0].fc1.weight.grad is not None


def test_batch_penalty_lets_inputs_differ_while_the_mean_meets_the_budget():
    """Per-input costs 0.3 and 0.7 of the full MACs against a 0.5 target: the per-input
    hinge charges the expensive input, the batch hinge charges nothing (mean = 0.5)."""
    charges = {}
    for penalty in ("example", "batch"):
        m = tiny(dict(layers=True, channels=False), target=0.5, lam=4.0, penalty=penalty).train()
        logits = torch.zeros(2, 10)
        m.forward_train = lambda x, budget=None, m=m: (logits, torch.tensor([0.3, 0.7]) * m.full_macs, torch.zeros(2, 1), torch.ones(2))
        loss, _ = m.training_loss(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.nn.CrossEntropyLoss())
        charges[penalty] = loss.item() - torch.log(torch.tensor(10.0)).item()
    assert charges["example"] == pytest.approx(4.0 * 0.2 ** 2 / 2, rel=1e-4)
    assert charges["batch"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="penalty"):
        tiny(dict(layers=True, channels=False), penalty="sample")


def test_gate_l2_charges_the_squared_gate_logits():
    """gate_l2 adds gate_l2 * mean(logit ** 2) over every gate of every input, nothing else."""
    torch.manual_seed(0)
    x, y = varied(4), torch.tensor([0, 1, 2, 3])
    ce = torch.nn.CrossEntropyLoss()
    losses = {}
    for g in (0.0, 0.5):
        m = randomise_predictors(tiny(dict(layers=True, channels=True), gate_l2=g)).eval()  # eval: no Gumbel noise
        losses[g] = m.training_loss(x, y, ce)[0].item()
        gates = m.forward_train(x)[2]
    assert gates.shape == (4, sum(1 + b.planes for b in m.blocks_list))
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * gates.pow(2).mean().item(), rel=1e-4)


def test_target_ramp_eases_the_budget_in():
    m = tiny(dict(layers=True, channels=False), target=0.4, lam=4.0, target_ramp=0.5).train()
    t = torch.full((3,), 0.4)
    assert torch.allclose(m.ramped(t, 0.0), torch.ones(3))  # start: the whole backbone is within budget
    assert torch.allclose(m.ramped(t, 0.25), torch.full((3,), 0.7))
    assert torch.allclose(m.ramped(t, 0.5), t) and torch.allclose(m.ramped(t, 0.9), t)
    x, y = varied(16), torch.arange(16) % 10
    ce = torch.nn.CrossEntropyLoss()
    losses = []
    for progress in (0.0, 1.0):  # same Gumbel noise, same decisions: only the budget differs
        torch.manual_seed(0)
        losses.append(m.training_loss(x, y, ce, progress=progress)[0].item())
    assert losses[0] < losses[1]  # the fresh model (all gates open) pays for overshooting only at the end
    with pytest.raises(ValueError, match="target_ramp"):
        tiny(dict(layers=True, channels=False), target_ramp=1.5)


def test_lcnet_starts_from_a_trained_lnet_as_that_lnet():
    """Staged LC-Net: from an L-Net, the backbone and layer decisions carry over and the new
    channel decisions start as 'keep all at scale 1', so the two compute the same function;
    a C-Net carries its channel rows over; other mismatches stay clear errors."""
    from anycost.checkpoint import CheckpointError

    lnet = randomise_predictors(tiny(dict(layers=True, channels=False)))
    lc = tiny(dict(layers=True, channels=True))
    lc.init_from_trained(lnet)
    lc.eval()
    x = varied(16)
    for tau in (0.3, 0.5, 0.9):
        op = OperatingPoint("t", {"tau": tau})
        a, b = lnet.infer(x, op), lc.infer(x, op)
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        assert torch.equal(a.path, b.path)  # blocks skipped per input
        # the same blocks run; only the larger predictors cost more
        extra = sum(q - p for p, q in zip(lnet.pred_macs, lc.pred_macs))
        assert torch.allclose(b.macs, a.macs + extra)
    cnet = randomise_predictors(tiny(dict(layers=False, channels=True)))
    lc2 = tiny(dict(layers=True, channels=True))
    lc2.init_from_trained(cnet)
    for p, q in zip(lc2.predictors, cnet.predictors):
        assert torch.equal(p.fc2.weight[p.rows("channels")], q.fc2.weight)
        assert torch.equal(p.fc2.bias[:2], torch.tensor([3.0, 0.0]))  # fresh layer rows: execute
    with pytest.raises(CheckpointError, match="does not match"):
        tiny(dict(layers=True, channels=True, conditioned=True)).init_from_trained(lnet)
    with pytest.raises(CheckpointError, match="does not match"):
        create_model("lcnet_resnet20").init_from_trained(lnet)


def test_staged_training_from_an_lnet_run(tmp_path, digits):
    """--init-from a trained L-Net run folder reaches init_from_trained, and an LC-Net trains from it."""
    from anycost.train import init_weights

    lnet = _train(tmp_path / "l", {"widths": [8, 16, 32], "channels": False}, digits, epochs=1).eval()
    lc = tiny(dict(layers=True, channels=True))
    init_weights(lc, str(tmp_path / "l"))
    x = varied(8)
    assert torch.allclose(lc.eval().infer(x).logits, lnet.infer(x).logits, atol=1e-5)
    m = _train(tmp_path / "lc", {"widths": [8, 16, 32]}, digits, epochs=1, init_from=str(tmp_path / "l"))
    assert m.layers and m.channels


def test_channel_init_sets_the_channel_gates_starting_logit():
    m = tiny(dict(layers=True, channels=True), channel_init=1.5)
    for p, blk in zip(m.predictors, m.blocks_list):
        c = p.rows("channels")
        assert torch.all(p.fc2.bias[c][:blk.planes] == 1.5) and torch.all(p.fc2.bias[c][blk.planes:] == 0)
        assert p.fc2.bias[0] == 3.0  # the layer gate keeps its own start


def test_channel_target_charges_the_kept_share_of_executed_blocks():
    """channel_target adds channel_lam * relu(kept - c) ** 2, where kept is the MAC-weighted
    share of the executed blocks' channels kept: 0 when every channel of a running block is
    off, 1 when all are on, and skipped blocks do not count."""
    torch.manual_seed(0)
    x, y = varied(4), torch.tensor([0, 1, 2, 3])
    ce = torch.nn.CrossEntropyLoss()
    def flat(m):  # input-independent gates: every logit is its bias
        for p in m.predictors:
            p.fc2.weight.data.zero_()
        return m.eval()  # eval: no Gumbel noise

    base = flat(tiny(dict(layers=True, channels=True), target=1.0))  # target 1: no MAC charge
    # every channel gate at logit 3 (p = 0.953) and every layer gate at 3: kept = 0.953 exactly
    kept = base.forward_train(x)[3]
    assert torch.allclose(kept, torch.full((4,), torch.sigmoid(torch.tensor(3.0)).item()), atol=1e-6)
    p0, b0 = base.predictors[0], base.blocks_list[0]
    p0.fc2.bias.data[p0.rows("channels")][:b0.planes] = -30.0  # block 0 runs with no channel kept
    k = torch.sigmoid(torch.tensor(3.0)).item()
    macs = [a + b for a, b in zip(base.conv1_macs, base.conv2_macs)]
    pl = [k] * len(macs)
    want = k * sum(p * c for p, c in zip(pl[1:], macs[1:])) / sum(p * c for p, c in zip(pl, macs))
    assert torch.allclose(base.forward_train(x)[3], torch.full((4,), want), atol=1e-6)
    p0.fc2.bias.data[0] = -30.0  # ... and now block 0 is skipped: it no longer counts
    assert torch.allclose(base.forward_train(x)[3], torch.full((4,), k), atol=1e-6)
    losses = {}
    for ct in (None, 0.5, 0.99):
        m = flat(tiny(dict(layers=True, channels=True), target=1.0, channel_target=ct, channel_lam=8.0))
        losses[ct] = m.training_loss(x, y, ce)[0].item()
    assert losses[0.5] - losses[None] == pytest.approx(8.0 * (k - 0.5) ** 2, rel=1e-4)
    assert losses[0.99] == pytest.approx(losses[None], abs=1e-6)  # under the target: free
    # the charge reaches the channel gates, not the layer gates (their probabilities are detached)
    m = flat(tiny(dict(layers=True, channels=True), target=1.0, channel_target=0.5, channel_lam=8.0, lam=0.0))
    m.predictors[0].fc2.bias.grad = None
    (m.training_loss(x, y, ce)[0] - ce(m(x), y)).backward()
    g = m.predictors[0].fc2.bias.grad
    p0 = m.predictors[0]
    assert g[0] == 0 and torch.all(g[p0.rows("channels")][:m.blocks_list[0].planes] > 0)
    with pytest.raises(ValueError, match="channel_target"):
        tiny(dict(layers=True, channels=False), channel_target=0.5)
    with pytest.raises(ValueError, match="channel_target"):
        tiny(dict(layers=True, channels=True), channel_target=1.5)
