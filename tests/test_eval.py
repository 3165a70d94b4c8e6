import math

import pytest
import torch

from anycost.eval import (CurvePoint, OperatingPoint, TradeoffCurve, accuracy_at_macs, bisect_knob,
                          calibrate_to_accuracy_drop, calibrate_to_budget, collect_outputs, evaluate_curve,
                          iso_accuracy_reduction, macs_at_accuracy, normalised_auc, pareto_front, point_from_outputs)
from anycost.data import ImageDataset
from toy import TwoStage


def curve(pairs, name="c", on="val"):
    return TradeoffCurve(name, [CurvePoint(OperatingPoint(f"p{i}"), a, m) for i, (m, a) in enumerate(pairs)], on, on)


def test_pareto_front_drops_dominated_points():
    macs = [10, 20, 15, 30, 25, 30]
    acc = [50, 60, 55, 58, 70, 71]
    assert pareto_front(macs, acc) == [0, 2, 1, 4, 5]


def test_interpolation_on_frontier():
    m, a = [10, 20, 40], [50, 70, 80]
    assert accuracy_at_macs(m, a, 15) == pytest.approx(60)
    assert accuracy_at_macs(m, a, 5) is None  # below the cheapest point
    assert accuracy_at_macs(m, a, 100) == 80
    assert macs_at_accuracy(m, a, 75) == pytest.approx(30)
    assert macs_at_accuracy(m, a, 40) == 10
    assert macs_at_accuracy(m, a, 81) is None
    # a dominated point never helps
    assert accuracy_at_macs(m + [30], a + [60], 30) == pytest.approx(75)


def test_iso_accuracy_reduction():
    adaptive = curve([(10, 70), (20, 80)])
    static = curve([(20, 70), (60, 80)])
    r = iso_accuracy_reduction(adaptive, static)
    assert r["accuracy"] == 80 and r["reduction"] == pytest.approx(3.0)
    assert iso_accuracy_reduction(adaptive, static, 75)["reduction"] == pytest.approx(40 / 15)


def test_normalised_auc():
    flat = curve([(10, 80), (100, 80)])
    assert normalised_auc(flat) == pytest.approx(0.8, abs=1e-6)
    # a curve starting later scores 0 before its first point
    late = curve([(50, 80), (100, 80)])
    assert normalised_auc(late, 10, 100) == pytest.approx(0.8 * math.log(2) / math.log(10), abs=1e-3)
    # linear in MACs between the points: the mean over a linear axis is the midpoint ...
    assert normalised_auc(curve([(10, 60), (100, 90)]), log_x=False) == pytest.approx(0.75, abs=1e-4)
    # ... and over log-MACs it is (1/ln 10) * integral of (60 + (m - 10)/3) dm/m = 170/3 + 30/ln 10
    exact = (170 / 3 + 30 / math.log(10)) / 100
    assert normalised_auc(curve([(10, 60), (100, 90)]), log_x=True) == pytest.approx(exact, abs=1e-4)


def test_calibrate_to_budget_reachable_and_not():
    c = curve([(10, 60), (20, 75), (30, 74), (40, 80)])
    cal = calibrate_to_budget(c, 35)
    assert cal.reachable and cal.point.accuracy == 75 and cal.calibrated_on == "val"
    bad = calibrate_to_budget(c, 5)
    assert not bad.reachable and bad.point.macs_mean == 10 and "below the cheapest" in bad.message
    with pytest.raises(ValueError):
        calibrate_to_budget(c, float("nan"))


def test_calibrate_to_accuracy_drop():
    c = curve([(10, 60), (20, 79.6), (40, 80)])
    cal = calibrate_to_accuracy_drop(c, 0.5)
    assert cal.reachable and cal.point.macs_mean == 20
    bad = calibrate_to_accuracy_drop(c, 0.5, reference_accuracy=90)
    assert not bad.reachable and bad.point.accuracy == 80 and "no operating point reaches" in bad.message


def test_bisect_knob_reachable_and_not():
    f = lambda t: 100 * (1 - t)  # threshold -> mean MACs, decreasing
    k, v, ok = bisect_knob(f, 0.0, 1.0, 30.0)
    assert ok and v <= 30 and v == pytest.approx(30, abs=0.05)
    k, v, ok = bisect_knob(lambda t: 50 + 10 * t, 0.0, 1.0, 20.0)
    assert not ok and k == 0.0 and v == 50
    k, v, ok = bisect_knob(f, 0.0, 1.0, 500.0)
    assert ok and v == 100


def test_evaluate_curve_with_toy_dynamic_model():
    torch.manual_seed(0)
    ds = ImageDataset(torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (40,)), ["a", "b", "c"], "toy")
    m = TwoStage()
    c = evaluate_curve(m, ds, [0.5], [0.25], method="toy", calibrated_on="val", measured_on="test", batch_size=16)
    half = next(p for p in c.points if p.operating_point.name == "half")
    full_cost, cheap = m.c1 + m.h1 + m.c2 + m.h2, m.c1 + m.h1
    # batches of 16, 16, 8: the first half of each batch continues -> 8 + 8 + 4 of 40
    assert half.macs_mean == pytest.approx((20 * full_cost + 20 * cheap) / 40)
    assert half.path_fractions == [0.5, 0.5] and half.macs_p95 == full_cost and half.n == 40
    assert c.calibrated_on == "val" and c.measured_on == "test" and not c.static
    o = collect_outputs(m, ds, [0.5], [0.25], OperatingPoint("all", {"continue_fraction": 1.0}))
    p = point_from_outputs(OperatingPoint("all"), o.logits, o.labels, o.macs)
    assert p.accuracy == pytest.approx(100 * (o.logits.argmax(1) == o.labels).float().mean().item())


def test_collect_outputs_rejects_nan_inputs():
    ds = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"], "toy")
    with pytest.raises(ValueError, match="NaN"):
        collect_outputs(TwoStage(), ds, [0.0], [0.0])  # std 0 -> NaN after normalisation


def test_curve_json_roundtrip():
    c = curve([(10, 60), (20, 75)])
    c.family = "f"
    d = TradeoffCurve.from_dict(c.to_dict())
    assert d.macs == c.macs and d.family == "f" and d.points[0].operating_point.name == "p0"


def test_summary_table_picks_cheapest_point_within_each_loss():
    from anycost.report import summary_table

    def pt(acc, macs):
        return CurvePoint(OperatingPoint(f"p{macs}", {}), acc, macs * 1e6)

    dyn = TradeoffCurve("dyn", [pt(90.0, 40), pt(89.6, 20), pt(89.2, 10), pt(80.0, 5)])
    static = TradeoffCurve("big", [pt(90.4, 50)], static=True)
    oracle = TradeoffCurve("oracle", [pt(99.0, 3)])
    own = summary_table([static, dyn, oracle])
    (row,) = [r for r in own.splitlines() if r.startswith("| dyn")]
    # own full cost: 90.0 @ 40M; <= 0.5 pt -> 89.6 @ 20M (2x); <= 1 pt -> 89.2 @ 10M (4x)
    assert row == "| dyn | 90.00 | 40.00 | 89.60 | 20.00 | 2.00x | 89.20 | 10.00 | 4.00x |"
    assert "| big" not in own and "| oracle" not in own  # single points: nothing to choose
    vs = summary_table([static, dyn], reference="big", losses=(0.5, 0.1))
    (row,) = [r for r in vs.splitlines() if r.startswith("| dyn")]
    assert row == "| dyn | 90.40 | 50.00 | 90.00 | 40.00 | 1.25x | none | - | - |"
    with pytest.raises(ValueError, match="no curve named"):
        summary_table([dyn], reference="missing")


def test_gap_table_compares_a_family_with_merged_frontiers_at_equal_macs():
    from anycost.report import gap_table

    def pt(acc, macs):
        return CurvePoint(OperatingPoint(f"p{macs}", {}), acc, macs * 1e6)

    lc = TradeoffCurve("lc_a", [pt(88.0, 30), pt(85.0, 10)])
    l1 = TradeoffCurve("l_one", [pt(86.0, 20), pt(90.0, 40)])
    l2 = TradeoffCurve("l_two", [pt(84.0, 20), pt(87.0, 30)])
    c = TradeoffCurve("c_one", [pt(80.0, 5), pt(88.5, 30)])
    t = gap_table([lc, l1, l2, c], "lc_*", {"L": "l_*", "C": "c_*"})
    rows = [r for r in t.splitlines() if r.startswith("| lc_a")]
    # 10 M: below L's range (cheapest 20 M); C interpolates 80 + 8.5 * 5 / 25 = 81.7
    assert rows[0] == "| lc_a | p10 | 85.00 | 10.00 | below its range | - | 81.70 | +3.30 |"
    # 30 M: l_two's 87.0 is a point of the merged L frontier (86 @ 20, 87 @ 30, 90 @ 40); C has 88.5
    assert rows[1] == "| lc_a | p30 | 88.00 | 30.00 | 87.00 | +1.00 | 88.50 | -0.50 |"
    with pytest.raises(ValueError, match="no curve matches"):
        gap_table([l1], "lc_*", {"L": "l_*"})
    with pytest.raises(ValueError, match="group 'X'"):
        gap_table([lc, l1], "lc_*", {"X": "lc_*"})


def test_train_table_names_the_device_that_trained():
    from anycost.report import train_table

    def rec(hw):
        row = {"epoch": 1, "epoch_seconds": 10.0, "images_per_s": 100.0, "val_acc": 50.0, "val_top5": 90.0}
        return {"config": {"model": "m"}, "hardware": hw,
                "results": {"history": [row], "final": row, "train_seconds": 60.0}}

    cpu = train_table([rec({"cpu": "SomeCPU", "torch_threads": 2, "device": "cpu"})])
    gpu = train_table([rec({"cpu": "HostCPU", "torch_threads": 1, "device": "cuda", "gpu": "SomeGPU"})])
    assert "SomeCPU, 2 threads" in cpu
    assert "SomeGPU" in gpu and "HostCPU" not in gpu


def test_drop_curves_by_pattern():
    from anycost.eval import TradeoffCurve
    from anycost.plot import drop_curves

    cs = [TradeoffCurve(method=m, points=[]) for m in ("ee: threshold (maxprob)", "ee: threshold (entropy)", "r20")]
    assert [c.method for c in drop_curves(cs, ["*entropy*"])] == ["ee: threshold (maxprob)", "r20"]
    assert drop_curves(cs, []) == cs
    with pytest.raises(ValueError, match="leaves no curve"):
        drop_curves(cs, ["*"])


def test_wilson_interval_matches_known_values_and_stays_in_range():
    from anycost.curves import wilson_interval

    lo, hi = wilson_interval(88.0, 2500)
    # binomial standard error at p=0.88, n=2500 is 0.65 pt: the 95 % interval is about +-1.27 pt
    assert lo == pytest.approx(86.66, abs=0.05) and hi == pytest.approx(89.19, abs=0.05)
    assert wilson_interval(100.0, 50)[1] == 100.0 and wilson_interval(0.0, 50)[0] == 0.0
    assert wilson_interval(50.0, 0) == (0.0, 100.0)
    assert wilson_interval(90.0, 10000)[1] - wilson_interval(90.0, 10000)[0] < wilson_interval(90.0, 100)[1] - wilson_interval(90.0, 100)[0]


def test_headline_table_one_row_per_curve_with_intervals_and_verdicts():
    from anycost.report import headline_table

    def pt(acc, macs, n=2500):
        return CurvePoint(OperatingPoint(f"p{macs}", {}), acc, macs * 1e6, n=n)

    ref = TradeoffCurve("ref56", [pt(90.0, 120)], static=True, measured_on="holdout")
    small = TradeoffCurve("ref8", [pt(80.0, 10)], static=True, measured_on="holdout")
    near = TradeoffCurve("dyn_near", [pt(89.7, 30), pt(89.4, 20), pt(90.1, 60)], measured_on="holdout")
    far = TradeoffCurve("dyn_far", [pt(70.0, 5), pt(85.0, 50)], measured_on="holdout")
    t = headline_table([ref, small, near, far], "dyn_*", {"static": "ref56|ref8"}, "ref56", 0.5)
    rows = {r.split(" | ")[0][2:]: r for r in t.splitlines() if r.startswith("| dyn")}
    # near: cheapest within 0.5 pt of 90.0 is 89.7 @ 30 M (89.4 is 0.6 under); static frontier
    # at 30 M interpolates 80 -> 90 over 10..120 M: 81.82, far outside both intervals
    assert "| p30 | 89.70 [" in rows["dyn_near"] and "4.00x fewer" in rows["dyn_near"]
    assert "| 81.82 | +7.88 (above) |" in rows["dyn_near"]
    # far never gets within 0.5 pt: its best point, marked, below the frontier (86.36 at 50 M)
    assert "| p50 (best) | 85.00 [" in rows["dyn_far"] and "(tie)" in rows["dyn_far"]
    close = TradeoffCurve("dyn_close", [pt(90.0, 120.0)], measured_on="holdout")
    assert "+0.00 (tie)" in headline_table([ref, close], "dyn_*", {"static": "ref56"}, "ref56")
    cheap = TradeoffCurve("dyn_cheap", [pt(89.8, 5)], measured_on="holdout")
    assert "below its range" in headline_table([ref, small, cheap], "dyn_*", {"static": "ref*"}, "ref56")
    with pytest.raises(ValueError, match="no curve named"):
        headline_table([near], "dyn_*", {"static": "ref*"}, "missing")


@pytest.fixture(scope="module")
def calibrated_exits():
    from anycost.data import load_dataset
    from anycost.models import create_model

    data = load_dataset("digits")
    torch.manual_seed(0)
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1)
    m.calibrate(data, "calib", batch_size=128)
    return m, data


def test_evaluate_curve_fast_path_equals_real_routing_and_is_checked(calibrated_exits, monkeypatch):
    from anycost.eval import RoutingMismatch, evaluate_curve, fast_path

    m, data = calibrated_exits
    ds = data.get("holdout")
    assert fast_path(m) and not fast_path(create_model_static())
    fast = evaluate_curve(m, ds, data.mean, data.std, verify=40)
    real = evaluate_curve(m, ds, data.mean, data.std, real_routing=True)
    assert [p.accuracy for p in fast.points] == [p.accuracy for p in real.points]
    assert [p.macs_mean for p in fast.points] == pytest.approx([p.macs_mean for p in real.points], rel=1e-12)
    assert [p.path_fractions for p in fast.points] == [p.path_fractions for p in real.points]

    calls = []
    real_routed = type(m).routed_outputs

    def spy(self, ds_, *a, **k):
        calls.append(len(ds_.labels))
        yield from real_routed(self, ds_, *a, **k)

    monkeypatch.setattr(type(m), "routed_outputs", spy)
    evaluate_curve(m, ds, data.mean, data.std, verify=40)
    assert calls == [40]  # the verification sample only, spread over the split
    calls.clear()
    evaluate_curve(m, ds, data.mean, data.std, verify=0)
    assert calls == []
    monkeypatch.setattr(type(m), "routed_outputs", real_routed)

    # a fast path that charges the wrong MACs, or routes wrongly, is caught
    sim = type(m).simulate

    def cheap(self, cache, op):
        code, macs = sim(self, cache, op)
        return code, macs * 0.9

    monkeypatch.setattr(type(m), "simulate", cheap)
    with pytest.raises(RoutingMismatch, match="per-input MACs"):
        evaluate_curve(m, ds, data.mean, data.std, verify=40)

    def misroute(self, cache, op):
        code, macs = sim(self, cache, op)
        return torch.zeros_like(code), macs

    monkeypatch.setattr(type(m), "simulate", misroute)
    if any(p.path_fractions and p.path_fractions[0] < 1 for p in real.points):
        with pytest.raises(RoutingMismatch, match="routes"):
            evaluate_curve(m, ds, data.mean, data.std, verify=40)


def create_model_static():
    from anycost.models import create_model

    return create_model("test_resnet", num_classes=10, in_chans=1)
