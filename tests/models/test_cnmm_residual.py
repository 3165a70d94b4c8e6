"""The residual grid (ResCNMM): identity skips, per-batch and budget sampling, the sandwich
rule, and the mechanisms that need a trained model (greedy edge order, unit weights)."""

import math

import pytest
import torch

from anycost.cost import check_reported_macs, count_macs, module_macs
from anycost.data import BatchLoader, load_dataset
from anycost.eval import OperatingPoint, evaluate_curve
from anycost.models import create_model
from anycost.models.cnmm import GridSpec, PruneSpec, ResCNMM, check_path, pruning_operating_points, spec_on_path
from anycost.train import TrainConfig, train


def test_residual_grid_structure_and_full_export():
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1).eval()
    assert isinstance(m, ResCNMM) and m.grid == GridSpec(4, 3)
    # only the diagonal nodes (s, s) lack an identity: their single edge is always on
    diag = [i for i, (l, s) in enumerate(m.node_list) if i and l == s]
    assert [d for (_, d), mand in zip(m.edge_list, m.mandatory.tolist()) if mand] == diag
    assert torch.equal(m.probabilities()[m.mandatory], torch.ones(len(diag)))
    x = torch.randn(3, 1, 8, 8)
    net = m.prune(m.full_macs(), "edges").eval()
    assert torch.allclose(net(x), m(x), atol=1e-5)
    assert net.macs == m.full_macs() == module_macs(m, (1, 8, 8)) == count_macs(net, x) // 3
    with pytest.raises(ValueError, match="classifies only"):
        create_model("test_cnmm_r", task="segment")


def test_residual_training_runs_one_network_per_batch_and_skips_the_rest():
    torch.manual_seed(0)
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, init_logit=0.0, keep_max=1.0).train()
    x = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8).contiguous()
    outs = [m(x) for _ in range(6)]
    assert all(torch.allclose(o[0], o[3]) for o in outs)  # one network for the whole batch
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])  # another one next batch
    torch.manual_seed(1)
    loss, _ = m.training_loss(x, torch.tensor([0, 1, 2, 3]), criterion=torch.nn.CrossEntropyLoss())
    loss.backward()
    ran = [e.conv1.weight.grad is not None for e in m.edges]
    assert not all(ran) and any(ran)  # skipped edges cost nothing and learn nothing this step
    assert all(r for r, mand in zip(ran, m.mandatory.tolist()) if mand)
    g = m.logits.grad
    # straight-through: keep logits learn from the optional edges that ran, not from skipped ones
    assert all((g[e] != 0) == (ran[e] and not m.mandatory[e]) for e in range(len(ran)))


def test_residual_training_skips_sampled_edges_that_cannot_reach_the_output():
    """A sampled edge whose every way on to the output is off is not run: it would change
    neither the output nor any gradient, only the cost of the step."""
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, init_logit=0.0, keep_max=1.0).train()
    ran = []
    for i, e in enumerate(m.edges):
        e.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i))
    x = torch.randn(4, 1, 8, 8)
    skipped_some = False
    for seed in range(30):
        torch.manual_seed(seed)
        sampled = {e for e, v in enumerate((torch.rand(len(m.edge_list)) < m.probabilities()).tolist()) if v}
        ran.clear()
        torch.manual_seed(seed)
        out = m(x)
        alive = m._alive(sampled)
        assert set(ran) == alive  # mandatory edges, plus the sampled ones that reach the output
        skipped_some |= bool(sampled - alive)  # alive holds every mandatory edge
        # the step runs exactly the network that pruning to these edges deploys (weight 1)
        net = m.build_pruned(PruneSpec(sorted(sampled), unit_weights=True)).train()
        assert torch.allclose(net(x), out, atol=1e-5)
    assert skipped_some


def test_residual_cheapest_network_is_the_diagonal_chain():
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1).eval()
    spec = m.prune_edges(0.0 + m.stem_macs + m.head_macs + sum(
        c for c, mand in zip(m.edge_macs, m.mandatory.tolist()) if mand))
    assert spec is not None and m._alive(set(spec.edges)) == {e for e, k in enumerate(m.mandatory.tolist()) if k}
    assert m.prune_edges(m.stem_macs) is None
    with pytest.raises(ValueError, match="below the cheapest network"):
        m.prune(m.stem_macs, "edges")
    # dropping every optional edge is the mixture with their probabilities at zero
    x = torch.randn(2, 1, 8, 8)
    net = m.build_pruned(spec).eval()
    with torch.no_grad():
        m.logits[~m.mandatory] = -float("inf")
    assert torch.allclose(net(x), m(x), atol=1e-5)


def test_late_downsampling_grid():
    """scale_starts moves where each scale begins, so the always-on diagonals (the trunk of
    every network of the mixture) down-sample late, as a ResNet does, instead of at depths 1, 2."""
    assert GridSpec(4, 3, (0, 1, 2)).nodes() == GridSpec(4, 3).nodes()
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, scale_starts=(0, 2, 3)).eval()
    assert m.grid == GridSpec(4, 3, (0, 2, 3))
    # (3, 0) is gone: from there the 8x8 scale cannot be reached by depth 4
    assert m.node_list == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (4, 2)]
    mand = [(m.node_list[a], m.node_list[b]) for (a, b), k in zip(m.edge_list, m.mandatory.tolist()) if k]
    assert mand == [((1, 0), (2, 1)), ((2, 1), (3, 2))] and len(m.edge_list) == 8
    x = torch.randn(2, 1, 8, 8)
    net = m.prune(m.full_macs(), "edges").eval()
    assert torch.allclose(net(x), m(x), atol=1e-5)
    assert net.macs == m.full_macs() == module_macs(m, (1, 8, 8)) == count_macs(net, x) // 2
    cheapest = m.build_pruned(PruneSpec([])).eval()
    assert cheapest.macs == m.stem_macs + m.head_macs + sum(c for c, k in zip(m.edge_macs, m.mandatory.tolist()) if k)
    with torch.no_grad():
        m.logits[~m.mandatory] = -float("inf")
    assert torch.allclose(cheapest(x), m(x), atol=1e-5)
    for bad in [(0, 2), (1, 2, 3), (0, 2, 2), (0, 2, 5)]:
        with pytest.raises(ValueError, match="scale_starts"):
            create_model("test_cnmm_r", scale_starts=bad)


@pytest.fixture(scope="module")
def trained_res(tmp_path_factory):
    data = load_dataset("digits")
    torch.manual_seed(0)
    cfg = TrainConfig(model="test_cnmm_r", model_kwargs={"widths": [8, 16, 32], "cost_weight": 0.1, "slim_l1": 0.1},
                      dataset="digits", epochs=6, batch_size=64, flip=False, channels_last=False, progress=False,
                      out_dir=str(tmp_path_factory.mktemp("cnmm_r")))
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, widths=(8, 16, 32), cost_weight=0.1, slim_l1=0.1)
    train(cfg, model=m, data=data)
    return m.eval(), data


@pytest.mark.parametrize("mechanism", ["edges", "channels", "both"])
def test_residual_prune_meets_budget_and_counts_honestly(trained_res, mechanism):
    m, _ = trained_res
    x = torch.randn(5, 1, 8, 8)
    for frac in (0.8, 0.5, 0.3):
        net = m.prune(frac * m.full_macs(), mechanism).eval()
        assert net.macs <= frac * m.full_macs()
        assert count_macs(net, x) == 5 * net.macs
        assert check_reported_macs(m, x, OperatingPoint("p", {"prune": net.spec.to_dict()})).ok
        if mechanism == "channels":  # node widths stay whole; the branches' inner convs thin
            assert any(b.conv1.out_channels < b.conv2.out_channels for b in net.blocks)


def test_residual_mixture_is_usable_pruned_and_exported(trained_res, tmp_path):
    m, data = trained_res
    bn_loader = BatchLoader(data.train, 128, data.mean, data.std)
    res = pruning_operating_points(m, fractions=(1.0, 0.5, 0.25), bn_loader=bn_loader, bn_batches=3)
    ops = [op for v in res["ops"].values() for op in v]
    curve = evaluate_curve(m, data.get("holdout"), data.mean, data.std, ops, measured_on="holdout")
    acc = {p.operating_point.name: p.accuracy for p in curve.points}
    assert acc["edges 100%"] > 80 and acc["edges+bn 25%"] > 50  # it learned, and a quarter of it still works
    net = m.prune(0.4 * m.full_macs(), "both").eval()
    x = torch.randn(3, 1, 8, 8)
    ep = torch.export.export(net, (x,))
    torch.export.save(ep, str(tmp_path / "pruned.pt2"))
    assert torch.allclose(torch.export.load(str(tmp_path / "pruned.pt2")).module()(x), net(x), atol=1e-5)


def _calib_loss(m, spec, batches):
    net = m.build_pruned(spec).eval()
    with torch.no_grad():
        return sum(torch.nn.functional.cross_entropy(net(x), y, reduction="sum").item() for x, y in batches)


def test_greedy_path_is_nested_and_takes_the_cheapest_loss_per_mac(trained_res):
    """The calibrated edge order: nested networks from full to the diagonal chain, each step
    the removal with the least calib-loss increase per MAC saved (checked by brute force)."""
    m, data = trained_res
    batches = list(BatchLoader(data.get("calib"), 64, data.mean, data.std))
    path = m.greedy_edge_path(batches)
    full, chain = m.full_spec(), PruneSpec(sorted(m._alive(set())))
    assert path[0].edges == full.edges and path[-1].edges == chain.edges
    macs = [m.spec_macs(s) for s in path]
    assert all(a > b for a, b in zip(macs, macs[1:]))
    assert all(set(b.edges) < set(a.edges) for a, b in zip(path, path[1:]))
    # step one by brute force: every removal, with the edges it cuts off
    cur = _calib_loss(m, full, batches)
    cands = {frozenset(m._alive(set(full.edges) - {e})) for e in full.edges} - {frozenset(full.edges)}
    ratio = {c: (_calib_loss(m, PruneSpec(sorted(c)), batches) - cur) / (macs[0] - m.spec_macs(PruneSpec(sorted(c))))
             for c in cands}
    assert frozenset(path[1].edges) == min(ratio, key=ratio.get)
    # a budget takes the largest network on the path within it
    for f in (0.9, 0.5, 0.2):
        spec = spec_on_path(m, path, f * macs[0])
        i = [s.edges for s in path].index(spec.edges)
        assert macs[i] <= f * macs[0] and (i == 0 or macs[i - 1] > f * macs[0])
    assert spec_on_path(m, path, macs[-1] - 1) is None


def test_greedy_order_sees_what_the_probabilities_do_not(trained_res):
    """An edge whose branch outputs zero costs nothing to remove: the calibrated order drops
    it first even when its keep probability is the highest, where probability order keeps it."""
    import copy

    m, data = trained_res
    m = copy.deepcopy(m)
    batches = list(BatchLoader(data.get("calib"), 64, data.mean, data.std))
    opt = [e for e in range(len(m.edge_list)) if not m.mandatory[e] and m._alive(set(range(len(m.edge_list))) - {e})
           == set(range(len(m.edge_list))) - {e}]  # removals that cut nothing else
    dead = max(opt, key=lambda e: m.edge_macs[e])
    with torch.no_grad():
        m.edges[dead].bn2.weight.zero_()
        m.edges[dead].bn2.bias.zero_()
        m.logits[dead] = m.logits.max() + 5
    path = m.greedy_edge_path(batches)
    assert dead not in path[1].edges and set(path[0].edges) - set(path[1].edges) == {dead}
    assert dead in m.prune_edges(m.spec_macs(path[1])).edges  # probability order keeps it
    with pytest.raises(ValueError, match="greedy_edge_path"):
        m.prune_spec(0.5 * m.full_macs(), "greedy")
    with pytest.raises(ValueError, match="calib_loader"):
        pruning_operating_points(m, mechanisms=("greedy",))
    res = pruning_operating_points(m, fractions=(1.0, 0.5), mechanisms=("edges", "greedy"), calib_loader=batches)
    assert [PruneSpec.from_dict(d).edges for d in res["greedy_path"]] == [s.edges for s in path]
    assert [o.params["prune"]["edges"] for o in res["ops"]["greedy"]] == [s.edges for s in (
        path[0], next(s for s in path if m.spec_macs(s) <= 0.5 * m.full_macs()))]


def test_unit_weights_export_the_network_training_ran(trained_res):
    """greedy-unit: the kept edges at weight 1, as a training step runs a sampled network,
    where the default scales them by their mean-field p_e; same edges, same MACs."""
    m, data = trained_res
    x = torch.randn(4, 1, 8, 8)
    spec = m.prune_edges(0.5 * m.full_macs())
    unit = PruneSpec(spec.edges, unit_weights=True)
    assert PruneSpec.from_dict(unit.to_dict()) == unit and "unit_weights" not in spec.to_dict()
    assert PruneSpec.from_dict(spec.to_dict()) == spec  # records written before read as mean-field
    on = torch.zeros(len(m.edge_list))
    on[sorted(m._alive(set(spec.edges)))] = 1.0
    p = m.edge_weights()
    for s, w in ((spec, p * on), (unit, on)):
        net = m.build_pruned(s).eval()
        m.edge_weights = lambda w=w: w  # the grid with exactly these edge weights
        try:
            assert torch.allclose(net(x), m(x), atol=1e-5)
        finally:
            del m.edge_weights
        assert net.macs == m.spec_macs(spec) and count_macs(net, x) == 4 * net.macs
    assert not torch.allclose(m.build_pruned(unit).eval()(x), m.build_pruned(spec).eval()(x))
    batches = list(BatchLoader(data.get("calib"), 64, data.mean, data.std))
    res = pruning_operating_points(m, fractions=(1.0, 0.4), mechanisms=("greedy", "greedy-unit"), calib_loader=batches)
    g, u = res["ops"]["greedy"], res["ops"]["greedy-unit"]
    assert [o["prune"]["edges"] for o in g] == [o["prune"]["edges"] for o in u]
    assert all(o["prune"].get("unit_weights") for o in u) and not any("unit_weights" in o["prune"] for o in g)
    assert m.pruned_for(u[1]).weights == [1.0] * len(m.pruned_for(u[1]).weights)  # operating points carry it


def test_greedy_path_is_reused_and_checked(trained_res):
    """A greedy order found before (e.g. read from a calibrate record) gives the same points
    without searching; one that does not fit the model is refused."""
    m, data = trained_res
    batches = list(BatchLoader(data.get("calib"), 64, data.mean, data.std))
    found = pruning_operating_points(m, fractions=(1.0, 0.5, 0.3), mechanisms=("greedy",), calib_loader=batches)
    again = pruning_operating_points(m, fractions=(1.0, 0.5, 0.3), mechanisms=("greedy",), greedy_path=found["greedy_path"])
    assert again["greedy_path"] == found["greedy_path"]
    assert [o.params for o in again["ops"]["greedy"]] == [o.params for o in found["ops"]["greedy"]]
    path = found["greedy_path"]
    with pytest.raises(ValueError, match="empty"):
        check_path(m, [])
    with pytest.raises(ValueError, match="not nested"):
        check_path(m, [path[0], path[2], path[1]])
    with pytest.raises(ValueError, match="not an edge set"):
        check_path(m, [path[0], {"edges": [999]}])
    other = create_model("cnmm_r6", num_classes=10)
    with pytest.raises(ValueError, match="another model"):
        check_path(other, path)


def test_residual_prune_order_option_cuts_nothing_else_while_it_can():
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1).eval()
    with torch.no_grad():  # the exits into the last scale are the least probable edges
        m.logits.fill_(2.0)
        for e, (a, d) in enumerate(m.edge_list):
            if m.node_list[d][1] == 2 and m.node_list[a][1] == 1 and not m.mandatory[e]:
                m.logits[e] = -2.0
    full = m.full_macs()
    cut = m.prune_edges(0.9 * full)  # probability order: cutting the last exit drops a whole scale
    gentle = m.prune_edges(0.9 * full, avoid_cascades=True)
    assert m.spec_macs(gentle) <= 0.9 * full and m.spec_macs(cut) <= 0.9 * full
    assert len(gentle.edges) == len(m.edge_list) - 2 and len(cut.edges) < len(m.edge_list) - 4
    # gentle: two edges, each alone; probability order: its second cut is the last exit, and a scale goes with it
    for f in (0.5, 0.2):  # both still meet any reachable budget
        assert m.spec_macs(m.prune_edges(f * full, avoid_cascades=True)) <= f * full


def _ran_edges(m, x):
    """Indices of the edges whose branch ran in one forward of m."""
    ran = set()
    hooks = [e.register_forward_hook(lambda mod, i, o, k=k: ran.add(k)) for k, e in enumerate(m.edges)]
    m(x)
    for h in hooks:
        h.remove()
    return ran


def test_budget_sampling_trains_the_networks_pruning_deploys():
    torch.manual_seed(0)
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, sampling="budget", order_noise=(0.0, 0.0))
    with torch.no_grad():  # a strict order, so that pruning by probability is unambiguous
        m.logits.copy_(torch.linspace(-2, 2, len(m.edge_list))[torch.randperm(len(m.edge_list))])
    x = torch.randn(2, 1, 8, 8)
    seen = set()
    for _ in range(40):
        ran = _ran_edges(m.train(), x)
        macs = m.spec_macs(PruneSpec(sorted(ran)))
        # without noise, every batch runs exactly the network edge pruning keeps at its MACs
        assert ran == m._alive(set(m.prune_edges(macs).edges))
        seen.add(macs)
    assert len(seen) >= 4  # budgets vary from batch to batch
    assert min(seen) < 0.5 * m.full_macs() < max(seen)
    # kept edges run at weight 1 everywhere: eval is the full network, and exports agree
    m.eval()
    assert torch.equal(m.edge_weights(), torch.ones(len(m.edge_list)))
    for frac in (1.0, 0.5):
        net = m.prune(frac * m.full_macs(), "edges").eval()
        assert all(w == 1.0 for w in net.weights)
    assert torch.allclose(m.prune(m.full_macs(), "edges").eval()(x), m(x), atol=1e-5)


def test_budget_sampling_with_noise_runs_valid_networks_and_learns_logits():
    torch.manual_seed(0)
    m = create_model("test_cnmm_r", num_classes=10, in_chans=1, sampling="budget", order_noise=(5.0, 5.0)).train()
    x = torch.randn(4, 1, 8, 8)
    mand = {e for e, k in enumerate(m.mandatory.tolist()) if k}
    nets = set()
    for _ in range(20):
        ran = _ran_edges(m, x)
        assert mand <= ran and m._alive(ran) == ran  # the always-on chain, and no dead branch computed
        nets.add(frozenset(ran))
    assert len(nets) >= 5  # noisy order: many networks of the mixture
    m.zero_grad()
    loss, _ = m.training_loss(x, torch.tensor([0, 1, 2, 3]), criterion=torch.nn.CrossEntropyLoss())
    loss.backward()
    ran = [e.conv1.weight.grad is not None for e in m.edges]
    assert all((m.logits.grad[e] != 0) == (ran[e] and e not in mand) for e in range(len(ran)))


def test_sandwich_trains_the_full_and_cheapest_networks_too():
    """sandwich=True: one step runs the sampled network, the full mean-field network (the one
    eval deploys) and the diagonal chain, averages their losses, and hands all three logits
    back; the full network's pass leaves the mixing probabilities to the sampled one."""
    torch.manual_seed(0)
    kw = dict(num_classes=10, in_chans=1, init_logit=0.0, keep_max=0.6)
    m = create_model("test_cnmm_r", sandwich=True, **kw)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    m.train()
    full, chain = m(x, net="full"), m(x, net="min")
    m.eval()
    # BN in train mode normalises by the batch, so compare each against eval with batch BN
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.train()
    with torch.no_grad():
        assert torch.allclose(full, m(x), atol=1e-5)  # eval (mean-field) path with the same BN mode
        m.logits[~m.mandatory] = -float("inf")
        assert torch.allclose(chain, m(x), atol=1e-5)  # every optional edge off
    for mode in (True, False):  # a misspelt net is an error in eval too, not silently the full mixture
        with pytest.raises(ValueError, match="net is"):
            m.train(mode)(x, net="largest")

    torch.manual_seed(0)
    m = create_model("test_cnmm_r", sandwich=True, **kw).train()
    crit = torch.nn.CrossEntropyLoss()
    torch.manual_seed(1)
    loss, outs = m.training_loss(x, y, criterion=crit)
    assert isinstance(outs, tuple) and len(outs) == 3 and all(o.shape == (4, 10) for o in outs)
    assert torch.allclose(loss, sum(crit(o, y) for o in outs) / 3)
    loss.backward()
    assert all(e.conv1.weight.grad is not None for e in m.edges)  # the full pass reaches every edge
    # the logits' gradient is the sampled pass's straight-through one only: a step of the full
    # and cheapest passes alone leaves them untouched
    m.zero_grad()
    (crit(m(x, net="full"), y) + crit(m(x, net="min"), y)).backward()
    assert m.logits.grad is None or not m.logits.grad.any()

    plain = create_model("test_cnmm_r", **kw).train()
    _, logits = plain.training_loss(x, y, criterion=crit)
    assert isinstance(logits, torch.Tensor)  # off by default: one network per step, as before


def test_sandwich_training_distils_every_network(tmp_path):
    """The trainer averages distillation over a tuple of logits and records accuracy on the
    first; a sandwich run trains end to end, and changes the weights against one without."""
    data = load_dataset("digits")
    base = dict(model="test_cnmm_r", dataset="digits", epochs=1, batch_size=64, flip=False, channels_last=False,
                progress=False)
    teacher = tmp_path / "teacher"
    train(TrainConfig(**base, out_dir=str(teacher)), data=data)
    ws = []
    for sw in (False, True):
        torch.manual_seed(0)
        m = create_model("test_cnmm_r", num_classes=10, in_chans=1, sandwich=sw)
        cfg = TrainConfig(**base, model_kwargs={"sandwich": sw}, teacher=str(teacher), distill=1.0,
                          out_dir=str(tmp_path / f"sw{int(sw)}"))
        rec = train(cfg, model=m, data=data)
        ws.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert math.isfinite(rec["results"]["final"]["train_loss"])
    assert not torch.allclose(ws[0], ws[1])


def test_residual_sampling_options_are_checked():
    with pytest.raises(ValueError, match="sampling is"):
        create_model("test_cnmm_r", sampling="paths")
    with pytest.raises(ValueError, match="order_noise"):
        create_model("test_cnmm_r", sampling="budget", order_noise=(1.0, -1.0))
