"""Issue #34, the library side: bad input gets a clear error and nothing is reported wrong.

* ``infer`` checks its batch (rank, dtype, channels, size, finiteness) for every family;
  static networks count MACs at the input's own size, dynamic ones refuse other sizes;
* budgets: every non-budget is a BudgetError naming the reachable range;
* operating points that name parts a model does not have are check_op errors;
* records are strict JSON (non-finite values written as null, with the reason kept);
* curves never come out NaN; CIFAR folders with foreign class names are refused."""

import json
import math
import pickle

import pytest
import torch

from anycost.core import BudgetError, DynamicModel, OperatingPoint
from anycost.cost import check_reported_macs
from anycost.curves import (TradeoffCurve, accuracy_at_macs, calibrate_to_budget, macs_at_accuracy, normalised_auc,
                            point_from_outputs, wilson_interval)
from anycost.data import DataError, ImageDataset, load_cifar, load_dataset
from anycost.eval import collect_outputs, evaluate_classifier, evaluate_curve
from anycost.models import create_model, list_models
from anycost.models.static import StaticModel
from anycost.records import NONFINITE_KEY, dumps, loads, make_record, read_record, write_json_atomic

TINY = list_models("test_*")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


_MODELS: dict = {}


def tiny(name):
    """An uncalibrated tiny model for digits (1 x 8 x 8), built once."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name, num_classes=10, in_chans=1)
    return _MODELS[name]


def _x(n=4, c=1, hw=8):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- what infer takes


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_knows_its_input_size(name):
    kw = {"members": ["test_resnet", "test_resnet"]} if name == "cascade" else {}
    m = create_model(name, num_classes=7, **kw)
    size = m.input_size
    assert isinstance(size, tuple) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size), size
    assert size[0] == 3  # the in_chans default


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_refused(name, value):
    x = _x()
    x[1, 0, 2, 3] = value
    with pytest.raises(ValueError, match="1 of 4 inputs hold NaN or infinite values") as e:
        tiny(name).infer(x)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("bad,match", [
    (lambda: _x()[0], r"\(B, C, H, W\) tensor, got \(1, 8, 8\)"),
    (lambda: _x().numpy(), r"\(B, C, H, W\) tensor, got a ndarray"),
    (lambda: _x().long(), "floating-point tensor"),
    (lambda: _x(0), "empty batch"),
    (lambda: _x(c=3), "takes 1 channels"),
], ids=["rank", "numpy", "dtype", "empty", "channels"])
def test_malformed_batches_are_refused(name, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(name).infer(bad())


DYNAMIC = [n for n in TINY if n != "test_resnet"]


@pytest.mark.parametrize("name", DYNAMIC)
@pytest.mark.parametrize("hw", [4, 16])
def test_dynamic_families_refuse_sizes_their_costs_do_not_hold_for(name, hw):
    m = tiny(name)
    with pytest.raises(ValueError, match=r"measured at \(1, 8, 8\); resize inputs to 8x8"):
        m.infer(_x(hw=hw))
    m.infer(_x())  # the size it was built for runs


@pytest.mark.parametrize("name,c", [("test_resnet", 1), ("resnet8", 3)])
@pytest.mark.parametrize("hw", [4, 16, 64])
def test_static_networks_count_macs_at_the_actual_size(name, c, hw):
    torch.manual_seed(0)
    m = create_model(name, in_chans=c)
    x = torch.randn(2, c, hw, hw)
    out = m.infer(x)
    assert out.macs.tolist() == [float(m.declared_macs((c, hw, hw)))] * 2
    chk = check_reported_macs(m, x)
    assert chk.ok and chk.rel_err < 1e-9, str(chk)


def test_a_wrapped_network_that_cannot_take_a_size_says_so():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    m = StaticModel(net, (1, 8, 8))
    assert m.infer(_x()).macs.tolist() == [192.0] * 4
    with pytest.raises(ValueError, match=r"cannot take inputs of size \(1, 4, 4\)"):
        m.infer(_x(hw=4))


def test_measuring_a_split_of_another_size_is_refused(data):
    m = tiny("test_ee_resnet")
    ds = data.get("calib")
    big = ImageDataset(ds.images.repeat(1, 1, 2, 2), ds.labels, ds.classes, "big")
    for run in (lambda: m.measure(big, data.mean, data.std, m.default_operating_points()),
                lambda: list(m.outputs(big, data.mean, data.std, m.default_operating_points()))):
        with pytest.raises(ValueError, match="measured at"):
            run()


# ---------------------------------------------------------------------- budgets


@pytest.fixture(scope="module")
def calibrated(data):
    out = {}
    for name in ("test_ee_resnet", "test_cascade"):
        torch.manual_seed(0)
        m = create_model(name, num_classes=10, in_chans=1)
        m.calibrate(data, "calib", batch_size=256, lams=[0.0, 0.1])
        out[name] = m
    return out


@pytest.mark.parametrize("name", ["test_ee_resnet", "test_cascade"])
@pytest.mark.parametrize("bad", [0, 0.0, -1.0, -1e9, float("inf"), -float("inf"), float("nan"), "5e6", None, True,
                                 [1e6]], ids=repr)
def test_exits_and_cascades_refuse_every_non_budget(calibrated, name, bad):
    m = calibrated[name]
    for mix in (True, False):
        with pytest.raises(BudgetError, match=r"positive finite number.*reachable: .* M to .* M MACs") as e:
            m.at_budget(bad, mix=mix)
        assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("name", ["test_ee_resnet", "test_cascade"])
def test_budgets_outside_the_range(calibrated, name):
    m = calibrated[name]
    ops = m.operating_points()
    with pytest.raises(BudgetError, match="below the cheapest operating point.*reachable"):
        m.at_budget(ops[0].macs * 0.99, mix=False)
    assert m.at_budget(ops[0].macs, mix=False).macs == ops[0].macs  # the cheapest point is reachable
    best = max(ops, key=lambda o: o.accuracy)
    assert m.at_budget(1e30).accuracy == best.accuracy  # above the dearest point: the best one


def test_uncalibrated_models_have_no_budget():
    with pytest.raises(BudgetError, match="no calibrated operating points"):
        tiny("test_cascade").at_budget(1e6)


# ---------------------------------------------------------------------- points naming unknown parts


def _cnmm_full(m):
    return dict(m.default_op().params)


@pytest.mark.parametrize("name", ["test_cnmm", "test_cnmm_r"])
def test_cnmm_spec_with_a_misspelt_key_is_refused(name):
    m = tiny(name)
    full = _cnmm_full(m)
    prune = dict(full["prune"], channel={"0": [0]})  # "channel": would have been dropped
    with pytest.raises(ValueError, match=r"prune has unknown keys \['channel'\]"):
        m.infer(_x(), OperatingPoint("typo", dict(full, prune=prune)))


@pytest.mark.parametrize("params,match", [
    ({"policy": "fixed", "exit": 0, "threshold": 0.5}, r"unknown params \['threshold'\] for a fixed policy"),
    ({"policy": "threshold", "treshold": 0.5}, r"unknown params \['treshold'\]"),
    ({"policy": "fixed", "exit": 7}, r"an int in 0\.\.\d, got 7"),
    ({"policy": "threshold", "threshold": "nan"}, "threshold is NaN"),
])
@pytest.mark.parametrize("name", ["test_ee_resnet", "test_cascade"])
def test_exit_points_naming_unknown_parts_are_refused(name, params, match):
    with pytest.raises(ValueError, match=match):
        tiny(name).infer(_x(), OperatingPoint("bad", params))


def _gate(**kw):
    g = {"weight": [0.0] * 4, "bias": 0.0, "mean": [0.0] * 4, "std": [1.0] * 4}
    g.update(kw)
    return g


@pytest.mark.parametrize("gate,match", [
    (_gate(weight=[0.0] * 3), "lists of 4 numbers"),
    (_gate(bias=float("nan")), "finite numbers"),
    (_gate(std=[1.0, 1.0, 0.0, 1.0]), "std positive"),
    (_gate(mean="0000"), "lists of 4 numbers"),
])
def test_learned_gates_must_be_finite_and_well_formed(gate, match):
    m = tiny("test_ee_resnet")
    ok = {"policy": "learned", "gates": [_gate()] * (m.num_exits - 1), "jump_gate": None, "lam": 0.1}
    m.check_op(OperatingPoint("ok", ok))
    bad = dict(ok, gates=[gate] + [_gate()] * (m.num_exits - 2))
    with pytest.raises(ValueError, match=match):
        m.check_op(OperatingPoint("bad", bad))


def test_never_stop_threshold_is_strict_json(data):
    m = tiny("test_ee_resnet")
    ops = m.candidate_operating_points(data, "calib", batch_size=256, lams=[])
    never = [o for o in ops if o.get("policy") == "threshold" and float(o["threshold"]) == math.inf]
    assert never and all(o["threshold"] == "inf" for o in never)
    json.dumps([o.to_dict() for o in ops], allow_nan=False)
    out = m.infer(_x(), never[0])  # runs to the last exit
    assert out.path.tolist() == [m.num_exits - 1] * 4


# ---------------------------------------------------------------------- records


def test_records_write_non_finite_values_as_null_and_say_why(tmp_path):
    rec = make_record("eval", {"lr": float("nan")}, {"acc": [1.0, float("inf"), -float("inf")], "x/y": float("nan"),
                                                    "t": torch.tensor([0.5, float("nan")]), "ok": 2})
    text = dumps(rec)
    plain = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in a record"))
    assert plain["config"]["lr"] is None and plain["results"]["acc"] == [1.0, None, None]
    assert plain[NONFINITE_KEY] == {"/config/lr": "NaN", "/results/acc/1": "Infinity", "/results/acc/2": "-Infinity",
                                    "/results/x~1y": "NaN", "/results/t/1": "NaN"}
    back = loads(text)
    assert NONFINITE_KEY not in back and math.isnan(back["config"]["lr"]) and math.isnan(back["results"]["x/y"])
    assert back["results"]["acc"] == [1.0, math.inf, -math.inf] and back["results"]["ok"] == 2
    path = write_json_atomic(tmp_path / "r.json", rec)
    assert read_record(path)["results"]["acc"][1] == math.inf


def test_records_without_non_finite_values_are_unchanged():
    rec = {"format": "x", "a": [1, 2.5, None, True], "b": {"1": "NaN as a string"}}
    text = dumps(rec)
    assert json.loads(text) == rec and NONFINITE_KEY not in text


def test_old_records_with_bare_nan_tokens_still_read(tmp_path):
    p = tmp_path / "old.json"
    p.write_text('{"format": "anycost-record-v1", "results": {"acc": NaN, "macs": Infinity}}')
    rec = read_record(p)
    assert math.isnan(rec["results"]["acc"]) and rec["results"]["macs"] == math.inf


# ---------------------------------------------------------------------- curves and splits


def test_curve_points_refuse_empty_or_non_finite_outputs():
    op = OperatingPoint("p")
    with pytest.raises(ValueError, match="no inputs to measure"):
        point_from_outputs(op, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    with pytest.raises(ValueError, match="MACs hold NaN"):
        point_from_outputs(op, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="3 outputs and 2 MAC counts for 2 labels"):
        point_from_outputs(op, torch.zeros(3, 3), torch.zeros(2, dtype=torch.long), torch.ones(2))


def test_frontier_maths_never_answers_nan():
    macs, acc = [1.0, 2.0, math.nan, 3.0], [50.0, 60.0, 99.0, math.nan]
    assert accuracy_at_macs(macs, acc, 10.0) == 60.0  # NaN points are left out, not compared
    assert macs_at_accuracy(macs, acc, 55.0) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="MAC budget must be a number"):
        accuracy_at_macs(macs, acc, math.nan)
    with pytest.raises(ValueError, match="target accuracy must be a number"):
        macs_at_accuracy(macs, acc, math.nan)
    with pytest.raises(ValueError, match="has no points"):
        calibrate_to_budget(TradeoffCurve("empty", []), 1e6)
    with pytest.raises(ValueError, match="has no points"):
        normalised_auc(TradeoffCurve("empty", []))
    with pytest.raises(ValueError, match="accuracy must be a number"):
        wilson_interval(math.nan, 100)
    with pytest.raises(ValueError, match="positive finite number"):
        calibrate_to_budget(TradeoffCurve("empty", []), math.nan)


def test_empty_splits_are_errors_not_nan(data):
    ds = data.get("calib")
    empty = ds.subset(torch.zeros(0, dtype=torch.long), "empty")
    m = tiny("test_ee_resnet")
    for run in (lambda: evaluate_curve(m, empty, data.mean, data.std, m.default_operating_points()),
                lambda: collect_outputs(m, empty, data.mean, data.std),
                lambda: evaluate_classifier(m, empty, data.mean, data.std),
                lambda: DynamicModel.measure(m, empty, data.mean, data.std, m.default_operating_points()),
                lambda: m.measure(empty, data.mean, data.std, m.default_operating_points())):
        with pytest.raises(ValueError, match="'empty' holds no images"):
            run()


# ---------------------------------------------------------------------- data


def _cifar_copy(src, dst, names):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    (dst / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return dst


@pytest.mark.parametrize("names,match", [
    ([f"c{i}" for i in range(100)], "cifar10 has 10 distinct class names, this file lists 100"),
    (["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"], "lists 9"),
    (["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle"],
     "not CIFAR-10's class names"),
    (["automobile", "airplane", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
     "not CIFAR-10's class names"),
    (["cat"] * 10, r"\(1 distinct\)"),
    ("airplane", "must be a list of strings"),
], ids=["cifar100-count", "nine", "cifar100-names", "reordered", "repeated", "not-a-list"])
def test_cifar_folder_with_foreign_class_names_is_refused(cifar_dir, tmp_path, names, match):
    bad = _cifar_copy(cifar_dir, tmp_path / "cifar-10-batches-py", names)
    with pytest.raises(DataError, match=match) as e:
        load_cifar(bad, "cifar10", "train")
    assert "batches.meta" in str(e.value) and "\n" not in str(e.value)


def test_cifar10_names_as_bytes_are_read(cifar_dir, tmp_path):
    names = [n.encode() for n in load_cifar(cifar_dir, "cifar10", "test").classes]
    ok = _cifar_copy(cifar_dir, tmp_path / "cifar-10-batches-py", names)
    assert load_cifar(ok, "cifar10", "test").classes[0] == "airplane"
