import json

import pytest
import torch

from anycost.bench import BenchConfig, bench_model
from anycost.demo import run_demo
from anycost.plot import load_curves, plot_speedups
from toy import TwoStage


@pytest.mark.filterwarnings("ignore:unsteady timings")  # tiny models time noisily; the numbers are not the point
def test_bench_dynamic_points_report_mac_reduction(tmp_path):
    m = TwoStage()
    res = bench_model(m, torch.randn(32, 1, 8, 8), cfg=BenchConfig(batch_size=16, latency_runs=4, throughput_batches=2, warmup=1))
    by = {r["operating_point"]["name"]: r for r in res["points"]}
    assert res["full_point"]["name"] == "all" and by["all"]["mac_reduction"] == 1.0
    full, cheap = m.c1 + m.h1 + m.c2 + m.h2, m.c1 + m.h1
    assert by["none"]["mac_reduction"] == full / cheap
    assert by["half"]["macs_mean_batched"] == (full + cheap) / 2
    for r in res["points"]:
        assert r["realised_fraction_batched"] == r["speedup_batched"] / r["mac_reduction"]
        rounds = sorted(r["throughput_img_s_rounds"])  # default: 5 rounds, the median one counts
        assert len(rounds) == 5 and r["throughput_img_s"] == rounds[2]
        lat = sorted(r["latency_ms_rounds"])
        assert r["latency_ms_p50"] == lat[2]
        lo, hi = r["speedup_batched_range"]
        assert lo <= r["speedup_batched"] * (1 + 1e-9) and r["speedup_batched"] <= hi * (1 + 1e-9)
        assert r["throughput_spread"] == (rounds[-1] - rounds[0]) / rounds[2]
    assert res["machine"]["threads"] == res["threads"] and res["machine"]["torch"] == torch.__version__
    assert "cpu" in res["machine"] and isinstance(res["unsteady"], list)
    out = plot_speedups({"toy": res}, tmp_path / "s.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_demo_runs_and_writes_table_record_plot(tmp_path, capsys):
    rec = run_demo(str(tmp_path), epochs=1)
    out = capsys.readouterr().out
    assert "| method | operating point |" in out
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    curves = load_curves([tmp_path / "demo_record.json"])
    assert len(curves) == len(rec["results"]["curves"]) >= 4
    assert all(c.measured_on == "holdout" and c.points[0].macs_mean > 0 for c in curves)
    assert all(c.calibrated_on == "calib" for c in curves)
    fams = {c.family for c in curves}
    assert {"static ResNet", "early exit", "network selection", "cnmm", "lcnet"} <= fams
    # every dynamic model ships several calibrated points, measured with real routing
    assert all(len(c.points) >= 2 for c in curves if c.family != "static ResNet")
    assert json.loads((tmp_path / "demo_record.json").read_text())["kind"] == "demo"


@pytest.mark.filterwarnings("ignore:unsteady timings")
def test_bench_interleaves_rounds_in_alternating_order_and_fixes_threads(monkeypatch):
    """Every round visits every point, forwards then backwards; the thread count is fixed
    for the run and restored after it."""
    m = TwoStage()
    seen = []
    infer = type(m).infer

    def spy(self, x, op=None, generator=None):
        if x.shape[0] == 16:  # batched calls only
            seen.append(op.name if hasattr(op, "name") else op)
        return infer(self, x, op, generator)

    monkeypatch.setattr(type(m), "infer", spy)
    ops = m.operating_points()
    before = torch.get_num_threads()
    res = bench_model(m, torch.randn(32, 1, 8, 8), ops,
                      BenchConfig(batch_size=16, latency_runs=4, throughput_batches=1, warmup=0, rounds=2, threads=1))
    assert res["threads"] == 1 and torch.get_num_threads() == before
    names = [o.name for o in ops]
    timed = seen[len(names):]  # after one warm-up batch per point
    assert timed == names + names[::-1]
    with pytest.raises(ValueError, match="rounds"):
        BenchConfig(rounds=0)


def test_unsteady_timings_warn(monkeypatch):
    import pytest

    import anycost.bench as bench

    # a clock that makes every other round ten times slower
    state = {"t": 0.0, "n": 0}

    def fake():
        state["n"] += 1
        state["t"] += 1.0 if (state["n"] // 40) % 2 == 0 else 10.0
        return state["t"]

    monkeypatch.setattr(bench.time, "perf_counter", fake)
    with pytest.warns(UserWarning, match="unsteady timings"):
        res = bench_model(TwoStage(), torch.randn(32, 1, 8, 8),
                          cfg=BenchConfig(batch_size=16, latency_runs=4, throughput_batches=1, warmup=0, rounds=4))
    assert res["unsteady"] and all(u["spread"] > 0.2 for u in res["unsteady"])


@pytest.mark.filterwarnings("ignore:unsteady timings")
def test_bench_reference_is_timed_in_the_same_rounds_and_every_speedup_is_against_it(monkeypatch):
    """--reference: the static network to beat runs as one more point of every round (in the
    alternating order), is flagged, and the MAC reductions and speed-ups divide by it."""
    import torch.nn as nn

    from anycost.cost import module_macs

    seen = []

    class Ref(nn.Module):  # a plain CNN; counts its batched calls
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(16, 3))

        def forward(self, x):
            if x.shape[0] == 16:
                seen.append("ref")
            return self.net(x)

    m, ref = TwoStage(), Ref()
    ref_macs = module_macs(ref, (1, 8, 8))
    res = bench_model(m, torch.randn(32, 1, 8, 8), cfg=BenchConfig(batch_size=16, latency_runs=4, throughput_batches=1,
                                                                     warmup=0, rounds=2), reference=ref, reference_name="cnn")
    rows = res["points"]
    assert res["reference"] == "cnn" and rows[-1]["reference"] and rows[-1]["operating_point"]["name"].startswith("cnn")
    assert not any(r.get("reference") for r in rows[:-1])
    assert rows[-1]["mac_reduction"] == 1.0 and rows[-1]["speedup_batched"] == 1.0
    by = {r["operating_point"]["name"]: r for r in rows}
    full, cheap = m.c1 + m.h1 + m.c2 + m.h2, m.c1 + m.h1
    assert by["none"]["mac_reduction"] == pytest.approx(ref_macs / cheap)
    assert by["all"]["mac_reduction"] == pytest.approx(ref_macs / full)
    assert by["all"]["speedup_batched"] == by["all"]["throughput_img_s"] / rows[-1]["throughput_img_s"]
    assert len(seen) == 1 + 2  # one warm-up batch, then one timed batch in each of the 2 rounds
