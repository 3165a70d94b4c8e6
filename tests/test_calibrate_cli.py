import json

import pytest
import torch

from anycost.cli import main
from anycost.data import load_dataset
from anycost.models import create_model
from anycost.train import TrainConfig, train


def _cfg(out, model, kw, epochs=5):
    return TrainConfig(model=model, model_kwargs=kw, dataset="digits", epochs=epochs, batch_size=64, flip=False,
                       channels_last=False, progress=False, out_dir=str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("digits")
    out = {}
    for name, model, kw in (("ee", "test_ee_resnet", {"widths": [8, 16, 32]}), ("r4", "resnet8", {"widths": [4, 8, 16]}),
                            ("r8", "resnet8", {"widths": [8, 16, 32]}), ("r16", "resnet8", {"widths": [16, 32, 64]})):
        torch.manual_seed(0)
        train(_cfg(root / name, model, kw), data=data)
        out[name] = root / name
    return out


def test_calibrate_export_then_eval_reproduces_the_curve(runs, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    rc = main(["calibrate", str(runs["ee"]), "--metrics", "maxprob", "--export", "ee.digits", "--zoo-dir", str(zoo),
               "--record", str(tmp_path / "cal.json")])
    assert rc == 0
    rec = json.loads((tmp_path / "cal.json").read_text())
    curves = rec["results"]["curves"]
    assert {c["calibrated_on"] for c in curves if "threshold" in c["method"] or "learned" in c["method"]} == {"calib"}
    assert {c["measured_on"] for c in curves} == {"holdout"}
    shipped = rec["results"]["operating_points"]
    assert len(shipped) >= 10
    capsys.readouterr()
    # eval runs the exported model with real routing on the holdout split: same numbers as the simulation
    assert main(["eval", str(zoo / "ee.digits.pt"), "--split", "holdout", "--json", "--no-record"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["calibrated_on"] == "calib" and len(ev["points"]) == len(shipped)
    simulated = {p["operating_point"]["name"]: p for c in curves for p in c["points"]}
    for p in ev["points"]:
        s = simulated[p["operating_point"]["name"]]
        assert p["accuracy"] == pytest.approx(s["accuracy"], abs=0.6)  # at most one of 180 images differs
        assert p["macs_mean"] == pytest.approx(s["macs_mean"], rel=0.01)


def test_calibrate_to_a_budget_says_if_reachable(runs, tmp_path, capsys):
    m = create_model("test_ee_resnet", num_classes=10, in_chans=1, widths=(8, 16, 32))
    lo, hi = m.exit_macs[0], m.exit_macs[-1]
    assert main(["calibrate", str(runs["ee"]), "--budget", str((lo + hi) / 2), "--record", str(tmp_path / "a.json")]) == 0
    assert "reachable;" in capsys.readouterr().out
    assert main(["calibrate", str(runs["ee"]), "--budget", str(lo / 2), "--record", str(tmp_path / "b.json")]) == 0
    assert "NOT reachable" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["results"]["budget"]["reachable"] is False


def test_cascade_calibrate_export_eval(runs, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    members = [str(runs[k]) for k in ("r4", "r8", "r16")]
    assert main(["calibrate", "--cascade", *members, "--metrics", "maxprob", "--export", "sel.digits",
                 "--zoo-dir", str(zoo), "--record", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    assert main(["eval", str(zoo / "sel.digits.json"), "--split", "holdout", "--json", "--no-record"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert len(ev["points"]) > 5 and all(len(p["path_fractions"]) == 3 for p in ev["points"])
    idx = json.loads((zoo / "index.json").read_text())
    assert idx["sel.digits"]["family"] == "selection"


def test_calibrate_refuses_bad_requests(runs, capsys):
    assert main(["calibrate", str(runs["ee"]), "--calib-split", "holdout", "--split", "holdout"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["calibrate", str(runs["r4"])]) == 2
    assert "static model" in capsys.readouterr().err
