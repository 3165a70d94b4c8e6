import json

import pytest

from anycost.cli import main


def test_reproduce_trains_exports_then_reuses(tmp_path, capsys):
    zoo, out = tmp_path / "zoo", tmp_path / "out"
    assert main(["reproduce", "digits", "--zoo-dir", str(zoo), "--out", str(out), "--epochs", "2",
                 "--latency-runs", "3"]) == 0
    rec = json.loads((out / "reproduce_record.json").read_text())
    methods = {c["method"] for c in rec["results"]["curves"]}
    assert methods == {"r8w4", "r8w16", "ee", "select", "cnmm", "lcnet"} and not rec["results"]["missing"]
    assert {c["measured_on"] for c in rec["results"]["curves"]} == {"holdout"}
    assert set(rec["results"]["bench"]) == methods
    for f in ("accuracy_vs_macs.png", "wallclock.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert "Measured on: holdout" in (out / "results.md").read_text()
    index = json.loads((zoo / "index.json").read_text())
    assert set(index) == {"r8w4.digits", "r8w16.digits", "ee.digits", "select.digits", "cnmm.digits", "lcnet.digits"}
    assert index["ee.digits"]["operating_points"] > 5

    # multi-exit curves come from one cached pass per model: real routed execution agrees
    for name in ("ee", "select"):
        capsys.readouterr()
        ext = ".json" if name == "select" else ".pt"
        assert main(["eval", str(zoo / f"{name}.digits{ext}"), "--split", "holdout", "--json", "--no-record"]) == 0
        real = {p["operating_point"]["name"]: p for p in json.loads(capsys.readouterr().out)["points"]}
        (sim,) = [c for c in rec["results"]["curves"] if c["method"] == name]
        assert len(sim["points"]) == len(real) > 5
        for p in sim["points"]:
            r = real[p["operating_point"]["name"]]
            assert abs(p["accuracy"] - r["accuracy"]) <= 0.6 and abs(p["macs_mean"] - r["macs_mean"]) <= 0.01 * r["macs_mean"]

    # --reuse: the same numbers from the zoo alone, nothing trained
    out2 = tmp_path / "out2"
    assert main(["reproduce", "digits", "--reuse", "--zoo-dir", str(zoo), "--out", str(out2), "--no-bench"]) == 0
    rec2 = json.loads((out2 / "reproduce_record.json").read_text())
    acc = lambda r: {c["method"]: [p["accuracy"] for p in c["points"]] for c in r["results"]["curves"]}
    assert acc(rec2) == acc(rec)
    assert not (out2 / "runs").exists()


def test_reproduce_reuse_lists_what_is_missing(tmp_path, capsys):
    assert main(["reproduce", "digits", "--reuse", "--zoo-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "reproduce_record.json").read_text())
    assert len(rec["results"]["missing"]) == 6 and rec["results"]["curves"] == []
    assert "missing: r8w4.digits" in (tmp_path / "results.md").read_text()


def test_suite_entries_name_real_models():
    """A typo in a suite entry would only surface hours into a full reproduction."""
    from anycost.models import list_models
    from anycost.reproduce import SUITES

    models = set(list_models())
    for suite in SUITES.values():
        for e in suite:
            assert e.model is None or e.model in models, e.name
            assert (e.kind == "cascade") == bool(e.members), e.name


def test_suite_entries_start_from_and_distil_from_earlier_entries():
    """init_from and teacher are read from the zoo the suite fills, so they must come earlier."""
    from anycost.reproduce import SUITES

    for suite in SUITES.values():
        seen = set()
        for e in suite:
            for dep in (e.init_from, e.teacher):
                assert dep is None or dep in seen, f"{e.name} needs {dep} before it"
            seen.add(e.name)


def test_missing_start_or_teacher_is_a_clear_error(tmp_path):
    from anycost.reproduce import Entry, _obtain

    for kw, msg in (({"init_from": "r8w4.digits"}, "starts from r8w4.digits"),
                    ({"teacher": "r8w16.digits"}, "distils from r8w16.digits")):
        e = Entry("kd.digits", "static", "static ResNet", "resnet8", **kw)
        with pytest.raises(FileNotFoundError, match=f"{msg}, which is not in the zoo yet"):
            _obtain(e, None, None, tmp_path, tmp_path / "runs", print)
