"""The CNMM's side of the model contract: operating point params (plain JSON, checked), BN
statistics as op state under the point's name (round trip, clear errors, only shipped points
keep theirs), the per-point network cache, and the candidate search ``calibrate`` measures."""

import io
import json

import pytest
import torch

from anycost.cost import count_macs
from anycost.data import load_dataset
from anycost.deploy import load_torchscript, to_torchscript
from anycost.eval import OperatingPoint
from anycost.models import create_model
from anycost.models.cnmm import SearchConfig, bn_statistics_loader, point_name, split_legacy_bn

FAMILIES = ["test_cnmm", "test_cnmm_r"]
SEARCH = dict(batch_size=128, mechanisms=("edges", "channels"), fractions=(1.0, 0.5), bn_batches=2)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def _model(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=1)


def _x(data, n=16):
    m = torch.tensor(data.mean).view(1, -1, 1, 1)
    s = torch.tensor(data.std).view(1, -1, 1, 1)
    return (data.get("calib").images[:n].float() / 255 - m) / s


def _shipped_with_bn(name, data):
    """A model shipping every candidate of SEARCH (the +bn ones with their statistics)."""
    m = _model(name)
    m.set_operating_points(m.candidate_operating_points(data, "calib", **SEARCH))
    return m


def _bn_op(m, name="edges+bn 50%"):
    return m.find_op(name)


# ---------------------------------------------------------------------- params and op state


@pytest.mark.parametrize("name", FAMILIES)
def test_points_are_plain_json_and_bn_statistics_are_op_state(name, data):
    m = _shipped_with_bn(name, data)
    ops = m.operating_points()
    assert {tuple(sorted(o.params)) for o in ops} == {("bn", "budget_fraction", "mechanism", "prune")}
    assert all(isinstance(o["bn"], bool) for o in ops)
    text = json.dumps([o.to_dict() for o in ops])
    assert [OperatingPoint.from_dict(d) for d in json.loads(text)] == ops
    bn_names = {o.name for o in ops if o["bn"]}
    assert bn_names == set(m.op_state()) and "edges+bn 50%" in bn_names
    for state in m.op_state().values():
        assert state and all(k.endswith((".running_mean", ".running_var")) for k in state)
        assert "stem.1.running_mean" in state  # keys are the pruned network's own BN buffers
    # the statistics are what re-estimation found, and they change the outputs
    x = _x(data)
    assert not torch.allclose(m.infer(x, "edges+bn 50%").logits, m.infer(x, "edges 50%").logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_op_state_round_trip_gives_the_same_logits(name, data):
    """state_dict + op_state (through safetensors, keyed "<point>/<key>" as the zoo stores
    them) + the points' JSON -> a fresh model -> the same logits at every point."""
    from safetensors.torch import load, save

    m = _shipped_with_bn(name, data)
    flat = {f"{p}/{k}": v for p, s in m.op_state().items() for k, v in s.items()}
    back: dict = {}
    for key, v in load(save(flat)).items():
        p, _, k = key.partition("/")
        back.setdefault(p, {})[k] = v
    ops = json.loads(json.dumps([o.to_dict() for o in m.operating_points()]))
    new = _model(name, seed=1)
    new.load_state_dict(m.state_dict())
    new.load_op_state(back)
    new.set_operating_points(ops)
    x = _x(data)
    for op in m.operating_points():
        assert torch.equal(new.infer(x, op.name).logits, m.infer(x, op.name).logits), op.name
    # without the op state the same weights give other logits at a +bn point
    bare = _model(name, seed=1)
    bare.load_state_dict(m.state_dict())
    bn = _bn_op(m)
    fresh_stats = {k: torch.ones_like(v) if k.endswith("var") else torch.zeros_like(v) for k, v in m.op_state()[bn.name].items()}
    bare.put_op_state(bn.name, fresh_stats)  # BatchNorm's initial statistics, not the re-estimated ones
    assert not torch.allclose(bare.infer(x, bn).logits, m.infer(x, bn).logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_bn_point_without_its_state_is_a_clear_error(name, data):
    bn = _bn_op(_shipped_with_bn(name, data))
    m = _model(name)
    x = _x(data, 2)
    for call in (lambda: m.set_operating_points([bn]), lambda: m.infer(x, bn), lambda: m.export(bn)):
        with pytest.raises(ValueError, match="bn=True but the model holds no BatchNorm statistics.*load_op_state"):
            call()
    legacy = OperatingPoint(bn.name, dict(bn.params, bn={"stem.1": [[0.0], [1.0]]}))
    with pytest.raises(ValueError, match="old format.*op state"):
        m.infer(x, legacy)


def test_state_saved_for_another_spec_is_refused(data):
    m = _shipped_with_bn("test_cnmm", data)
    st = m.op_state()
    wrong = dict(st, **{"edges+bn 50%": st["channels+bn 50%"]})  # a channel-pruned network's statistics
    m.load_op_state(wrong)
    with pytest.raises(ValueError, match="do not fit its pruned network"):
        m.infer(_x(data, 2), "edges+bn 50%")
    with pytest.raises(ValueError, match="point name"):
        m.load_op_state({"p": {"stem.1.running_mean": [0.0]}})


def test_only_shipped_points_keep_their_state(data):
    m = _model("test_cnmm_r")
    cands = m.candidate_operating_points(data, "calib", **SEARCH)
    assert {o.name for o in cands if o["bn"]} == set(m.op_state())
    keep = [o for o in cands if o.name in ("edges+bn 50%", "edges 50%")]
    m.set_operating_points(keep)
    assert set(m.op_state()) == {"edges+bn 50%"}
    m.set_operating_points([m.default_op()])
    assert m.op_state() == {}


@pytest.mark.parametrize("name", FAMILIES)
def test_calibrate_keeps_the_state_of_the_points_it_ships(name, data):
    m = _model(name)
    ops = m.calibrate(data, "calib", **dict(SEARCH, mechanisms=("edges", "channels", "both"), fractions=(1.0, 0.6, 0.3)))
    assert all(o.calibrated for o in ops)
    assert set(m.op_state()) == {o.name for o in ops if o["bn"]}
    again = m.measure(data.get("calib"), data.mean, data.std, ops, split="calib")
    assert [o.accuracy for o in again] == [o.accuracy for o in ops]
    assert isinstance(m.candidate_info["unreachable"], list) and m.candidate_info["greedy_path"] is None


# ---------------------------------------------------------------------- check_op

def _full(m):
    return m.default_op().params


BAD = [
    (lambda m: {}, "params\\['prune'\\].*missing"),
    (lambda m: dict(_full(m), budget=1.0), "unknown params \\['budget'\\]"),
    (lambda m: dict(_full(m), prune={"edge": [0]}), "'edges' list"),
    (lambda m: dict(_full(m), prune={"edges": [0, len(m.edge_list)]}), "distinct edge indices 0\\.\\."),
    (lambda m: dict(_full(m), prune={"edges": [0, 0]}), "distinct edge indices"),
    (lambda m: dict(_full(m), prune={"edges": [1.0]}), "distinct edge indices"),
    (lambda m: dict(_full(m), prune={"edges": [1], "channels": {"2": [0]}}), "channels name edge '2'"),
    (lambda m: dict(_full(m), prune={"edges": [0], "channels": {"0": [99]}}), "channels of edge 0 must be distinct"),
    (lambda m: dict(_full(m), prune={"edges": [0], "channels": {"0": []}}), "channels of edge 0"),
    (lambda m: dict(_full(m), prune={"edges": [0], "unit_weights": "yes"}), "unit_weights"),
    (lambda m: dict(_full(m), mechanism="random"), "mechanism 'random' is not one of"),
    (lambda m: dict(_full(m), budget_fraction=0), "budget_fraction"),
    (lambda m: dict(_full(m), budget_fraction=1.5), "budget_fraction"),
    (lambda m: dict(_full(m), budget_fraction="half"), "budget_fraction"),
    (lambda m: dict(_full(m), bn="yes"), "bn must be true or false"),
]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad,match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_check_op_rejects_params_that_do_not_fit(name, bad, match, data):
    m = _model(name)
    op = OperatingPoint("p", bad(m))
    with pytest.raises(ValueError, match=match) as e:
        m.check_op(op)
    assert "\n" not in str(e.value) and "'p'" in str(e.value)  # one line, naming the point
    with pytest.raises(ValueError):
        m.infer(_x(data, 2), op)


def test_check_op_refuses_a_plain_grid_cut_in_two():
    m = _model("test_cnmm")
    op = OperatingPoint("p", dict(_full(m), prune={"edges": [0]}))  # a first edge that leads nowhere
    with pytest.raises(ValueError, match="no path from input to output"):
        m.check_op(op)
    res = _model("test_cnmm_r")  # the residual grid's always-on chain always joins them
    assert res.check_op(OperatingPoint("p", dict(_full(res), prune={"edges": []}))).name == "p"


def test_dead_edges_in_a_spec_are_neither_run_nor_counted(data):
    """A plain-grid spec may name edges whose source is cut off; the network drops them, and
    its MACs (counted and accounted) are those of the edges that run."""
    m = _model("test_cnmm")
    x = _x(data, 4)
    path = m.prune_edges(0.4 * m.full_macs())
    dead = [e for e in range(len(m.edge_list)) if e not in path.edges and not m._alive(set(path.edges) | {e}) - set(path.edges)]
    assert dead
    op = OperatingPoint("p", dict(_full(m), prune={"edges": path.edges + dead[:1]}))
    net = m.export(op)
    assert net.macs == m.spec_macs(path) == count_macs(net, x[:1])
    assert torch.equal(m.infer(x, op).logits, m.infer(x, OperatingPoint("q", dict(_full(m), prune=path.to_dict()))).logits)


def test_search_config_is_checked():
    with pytest.raises(ValueError, match="unknown \\['bogus'\\]"):
        SearchConfig(mechanisms=("edges", "bogus"))
    with pytest.raises(ValueError, match="fractions"):
        SearchConfig(fractions=(0.0,))
    with pytest.raises(ValueError, match="bn_batches"):
        SearchConfig(bn_batches=-1)


# ---------------------------------------------------------------------- inference, export, cache


@pytest.mark.parametrize("name", FAMILIES)
def test_export_carries_the_points_statistics(name, data):
    m = _shipped_with_bn(name, data)
    x = _x(data)
    for op_name in ("edges+bn 50%", "channels+bn 50%"):
        op = m.find_op(op_name)
        net = m.export(op)
        ref = m.infer(x, op)
        with torch.no_grad():
            assert torch.allclose(net(x), ref.logits, atol=1e-5)
        assert count_macs(net, x[:1]) == ref.macs[0].item() < m.full_macs()
        buf = io.BytesIO()
        torch.jit.save(to_torchscript(net), buf)
        with torch.no_grad():
            assert torch.allclose(load_torchscript(buf.getvalue())(x), ref.logits, atol=1e-5)
        assert net is not m.export(op)  # a fresh copy each time: the caller may change it


def test_cached_networks_follow_weights_and_state(data):
    m = _shipped_with_bn("test_cnmm_r", data)
    x = _x(data)
    bn, plain = m.find_op("edges+bn 50%"), m.find_op("edges 50%")
    y0, p0 = m.infer(x, bn).logits, m.infer(x, plain).logits
    assert m.pruned_for(bn) is m.pruned_for(bn)  # cached
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.head.bias.add_(1.0)  # in place: the cached network is stale
    assert torch.allclose(m.infer(x, bn).logits, y0 + 1.0, atol=1e-5)
    m.load_state_dict(sd)
    assert torch.equal(m.infer(x, bn).logits, y0)
    m.train()
    m(x)  # a training-mode forward moves the model's BN statistics, which the plain point uses
    assert not torch.allclose(m.infer(x, plain).logits, p0)
    assert torch.equal(m.infer(x, bn).logits, y0)  # the +bn point keeps its own
    st = m.op_state()
    st[bn.name] = dict(st[bn.name], **{"stem.1.running_mean": st[bn.name]["stem.1.running_mean"] + 1.0})
    m.load_op_state(st)
    assert not torch.allclose(m.infer(x, bn).logits, y0)


# ---------------------------------------------------------------------- the candidate search


def test_candidates_are_distinct_networks_with_unique_names(data):
    m = _model("test_cnmm_r")
    cands = m.candidate_operating_points(data, "calib", batch_size=128, fractions=(1.0, 0.5, 0.125), bn_batches=1)
    names = [o.name for o in cands]
    assert len(set(names)) == len(names) and "both 12.5%" in names and "greedy-unit+bn 50%" in names
    keys = [json.dumps([o["prune"], o["bn"]], sort_keys=True) for o in cands]
    assert len(set(keys)) == len(keys)  # the full network, reached by every mechanism at 100 %, once
    assert point_name("both", 0.15, True) == "both+bn 15%"
    assert {"mechanism": "edges", "fraction": 0.125} in m.candidate_info["unreachable"]  # below the diagonal chain
    # the greedy order was chosen on the split, and is left for a record; reusing it skips the search
    path = m.candidate_info["greedy_path"]
    assert path and m.candidate_info["split"] == "calib"
    again = m.candidate_operating_points(data, "calib", batch_size=128, mechanisms=("greedy",), fractions=(0.5,),
                                         bn_batches=0, greedy_path=path)
    assert [o["prune"] for o in again] == [o["prune"] for o in cands if o.name == "greedy 50%"]
    other = create_model("test_cnmm_r", num_classes=10, in_chans=1, scale_starts=(0, 2, 3))  # another grid
    with pytest.raises(ValueError, match="not an edge set of this model"):
        other.candidate_operating_points(data, "calib", mechanisms=("greedy",), greedy_path=path)


def test_bn_batches_replay_the_models_recorded_augmentation(data):
    """BN re-estimation uses pretrained_cfg["train_augment"] when the model has one."""
    def bn_state(**kw):
        m = _model("test_cnmm")
        for k, v in kw.pop("attrs", {}).items():
            setattr(m, k, v)
        m.candidate_operating_points(data, "calib", **dict(SEARCH, mechanisms=("edges",), fractions=(0.5,)), **kw)
        return m.op_state()["edges+bn 50%"]["stem.1.running_mean"]

    plain = bn_state(bn_augment=False)
    assert torch.equal(bn_state(attrs={"pretrained_cfg": {"train_augment": {"augment": False}}}), plain)
    assert not torch.equal(bn_state(), plain)  # no record: crop and flip


def test_legacy_points_with_statistics_in_params_convert(data):
    m = _shipped_with_bn("test_cnmm", data)
    op, st = m.find_op("edges+bn 50%"), m.op_state()["edges+bn 50%"]
    mods = {k.rpartition(".")[0] for k in st}
    old = dict(op.to_dict(), params=dict(op.params, mechanism="edges+bn",
                                         bn={n: [st[f"{n}.running_mean"].tolist(), st[f"{n}.running_var"].tolist()]
                                             for n in mods}))
    new_op, state = split_legacy_bn(old)
    assert new_op.params == op.params and new_op.name == op.name
    assert set(state) == set(st) and all(torch.allclose(state[k], st[k]) for k in st)
    fresh = _model("test_cnmm")
    fresh.load_state_dict(m.state_dict())
    fresh.put_op_state(new_op.name, state)
    x = _x(data)
    assert torch.allclose(fresh.infer(x, new_op).logits, m.infer(x, op).logits, atol=1e-6)
    assert split_legacy_bn(m.find_op("edges 50%"))[1] is None


# ---------------------------------------------------------------------- BN statistics batches


def test_bn_statistics_batches_are_augmented_like_training_by_default(data):
    """BN re-estimation reads shuffled training batches with the training augmentation by
    default (the statistics later layers were fitted to); --no-bn-augment gives the plain
    images. Same seed: same images in the same order, only the augmentation differs."""
    (xa, ya), (xp, yp) = (next(iter(bn_statistics_loader(data, data.mean, data.std, augment=a))) for a in (True, False))
    assert torch.equal(ya, yp) and xa.shape == xp.shape
    assert not torch.allclose(xa, xp)
    assert not torch.equal(yp, data.train.labels[: len(yp)])  # shuffled


def test_bn_statistics_batches_replay_the_models_training_augmentation(data):
    """With the model's recorded augmentation (meta["train_augment"]) the BN batches use its
    flip, padding and cutout: no flip and no padding is the plain image; cutout zeroes a
    square; a model trained without augmentation gets plain batches. Same seed throughout."""

    def first(**kw):
        return next(iter(bn_statistics_loader(data, data.mean, data.std, **kw)))[0]

    plain = first(augment=False)
    assert torch.equal(first(train_augment={"augment": True, "flip": False, "pad": 0, "cutout": 0}), plain)
    assert torch.equal(first(train_augment={"augment": False, "flip": True, "pad": 4, "cutout": 4}), plain)
    assert not torch.equal(first(train_augment={"augment": True, "flip": False, "pad": 1, "cutout": 0}), plain)
    cut = first(train_augment={"augment": True, "flip": False, "pad": 0, "cutout": 4})
    changed = (cut != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.9 and torch.all((cut == 0) | (cut == plain))
    assert torch.equal(first(), first(train_augment=None))  # no record: crop and flip, as before
