import json

import pytest

from anycost.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """An empty $ANYCOST_HOME: the machine's own user zoo must not lend entries to the suite."""
    monkeypatch.setenv("ANYCOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANYCOST_ZOO", raising=False)
    return tmp_path / "home"


NAMES = {"resnet8.w4_digits", "resnet8.w16_digits", "test_ee_resnet.w16_digits", "cascade.w4_w16_digits", "test_cnmm.w16_digits", "test_lcnet.digits"}


def test_reproduce_trains_exports_then_reuses(tmp_path, capsys):
    zoo, out = tmp_path / "zoo", tmp_path / "out"
    assert main(["reproduce", "digits", "--zoo-dir", str(zoo), "--out", str(out), "--epochs", "2",
                 "--latency-runs", "3"]) == 0
    rec = json.loads((out / "reproduce_record.json").read_text())
    methods = {c["method"] for c in rec["results"]["curves"]}
    assert methods == NAMES and not rec["results"]["missing"]
    assert {c["measured_on"] for c in rec["results"]["curves"]} == {"holdout"}
    assert set(rec["results"]["bench"]) == methods
    for f in ("accuracy_vs_macs.png", "wallclock.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert "Measured on: holdout" in (out / "results.md").read_text()
    from anycost.zoo import get_weights, list_weights

    assert {w.name for w in list_weights("*digits", zoo)} == NAMES
    ee = get_weights("test_ee_resnet.w16_digits", zoo)
    assert len(ee.operating_points) >= 3 and all(o["split"] == "calib" for o in ee.operating_points)
    assert get_weights("cascade.w4_w16_digits", zoo).members == ["resnet8.w4_digits", "resnet8.w16_digits"]

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
    assert "missing: resnet8.w4_digits" in (tmp_path / "results.md").read_text()


def test_reproduce_defaults_to_the_user_zoo(tmp_path, home):
    """Not the repository's zoo/: `anycost reproduce` in a checkout must not change tracked files."""
    from anycost.zoo import repo_zoo_dir

    assert main(["reproduce", "digits", "--reuse", "--out", str(tmp_path / "out"), "--no-bench"]) == 0
    rec = json.loads((tmp_path / "out" / "reproduce_record.json").read_text())
    assert rec["config"]["zoo"] == str(home / "zoo") != str(repo_zoo_dir())
    assert len(rec["results"]["missing"]) == 6


def test_suite_entries_name_real_models():
    """A typo in a suite entry would only surface hours into a full reproduction."""
    from anycost.models import list_models
    from anycost.reproduce import SUITES

    models = set(list_models())
    for suite in SUITES.values():
        for e in suite:
            assert e.arch in models, e.name
            assert (e.arch == "cascade") == bool(e.members), e.name


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

    for kw, msg in (({"init_from": "resnet8.w4_digits"}, "starts from resnet8.w4_digits"),
                    ({"teacher": "resnet8.w16_digits"}, "distils from resnet8.w16_digits")):
        e = Entry("resnet8.kd_digits", "static ResNet", **kw)
        with pytest.raises(FileNotFoundError, match=f"{msg}, which is not in the zoo yet"):
            _obtain(e, None, None, tmp_path, tmp_path / "runs", print)
