import json

import torch

from anycost.bench import BenchConfig, bench_model
from anycost.demo import run_demo
from anycost.plot import load_curves, plot_speedups
from toy import TwoStage


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
        rounds = sorted(r["throughput_img_s_rounds"])  # default: 3 rounds, the median one counts
        assert len(rounds) == 3 and r["throughput_img_s"] == rounds[1]
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
