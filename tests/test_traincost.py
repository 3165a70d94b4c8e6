"""Training compute summed over a model's stages, and the reports that compare at equal compute."""

from __future__ import annotations

import json

import pytest

from anycost.cli import main
from anycost.cost import module_macs
from anycost.eval import CurvePoint, OperatingPoint, TradeoffCurve
from anycost.models import create_model
from anycost.records import make_record
from anycost.traincost import PMAC, RecordSet, stage_macs, training_compute

R8 = module_macs(create_model("resnet8", num_classes=10), (3, 32, 32))


def rec(model="resnet8", epochs=2, seen=1000, out_dir="runs/x", init_from=None, teacher=None, train_macs=None,
        kwargs=None):
    cfg = {"model": model, "model_kwargs": kwargs or {}, "out_dir": out_dir, "init_from": init_from, "teacher": teacher}
    hist = [{"epoch": e + 1, "images_seen": seen, "epoch_seconds": 1.0, "images_per_s": seen} for e in range(epochs)]
    res = {"status": "done", "history": hist, "train_seconds": float(epochs), "final": hist[-1]}
    if train_macs is not None:
        res["train_macs"] = train_macs
    return make_record("train", cfg, res, git={"commit": None, "dirty": False},
                       model={"num_classes": 10, "input_size": [3, 32, 32]})


def test_stage_macs_reads_the_count_or_rebuilds_it_from_the_config():
    assert stage_macs(rec(train_macs=123.0)) == (123.0, False)
    macs, est = stage_macs(rec(epochs=3, seen=500))
    assert est and macs == pytest.approx(3 * 500 * 3 * R8)
    # an older record without images_seen: throughput x time
    r = rec(epochs=1)
    del r["results"]["history"][0]["images_seen"]
    r["results"]["history"][0].update(images_per_s=250.0, epoch_seconds=2.0)
    assert stage_macs(r)[0] == pytest.approx(500 * 3 * R8)
    # a teacher adds its forward, from its zoo record (no weights needed)
    from anycost.zoo import get_weights

    kd, _ = stage_macs(rec(epochs=1, seen=10, teacher="resnet56.cifar10"))
    assert kd == pytest.approx(10 * (3 * R8 + get_weights("resnet56.cpu30_cifar10").macs))


def test_a_chain_of_stages_adds_up_through_zoo_names_and_run_folders():
    base = rec(epochs=2, seen=100, out_dir="runs/a", train_macs=1e12)
    mid = rec(epochs=1, out_dir="runs/b", init_from="resnet8.cifar10", teacher="resnet56.cifar10", train_macs=2e12)
    top = rec(epochs=1, out_dir="runs/c", init_from="runs/./b", train_macs=3e12)  # a run folder, spelt loosely
    rs = RecordSet({"x/resnet8.cifar10.json": base, "x/mid.json": mid, "x/top.json": top})
    tc = training_compute("top", rs)
    assert tc.macs == 6e12 and tc.complete and [s.macs for s in tc.stages] == [1e12, 2e12, 3e12]
    assert tc.teachers == {"resnet56.cpu30_cifar10"}  # the alias resolved to the entry's name
    assert "3 stages" in tc.describe() and not tc.estimated
    # found by the zoo entry's current name too, and by the run folder's last part
    assert training_compute("resnet8.cpu30_cifar10", rs).macs == 1e12
    assert training_compute("b", rs).macs == 3e12
    with pytest.raises(KeyError, match="no train record"):
        training_compute("nothing_like_it", rs)


def test_a_missing_start_makes_a_lower_bound_and_a_cascade_sums_its_members():
    rs = RecordSet({"a.json": rec(out_dir="runs/a", init_from="runs/gone", train_macs=5e12)})
    tc = training_compute("a", rs)
    assert not tc.complete and tc.missing == ("runs/gone",) and "lower bound: no record of runs/gone" in tc.describe()
    members = {f"{n}.json": rec(out_dir=f"runs/{n}", train_macs=m) for n, m in
               [("resnet8.cifar10", 1e12), ("resnet20.cifar10", 2e12)]}
    casc = training_compute("cascade.r8_r20_cifar10", RecordSet(members))
    assert casc.macs == 3e12 and len(casc.stages) == 2 and casc.describe() == "0.00 (2 members, 2 stages)"


def test_record_set_reads_files_and_folders_and_refuses_other_kinds(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(rec(train_macs=1.0)))
    (tmp_path / "e.json").write_text(json.dumps(make_record("eval", {}, {}, git={})))
    (tmp_path / "junk.json").write_text("{")
    assert list(RecordSet.from_paths([tmp_path]).records) == [str(tmp_path / "t.json")]  # a folder skips the rest
    with pytest.raises(ValueError, match="not a train record"):
        RecordSet.from_paths([tmp_path / "e.json"])
    with pytest.raises(FileNotFoundError):
        RecordSet.from_paths([tmp_path / "none"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no train record"):
        RecordSet.from_paths([tmp_path / "empty"])


def pt(acc, macs, n=2500):
    return CurvePoint(OperatingPoint(f"p{macs}", {}), acc, macs * 1e6, n=n)


def _curves():
    ref = TradeoffCurve("s56", [pt(90.0, 120)], static=True, measured_on="holdout")
    cheap = TradeoffCurve("s8", [pt(80.0, 10)], static=True, measured_on="holdout")
    long8 = TradeoffCurve("s8_long", [pt(84.0, 10)], static=True, measured_on="holdout")
    kd56 = TradeoffCurve("s56_kd", [pt(91.0, 120)], static=True, measured_on="holdout")
    dyn = TradeoffCurve("dyn", [pt(89.8, 40), pt(85.0, 10)], measured_on="holdout")
    return [ref, cheap, long8, kd56, dyn]


def _compute(**kw):
    from anycost.traincost import TrainingCompute

    return {m: TrainingCompute(m, v * PMAC, teachers=frozenset(t)) for m, (v, t) in kw.items()}


def test_headline_compares_only_with_static_networks_of_at_least_equal_compute_and_same_teacher():
    from anycost.report import headline_table

    comp = _compute(s56=(0.5, ()), s8=(0.05, ()), s8_long=(1.2, ()), s56_kd=(2.0, ("t",)), dyn=(1.0, ()))
    t = headline_table(_curves(), "dyn", {"all": "s*"}, "s56", 0.5, comp, "s*")
    row = next(r for r in t.splitlines() if r.startswith("| dyn "))
    # s56 had less compute, s56_kd another teacher: only the long-trained s8 qualifies; its
    # frontier is flat at 84.00 from 10 M up, so 89.8 at 40 M is above it
    assert "| 1.00 |" in row and "| s8_long (1.20) | 84.00 | +5.80 (above) |" in row
    # the all-static frontier includes the distilled s56: at 40 M it interpolates 84 -> 91
    assert "peta-MACs" in t
    comp["s8_long"] = _compute(s8_long=(0.9, ()))["s8_long"]
    row = next(r for r in headline_table(_curves(), "dyn", {"all": "s*"}, "s56", 0.5, comp, "s*").splitlines()
               if r.startswith("| dyn "))
    assert "| none yet | - | - |" in row
    # only statics that cost more MACs than the point qualify: the row is compared with the
    # cheapest of them (s8_long at 10 M, 84.00) and says how many fewer MACs it spends
    comp["s8_long"] = _compute(s8_long=(1.2, ()))["s8_long"]
    cheap = TradeoffCurve("dyn", [pt(86.0, 5)], measured_on="holdout")
    row = next(r for r in headline_table([*_curves()[:-1], cheap], "dyn", {"all": "s*"}, "s56", 0.5, comp,
                                         "s*").splitlines() if r.startswith("| dyn "))
    assert "| below its range; cheapest 84.00 at 10.0 M | +2.00 (tie) with 2.00x fewer MACs |" in row
    del comp["dyn"]
    assert "| no record | no record of its training |" in headline_table(_curves(), "dyn", {"all": "s*"}, "s56", 0.5,
                                                                          comp, "s*")
    with pytest.raises(ValueError, match="needs the training compute"):
        headline_table(_curves(), "dyn", {"all": "s*"}, "s56", 0.5, None, "s*")


def test_tables_give_intervals_and_call_overlaps_ties():
    from anycost.report import curves_table, gap_table, summary_table

    cs = _curves()
    assert "| s56 | p120 | 90.00 [88.8, 91.1] |" in curves_table(cs)
    gap = gap_table(cs, "dyn", {"plain": "s56|s8"})
    assert "| 85.00 [83.5, 86.3] | 10.00 | 80.00 | +5.00 (above) |" in gap
    s = summary_table(cs)
    assert "95 % Wilson intervals" in s and "| dyn | 89.80 [88.6, 90.9] |" in s
    # an interval needs the image count: older curves without it print the plain value
    old = TradeoffCurve("old", [CurvePoint(OperatingPoint("a"), 80.0, 1e7)])
    assert "| old | a | 80.00 |" in curves_table([old])


def _write_eval(path, curve):
    path.write_text(json.dumps(make_record("eval", {}, {"curve": curve.to_dict()}, git={})))
    return str(path)


def test_report_and_plot_take_train_records(tmp_path, capsys):
    recs = tmp_path / "train"
    recs.mkdir()
    for name, m in [("s56", 0.5), ("s8", 0.05), ("s8_long", 1.2), ("s56_kd", 2.0), ("dyn", 1.0)]:
        (recs / f"{name}.json").write_text(json.dumps(rec(out_dir=f"runs/{name}", train_macs=m * PMAC)))
    evals = [_write_eval(tmp_path / f"{c.method}.json", c) for c in _curves()]
    argv = ["report", *evals, "--headline", "--gap", "dyn", "--gap-to", "all=s*", "--reference", "s56"]
    assert main(argv + ["--train-records", str(recs), "--equal-compute", "s*"]) == 0
    out = capsys.readouterr().out
    # no teacher anywhere in these records, so s56_kd (2.00) qualifies too
    assert "| s8_long (1.20), s56_kd (2.00) |" in out
    assert main(argv + ["--equal-compute", "s*"]) == 2
    assert "needs --train-records" in capsys.readouterr().err
    assert main(argv + ["--train-records", str(tmp_path / "nope")]) == 2
    assert "--train-records" in capsys.readouterr().err
    assert main(["report", *evals, "--train-records", str(recs)]) == 2
    assert "belong to --headline" in capsys.readouterr().err
    assert main(["plot", *evals, "-o", str(tmp_path / "p.png"), "--train-records", str(recs)]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
