import json

import pytest
import torch

from anycost.cli import main
from anycost.data import load_dataset
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


def test_calibrate_save_then_eval_reproduces_the_curve(runs, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    rc = main(["calibrate", str(runs["ee"]), "--option", 'metrics=["maxprob"]', "--save", "test_ee_resnet.mine_digits",
               "--zoo-dir", str(zoo), "--record", str(tmp_path / "cal.json")])
    assert rc == 0
    rec = json.loads((tmp_path / "cal.json").read_text())
    (curve,) = rec["results"]["curves"]
    assert curve["calibrated_on"] == "calib" and curve["measured_on"] == "holdout"
    shipped = rec["results"]["operating_points"]
    assert len(shipped) >= 3 and all(o["split"] == "calib" for o in shipped)
    capsys.readouterr()
    # the saved entry, loaded back from its folder, runs the same points with real routing: the same numbers
    saved = zoo / "test_ee_resnet.mine_digits.safetensors"
    assert main(["eval", str(saved), "--split", "holdout", "--json", "--no-record"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["calibrated_on"] == "calib" and len(ev["points"]) == len(shipped)
    for p, q in zip(ev["points"], curve["points"]):
        assert p["operating_point"]["name"] == q["operating_point"]["name"]
        assert p["accuracy"] == pytest.approx(q["accuracy"], abs=1e-9)
        assert p["macs_mean"] == pytest.approx(q["macs_mean"], rel=1e-9)


def test_calibrate_reports_the_budget_choice(runs, tmp_path, capsys):
    rec = tmp_path / "a.json"
    assert main(["calibrate", str(runs["ee"]), "--record", str(rec)]) == 0
    ops = json.loads(rec.read_text())["results"]["operating_points"]
    lo, hi = ops[0]["macs"], ops[-1]["macs"]
    capsys.readouterr()
    assert main(["calibrate", str(runs["ee"]), "--budget", str((lo + hi) / 2), "--record", str(rec)]) == 0
    b = json.loads(rec.read_text())["results"]["budget"]
    assert b["expected_macs"] <= (lo + hi) / 2 * (1 + 1e-9) and b["chosen_on"] == "calib"
    assert main(["calibrate", str(runs["ee"]), "--budget", str(lo / 2), "--record", str(rec)]) == 2
    assert "below the cheapest" in capsys.readouterr().err


def test_cascade_calibrate(runs, tmp_path, capsys):
    members = [str(runs[k]) for k in ("r4", "r8", "r16")]
    assert main(["calibrate", "--cascade", *members, "--record", str(tmp_path / "c.json")]) == 0
    (curve,) = json.loads((tmp_path / "c.json").read_text())["results"]["curves"]
    assert len(curve["points"]) >= 3 and all(len(p["path_fractions"]) == 3 for p in curve["points"])
    assert curve["family"] == "cascade"


def test_calibrate_a_static_model_measures_its_one_point(runs, tmp_path):
    assert main(["calibrate", str(runs["r4"]), "--record", str(tmp_path / "s.json")]) == 0
    (op,) = json.loads((tmp_path / "s.json").read_text())["results"]["operating_points"]
    assert op["name"] == "full" and op["split"] == "calib" and op["macs"] > 0


def test_calibrate_refuses_bad_requests(runs, capsys):
    assert main(["calibrate", str(runs["ee"]), "--calib-split", "holdout", "--split", "holdout"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["calibrate", str(runs["ee"]), "--option", "no_such_knob=1"]) == 2
    assert "--option" in capsys.readouterr().err
    assert main(["calibrate", str(runs["ee"]), "--option", "novalue"]) == 2
    assert main(["calibrate", str(runs["ee"]), "--save", "x.y"]) == 2
    assert "--zoo-dir" in capsys.readouterr().err
    assert main(["calibrate"]) == 2
