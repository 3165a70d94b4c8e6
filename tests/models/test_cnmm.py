"""The plain CNMM grid: structure, Concrete training, mean-field inference, pruning by edges
and channels (budgets met, MACs counted honestly), BN re-estimation, segmentation."""

import pytest
import torch

from anycost.cost import check_reported_macs, count_macs, module_macs
from anycost.data import BatchLoader, load_dataset
from anycost.eval import OperatingPoint, evaluate_curve
from anycost.models import create_model
from anycost.models.cnmm import CNMM, GridSpec, PrunedCNMM, anneal, pruning_operating_points, reestimate_bn
from anycost.segmentation import mean_iou, predict, synthetic_shapes, train_segmentation
from anycost.train import TrainConfig, train


def count_paths(m: CNMM) -> int:
    ways = {0: 1}
    for a, d in m.edge_list:
        ways[d] = ways.get(d, 0) + ways.get(a, 0)
    return ways[m.out_nodes[0]]


def test_grid_structure():
    g = GridSpec(depth=4, scales=3)
    nodes = g.nodes()
    assert nodes[0] == (0, 0) and nodes[-1] == (4, 2)
    assert (4, 0) not in nodes and (1, 2) not in nodes  # cannot reach / be reached
    m = create_model("test_cnmm", num_classes=10, in_chans=1)
    assert count_paths(m) == 6  # choose 2 down-steps among 4
    big = create_model("cnmm_d8")
    assert count_paths(big) == 28 and len(big.edge_list) > 20


def test_training_samples_a_network_per_example_and_inference_is_deterministic():
    torch.manual_seed(0)
    m = create_model("test_cnmm", num_classes=10, in_chans=1, init_logit=0.0)
    x = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8).contiguous()
    m.train()
    out = m(x)
    assert not torch.allclose(out[0], out[1])  # same image, different sampled sub-networks
    m.eval()
    assert torch.equal(m(x), m(x)) and torch.allclose(m(x)[0], m(x)[3])


def test_keep_max_drops_every_edge_for_a_share_of_examples():
    """Without the cap, confident edges are never off in training, so the networks that
    pruning leaves were never trained (what happened on CIFAR-10)."""
    torch.manual_seed(0)
    off = {}
    for km in (1.0, 0.6):
        m = create_model("test_cnmm", num_classes=10, in_chans=1, init_logit=8.0, keep_max=km).train()
        m.progress = 1.0  # final temperature
        off[km] = (m._masks(4000, "cpu") < 0.5).float().mean().item()
        assert torch.allclose(m.probabilities(), torch.full_like(m.logits, km * torch.sigmoid(torch.tensor(8.0)).item()))
    assert off[1.0] < 0.01 and 0.3 < off[0.6] < 0.5
    x = torch.randn(3, 1, 8, 8)
    m.eval()  # the mean-field output and the exported full network use the capped probabilities
    assert torch.allclose(PrunedCNMM(m, m.full_spec()).eval()(x), m(x), atol=1e-5)
    with pytest.raises(ValueError, match="keep_max"):
        create_model("test_cnmm", keep_max=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = load_dataset("digits")
    torch.manual_seed(0)
    cfg = TrainConfig(model="test_cnmm", model_kwargs={"widths": [8, 16, 32]}, dataset="digits", epochs=6, batch_size=64,
                      flip=False, channels_last=False, progress=False, out_dir=str(tmp_path_factory.mktemp("cnmm")))
    m = create_model("test_cnmm", num_classes=10, in_chans=1, widths=(8, 16, 32))
    train(cfg, model=m, data=data)
    return m.eval(), data


def test_full_pruned_network_equals_mixture_output(trained):
    m, data = trained
    x = torch.randn(5, 1, 8, 8)
    net = PrunedCNMM(m, m.full_spec()).eval()
    assert torch.allclose(net(x), m(x), atol=1e-4)
    assert net.macs == m.full_macs() == module_macs(m, (1, 8, 8))


@pytest.mark.parametrize("mechanism", ["edges", "channels", "both"])
def test_prune_meets_budget_and_counts_honestly(trained, mechanism):
    m, _ = trained
    x = torch.randn(6, 1, 8, 8)
    fracs = (0.8, 0.6) if mechanism == "edges" else (0.8, 0.5, 0.3)  # edges alone bottom out at one path
    for frac in fracs:
        budget = frac * m.full_macs()
        net = m.prune(budget, mechanism).eval()
        assert net.macs <= budget
        assert count_macs(net, x) == 6 * net.macs  # FlopCounterMode / 2 equals the accounting
        op = OperatingPoint("p", {"prune": net.spec.to_dict()})
        chk = check_reported_macs(m, x, op)
        assert chk.ok and chk.rel_err == 0
    with pytest.raises(ValueError, match="below the cheapest network"):
        m.prune(0.01 * m.full_macs(), mechanism)


def test_edge_pruning_bottoms_out_at_a_single_path(trained):
    m, _ = trained
    single = None
    for frac in [f / 100 for f in range(100, 0, -1)]:
        spec = m.prune_edges(frac * m.full_macs())
        if spec is None:
            break
        single = spec
    assert single is not None and len(single.edges) == m.grid.depth  # one edge per layer: a plain CNN
    assert count_paths_in(m, single) == 1


def count_paths_in(m, spec):
    ways = {0: 1}
    for e in sorted(spec.edges):
        a, d = m.edge_list[e]
        ways[d] = ways.get(d, 0) + ways.get(a, 0)
    return ways.get(m.out_nodes[0], 0)


def test_edge_pruning_removes_least_probable_edges_first(trained):
    m, _ = trained
    with torch.no_grad():
        m.logits.copy_(torch.linspace(-3, 3, len(m.edge_list)))
    spec = m.prune_edges(0.7 * m.full_macs())
    dropped = set(range(len(m.edge_list))) - set(spec.edges)
    assert dropped and min(dropped) == 0  # the least probable edge went first


def test_one_model_many_operating_points(trained):
    m, data = trained
    bn_loader = BatchLoader(data.train, 128, data.mean, data.std)
    res = pruning_operating_points(m, fractions=(1.0, 0.5, 0.25), bn_loader=bn_loader, bn_batches=3)
    assert set(res["ops"]) >= {"edges", "channels", "both", "edges+bn"}
    ops = [op for v in res["ops"].values() for op in v]
    curve = evaluate_curve(m, data.get("holdout"), data.mean, data.std, ops, measured_on="holdout")
    macs = sorted(p.macs_mean for p in curve.points)
    assert macs[-1] / macs[0] > 3
    full = next(p for p in curve.points if p.operating_point.name == "edges 100%")
    assert full.accuracy > 50  # it learned; chance is 10 %
    bn = next(p for p in ops if p.name == "edges+bn 50%")
    # the statistics are op state held by the model under the point's name, not params
    assert bn.params["bn"] is True and bn.params["mechanism"] == "edges"
    assert "edges+bn 50%" in m.op_state() and "edges 50%" not in m.op_state()
    assert all(isinstance(v, torch.Tensor) for v in m.op_state()["edges+bn 50%"].values())


def test_bn_reestimation_changes_statistics_not_weights(trained):
    m, data = trained
    net = m.prune(0.5 * m.full_macs(), "edges")
    w = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    before = [b.running_mean.clone() for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    reestimate_bn(net, BatchLoader(data.train, 128, data.mean, data.std), batches=2)
    after = [b.running_mean for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert any(not torch.allclose(a, b) for a, b in zip(before, after))
    assert all(torch.equal(w[k], v) for k, v in net.state_dict().items() if k in w)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream but still asked for
def test_export_runs_under_torchscript(trained, tmp_path):
    m, _ = trained
    net = m.prune(0.4 * m.full_macs(), "both").eval()
    x = torch.randn(3, 1, 8, 8)
    traced = torch.jit.trace(net, x)
    traced.save(str(tmp_path / "pruned.pt"))
    loaded = torch.jit.load(str(tmp_path / "pruned.pt"))
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert loaded(torch.randn(7, 1, 8, 8)).shape == (7, 10)
    # torch.export, the successor of TorchScript, takes the same static network
    ep = torch.export.export(net, (x,))
    torch.export.save(ep, str(tmp_path / "pruned.pt2"))
    assert torch.allclose(torch.export.load(str(tmp_path / "pruned.pt2")).module()(x), net(x), atol=1e-5)


def test_cost_term_pushes_mixing_weights_down():
    m = create_model("test_cnmm", num_classes=10, in_chans=1, cost_weight=100.0)
    loss, _ = m.training_loss(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), criterion=torch.nn.CrossEntropyLoss())
    loss.backward()
    assert (m.logits.grad > 0).sum() > len(m.edge_list) // 2  # gradient descent lowers most logits
    assert 0 < float(m.expected_macs_fraction().detach()) <= 1


def test_segmentation_on_synthetic_shapes():
    torch.manual_seed(0)
    x, y = synthetic_shapes(160, size=16, num_classes=3)
    m = CNMM(num_classes=3, depth=4, scales=3, widths=(8, 16, 16), input_hw=16, task="segment")
    losses = train_segmentation(m, x[:128], y[:128], epochs=8)
    assert losses[-1] < losses[0]
    miou = mean_iou(predict(m, x[128:]), y[128:], 3)
    chance = mean_iou(torch.zeros_like(y[128:]), y[128:], 3)
    assert miou > chance + 15
    net = m.prune(0.5 * m.full_macs(), "edges").eval()
    assert net(x[:2]).shape == (2, 3, 16, 16)
    assert count_macs(net, x[:2]) == 2 * net.macs
    assert check_reported_macs(m, x[:4], OperatingPoint("p", {"prune": net.spec.to_dict()})).ok


def test_voc_layout_loader(tmp_path):
    import numpy as np
    from PIL import Image

    from anycost.data import DataError
    from anycost.segmentation import load_voc_segmentation

    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / d).mkdir(parents=True)
    ids = ["2007_000001", "2007_000002"]
    for k, i in enumerate(ids):
        Image.fromarray(np.full((20, 30, 3), 40 * k, dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"{i}.jpg")
        seg = np.zeros((20, 30), dtype=np.uint8)
        seg[5:15, 10:20] = k + 1
        seg[0, 0] = 255  # VOC's "ignore" border value
        p = Image.fromarray(seg, mode="P")
        p.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        p.save(tmp_path / "SegmentationClass" / f"{i}.png")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids))
    x, y = load_voc_segmentation(tmp_path, "train", size=16)
    assert x.shape == (2, 3, 16, 16) and y.shape == (2, 16, 16)
    assert set(y[1].unique().tolist()) <= {0, 2, 255} and (y[1] == 2).any()
    with pytest.raises(DataError, match="val.txt: not found"):
        load_voc_segmentation(tmp_path, "val")
    (tmp_path / "SegmentationClass" / f"{ids[0]}.png").unlink()
    with pytest.raises(DataError, match="2007_000001.png: not found"):
        load_voc_segmentation(tmp_path, "train")


def test_anneal_is_geometric_and_reaches_zero():
    assert anneal(1.0, 0.2, 0.0) == 1.0 and anneal(1.0, 0.2, 1.0) == pytest.approx(0.2)
    assert anneal(1.0, 0.01, 0.5) == pytest.approx(0.1)  # geometric: the midpoint is the geometric mean
    assert anneal(1.0, 0.0, 1.0) == 0.0 and anneal(1.0, 0.0, 0.5) == 0.5  # an end at 0 is reached linearly
    assert anneal(0.0, 0.0, 0.3) == 0.0 and anneal(1.0, 0.2, 7.0) == pytest.approx(0.2)  # progress is clamped
