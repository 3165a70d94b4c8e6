import json
import subprocess
import sys

import pytest

from anycost.cli import COMMANDS, build_parser, main
from anycost.train import TrainConfig, train


SUBCOMMANDS = COMMANDS


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: anycost {cmd}" in out and len(out) > 200


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in SUBCOMMANDS) and "MACs" in out


def test_user_mistakes_are_one_line_errors_without_traceback(tmp_path):
    cases = [
        ["eval", "no-such-model"],
        ["train", "resnet20", "--recipe", "cpu", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
        ["train", "--recipe", "nope"],
        ["plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")],
        ["train", "resnet21", "--recipe", "demo", "--out", str(tmp_path / "r2")],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "anycost.cli", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("anycost: error:"), (args, p.stderr)
        assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("cifar_run")
    train(TrainConfig(model="resnet8", dataset="cifar10", data_dir=str(cifar_dir), val_size=20, epochs=1,
                      batch_size=32, progress=False, out_dir=str(out), channels_last=False,
                      model_kwargs={"widths": [4, 8, 16]}))
    return out


def test_eval_json_on_a_test_only_folder(cifar_run, cifar_test_only, tmp_path, capsys):
    rc = main(["eval", str(cifar_run / "last.pt"), "--data-dir", str(cifar_test_only.parent), "--split", "test",
               "--json", "--record", str(tmp_path / "rec.json")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["n"] == 40 and len(out["points"]) == 1
    p = out["points"][0]
    assert set(p) >= {"accuracy", "macs_mean", "operating_point"} and p["operating_point"]["name"] == "full"
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["kind"] == "eval" and rec["checkpoint"]["sha256"] == out["checkpoint_sha256"]
    assert rec["results"]["curve"]["measured_on"] == "test"


def test_eval_val_plot_report_roundtrip(cifar_run, cifar_dir, tmp_path, capsys):
    assert main(["eval", str(cifar_run), "--data-dir", str(cifar_dir), "--split", "val", "--record", str(tmp_path / "v.json")]) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "v.json"), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "v.json"), "-o", str(tmp_path / "g.png"), "--static-group", "mine=*"]) == 0
    assert main(["plot", str(tmp_path / "v.json"), "-o", str(tmp_path / "g.png"), "--static-group", "x=nothing*"]) == 2
    assert "no static network matches" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "v.json"), "-o", str(tmp_path / "g.png"), "--static-group", "noequals"]) == 2
    capsys.readouterr()
    assert main(["report", str(tmp_path / "v.json"), str(cifar_run / "record.json")]) == 0
    table = capsys.readouterr().out
    assert "| mean MACs (M) |" in table and "| val |" in table
    assert "| resnet8 | - | 1 |" in table and "train time (min)" in table  # the training record's row

    # --into rewrites only the marked block of a Markdown page, and names the command
    page = tmp_path / "README.md"
    page.write_text("# t\nkeep\n<!-- anycost:results:begin -->\nold\n<!-- anycost:results:end -->\ntail\n")
    assert main(["report", str(tmp_path / "v.json"), "--into", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# t\nkeep\n<!-- anycost:results:begin -->\n") and text.endswith("<!-- anycost:results:end -->\ntail\n")
    assert "old" not in text and "| mean MACs (M) |" in text and "anycost report" in text
    page.write_text("no markers here\n")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "v.json"), "--into", str(page)]) == 2
    assert "needs exactly one" in capsys.readouterr().err
    assert page.read_text() == "no markers here\n"  # untouched


def test_bench_static_speedup_is_one(cifar_run, tmp_path, capsys):
    rc = main(["bench", str(cifar_run), "--json", "--batch-size", "16", "--latency-runs", "5", "--batches", "2",
               "--warmup", "1", "--record", str(tmp_path / "b.json")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    (pt,) = out["points"]
    assert pt["speedup_batch1"] == 1.0 and pt["speedup_batched"] == 1.0 and pt["mac_reduction"] == 1.0
    assert pt["latency_ms_p50"] > 0 and pt["throughput_img_s"] > 0 and out["inputs"] == "random normal"
    capsys.readouterr()
    assert main(["report", str(tmp_path / "b.json")]) == 0
    assert "speed-up b1" in capsys.readouterr().out


def test_bench_reference_row_and_refusal_of_other_inputs(cifar_run, tmp_path, capsys):
    args = ["--batch-size", "8", "--latency-runs", "2", "--batches", "1", "--warmup", "0", "--rounds", "2"]
    assert main(["bench", str(cifar_run), "--reference", str(cifar_run), "--json", "--record", str(tmp_path / "b.json"),
                 *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"] == cifar_run.name and [p.get("reference", False) for p in out["points"]] == [False, True]
    assert json.loads((tmp_path / "b.json").read_text())["config"]["reference"] == str(cifar_run)
    # a model trained on other data normalises differently: comparing wall-clock would still
    # run, but the pair is not a like-for-like comparison, so it is refused before any timing
    assert main(["bench", str(cifar_run), "--reference", "resnet20.cpu30_cifar10", *args,
                 "--record", str(tmp_path / "c.json")]) == 2
    assert "normalises its inputs differently" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_models_and_zoo_listing(capsys):
    assert main(["models", "resnet*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"resnet8", "resnet20", "resnet56"}
    assert main(["zoo", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert isinstance(entries, list)
    # the table lists every shipped model, cascades (no epochs of their own) included
    assert main(["zoo"]) == 0
    table = capsys.readouterr().out
    assert all(e["name"] in table for e in entries)


def test_parser_builds():
    assert build_parser().prog == "anycost"


def test_zoo_resnet20_eval_on_test_only_folder_and_bench(cifar_test_only, capsys):
    """The acceptance commands: eval on a folder with only test_batch + batches.meta, and bench."""
    assert main(["eval", "resnet20.cpu30_cifar10", "--data-dir", str(cifar_test_only), "--split", "test", "--json",
                 "--no-record"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["points"][0]["macs_mean"] == 40551040
    assert main(["bench", "resnet20.cpu30_cifar10", "--latency-runs", "3", "--batches", "1", "--batch-size", "8",
                 "--warmup", "1", "--record", str(cifar_test_only.parent / "b.json")]) == 0
    text = capsys.readouterr().out
    assert "batch-1 p50 (ms)" in text and "| full | 40.551 | 1.00x |" in text


def test_report_summary_options_need_summary(tmp_path, capsys):
    assert main(["report", str(tmp_path / "x.json"), "--reference", "resnet20"]) == 2
    assert "belong to --summary" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "x.json"), "--gap", "lcnet_*"]) == 2
    assert "--gap-to" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "x.json"), "--gap", "lcnet_*", "--gap-to", "lnet_*"]) == 2
    assert "LABEL=METHOD_GLOB" in capsys.readouterr().err


def test_eval_threads_flag_sets_torch_threads(cifar_run, cifar_dir, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        assert main(["eval", str(cifar_run), "--data-dir", str(cifar_dir), "--split", "val", "--threads", str(want),
                     "--record", str(tmp_path / "v.json")]) == 0
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_group_static_gives_matching_static_networks_their_own_series():
    from anycost.eval import CurvePoint, OperatingPoint, TradeoffCurve
    from anycost.plot import group_static

    def curve(name, static=True):
        return TradeoffCurve(name, [CurvePoint(OperatingPoint("full"), 80.0, 1e6)], static=static)

    cs = [curve("resnet8"), curve("resnet8_kd"), curve("cnmm_kd: greedy", static=False)]
    out = group_static(cs, {"distilled": "*_kd"})
    assert [c.family for c in out] == [None, "distilled", None]  # dynamic curves are never grouped
    assert cs[1].family is None  # the input is not modified
    with pytest.raises(ValueError, match="no static network matches"):
        group_static(cs, {"typo": "*_kdd"})
    # '|' separates alternatives, as in `anycost report`'s globs
    assert [c.family for c in group_static(cs, {"both": "resnet8|*_kd"})] == ["both", "both", None]


def test_static_labels_do_not_cover_each_other(tmp_path, monkeypatch):
    """Two families' static networks at the same MACs and nearly the same accuracy: their
    name labels are moved apart (they used to be drawn on top of each other)."""
    import anycost.plot as plot
    from anycost.eval import CurvePoint, OperatingPoint, TradeoffCurve

    def curve(name, acc, macs, family):
        return TradeoffCurve(name, [CurvePoint(OperatingPoint("full"), acc, macs)], static=True, family=family)

    cs = [curve("resnet14.cpu_cifar10", 88.4, 26.4e6, "cpu 90 ep"), curve("resnet14.cifar10", 88.0, 26.4e6, "cpu30"),
          curve("resnet20.cpu_cifar10", 90.3, 40.6e6, "cpu 90 ep"), curve("resnet20.cifar10", 90.0, 40.6e6, "cpu30")]
    seen = {}
    separate = plot._separate

    def spy(fig, notes):
        separate(fig, notes)
        r = fig.canvas.get_renderer()
        seen["boxes"] = [n.get_window_extent(r) for n in notes]

    monkeypatch.setattr(plot, "_separate", spy)
    plot.plot_curves(cs, tmp_path / "s.png")
    boxes = seen["boxes"]
    assert len(boxes) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_export_writes_the_network_of_a_point(tmp_path, capsys):
    """TorchScript for a routed point (same logits as infer), ONNX for a static one, and a clear
    refusal of ONNX for a point that routes on content."""
    import torch

    import anycost
    from anycost.deploy import load_torchscript, run_onnx

    model = anycost.load("ee_resnet20.cifar10")
    routed = next(o for o in model.operating_points() if not model.is_static(o))
    assert main(["export", "ee_resnet20.cifar10", "--op", routed.name, "-o", str(tmp_path / "ee.pt")]) == 0
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_torchscript(tmp_path / "ee.pt")(x)
    assert torch.allclose(got, model.infer(x, routed).logits, atol=1e-4)
    assert main(["export", "ee_resnet20.cifar10", "--op", routed.name, "-o", str(tmp_path / "ee.onnx")]) == 2
    assert "routes each input" in capsys.readouterr().err
    pytest.importorskip("onnxruntime")
    assert main(["export", "resnet8.cpu30_cifar10", "-o", str(tmp_path / "r8.onnx")]) == 0
    with torch.no_grad():
        want = anycost.load("resnet8.cpu30_cifar10")(x)
    assert torch.allclose(run_onnx(tmp_path / "r8.onnx", x), want, atol=1e-4)
    assert main(["export", "resnet8.cpu30_cifar10", "--op", "nope", "-o", str(tmp_path / "x.pt")]) == 2


def test_publish_a_run_then_load_it_by_name(cifar_run, tmp_path, monkeypatch):
    import anycost

    zoo = tmp_path / "zoo"
    assert main(["publish", str(cifar_run), "--name", "resnet8.mine_cifar10", "--zoo-dir", str(zoo)]) == 0
    monkeypatch.setenv("ANYCOST_ZOO", str(zoo))
    m = anycost.load("resnet8.mine_cifar10", zoo_dir=zoo)
    assert m.weights.name == "resnet8.mine_cifar10" and m.weights.sha256
    assert main(["publish", str(cifar_run), "--name", "resnet20.wrong_cifar10", "--zoo-dir", str(zoo)]) == 2


def test_eval_fast_path_options_summary_and_record(cifar_test_only, tmp_path, capsys):
    """A cascade evaluates from one cached pass, checked on --verify images; --limit takes the
    first N; --real-routing gives the same numbers; the record says how and how long."""
    base = ["eval", "cascade.r8_r20_cifar10", "--data-dir", str(cifar_test_only), "--split", "test"]
    assert main(base + ["--limit", "25", "--verify", "10", "--record", str(tmp_path / "f.json")]) == 0
    err = capsys.readouterr().err
    assert "evaluated 25 images at" in err and "checked against real routing on 10 images" in err
    fast = json.loads((tmp_path / "f.json").read_text())
    assert fast["results"]["seconds"] > 0 and fast["config"]["verify"] == 10 and fast["config"]["limit"] == 25
    assert all(p["n"] == 25 for p in fast["results"]["curve"]["points"])
    assert main(base + ["--limit", "25", "--real-routing", "--record", str(tmp_path / "r.json")]) == 0
    assert "(real routing)" in capsys.readouterr().err
    real = json.loads((tmp_path / "r.json").read_text())
    key = lambda r: [(p["accuracy"], round(p["macs_mean"], 3)) for p in r["results"]["curve"]["points"]]
    assert key(fast) == key(real)
    for bad in (["--limit", "0"], ["--verify", "-1"]):
        assert main(base + bad + ["--no-record"]) == 2
        assert "--" + bad[0][2:] in capsys.readouterr().err
