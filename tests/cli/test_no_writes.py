"""Issue #34: the writing commands (publish, calibrate --save, export, reproduce) leave the
installed package and the repository's zoo/ untouched and write to the user zoo
($ANYCOST_HOME/zoo); names are checked; shipped entries are never replaced; a taken name
needs --overwrite. Every refusal is one line on stderr, exit 2, before any work."""

import json
import os
import subprocess
import sys

import pytest

import anycost
from anycost.cli import main
from anycost.zoo import get_weights, package_dir, read_index, repo_zoo_dir, user_dir

SHIPPED = "resnet8.cpu30_cifar10"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYCOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANYCOST_ZOO", raising=False)
    monkeypatch.delenv("ANYCOST_ZOO_URL", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny digits ResNet-8 runs (different seeds): 'a' and 'b'."""
    from anycost.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        train(TrainConfig(model="resnet8", model_kwargs={"widths": [4, 8, 16]}, dataset="digits", epochs=1, seed=seed,
                          progress=False, out_dir=str(root / name), channels_last=False))
    return {k: root / k for k in "ab"}


def snapshot() -> dict:
    """(size, mtime) of every file in the package's zoo records and the repository's zoo/."""
    out = {}
    for d in (package_dir(), repo_zoo_dir()):
        if d is None:
            continue
        for p in sorted(d.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                out[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns)
    return out


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("anycost: error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_writing_commands_touch_only_the_user_zoo(runs, tmp_path, monkeypatch, capsys, home):
    from anycost import reproduce
    from anycost.reproduce import Entry

    before = snapshot()
    assert before  # there is something to protect
    assert main(["publish", str(runs["a"]), "--name", "resnet8.pub_digits"]) == 0
    assert main(["calibrate", str(runs["b"]), "--save", "resnet8.cal_digits", "--record", str(tmp_path / "c.json")]) == 0
    assert main(["export", "resnet8.pub_digits", "-o", str(tmp_path / "pub.pt")]) == 0
    tiny = [Entry("resnet8.w4_digits", "static ResNet", {"widths": [4, 8, 16]}),
            Entry("resnet8.w8_digits", "static ResNet", {"widths": [8, 16, 32]}),
            Entry("cascade.w4_w8_digits", "network selection", members=["resnet8.w4_digits", "resnet8.w8_digits"])]
    monkeypatch.setitem(reproduce.SUITES, "digits", tiny)
    assert main(["reproduce", "digits", "--epochs", "1", "--no-bench", "--out", str(tmp_path / "rep")]) == 0
    assert snapshot() == before
    zoo = home / "zoo"
    assert user_dir() == zoo
    made = {"resnet8.pub_digits", "resnet8.cal_digits", "resnet8.w4_digits", "resnet8.w8_digits",
            "cascade.w4_w8_digits"}
    assert set(read_index(zoo)["entries"]) == made
    assert {p.name for p in zoo.glob("*.safetensors")} == {f"{n}.safetensors" for n in made if "cascade" not in n}
    assert not made & set(read_index()["entries"])
    # the user's entries load by name, from the user zoo
    m = anycost.load("resnet8.cal_digits")
    assert m.pretrained_cfg["source"] == str(zoo / "resnet8.cal_digits.safetensors")
    assert m.weights.provenance["derived_from"] == "resnet8.run_digits"
    rec = json.loads((tmp_path / "rep" / "reproduce_record.json").read_text())
    assert rec["config"]["zoo"] == str(zoo) and not rec["results"]["missing"]


@pytest.mark.parametrize("name, why", [("../../x", "path separator"), ("resnet8.a/b", "path separator"),
                                       ("resnet8", "no '.'"), ("Resnet8.Mine", "characters 'MR'"),
                                       ("resnet8.-x", "starting with"), ("resnet8.a b", "characters ' '")])
def test_bad_names_are_one_line_errors(runs, tmp_path, capsys, name, why):
    assert main(["publish", str(runs["a"]), "--name", name]) == 2
    one_line_error(capsys, repr(name), why, "arch.tag")
    assert main(["calibrate", str(runs["a"]), "--save", name, "--record", str(tmp_path / "c.json")]) == 2
    one_line_error(capsys, "--save", why)
    assert not (tmp_path / "c.json").exists()  # refused before calibrating
    assert not (tmp_path / "x.safetensors").exists() and not list(tmp_path.rglob("x.*"))


def test_path_traversal_name_writes_nothing_anywhere(runs, tmp_path, capsys):
    zoo = tmp_path / "deep" / "er" / "zoo"
    assert main(["publish", str(runs["a"]), "--name", "../../x", "--zoo-dir", str(zoo)]) == 2
    one_line_error(capsys, "'../../x'", "path separator")
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize("name", [SHIPPED, "resnet8.cifar10"])  # an entry and an old name of one
def test_shipped_names_are_refused_even_with_overwrite(runs, tmp_path, capsys, name):
    before = snapshot()
    for extra in ([], ["--overwrite"], ["--zoo-dir", str(tmp_path / "mine")],
                  ["--zoo-dir", str(tmp_path / "mine"), "--overwrite"]):
        assert main(["publish", str(runs["a"]), "--name", name, *extra]) == 2
        one_line_error(capsys, f"'{name}'", "shipped", "read-only")
        assert main(["calibrate", str(runs["a"]), "--save", name, "--record", str(tmp_path / "c.json"), *extra]) == 2
        one_line_error(capsys, "--save", "shipped")
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "mine").exists()
    assert snapshot() == before


def test_calibrate_save_of_a_shipped_model_under_its_own_name_is_refused(tmp_path, capsys):
    """`calibrate resnet8.cpu30_cifar10 --save resnet8.cpu30_cifar10` would re-point a shipped entry."""
    assert main(["calibrate", SHIPPED, "--save", SHIPPED, "--record", str(tmp_path / "c.json")]) == 2
    one_line_error(capsys, "shipped")
    assert not (tmp_path / "c.json").exists()


def test_a_taken_name_needs_overwrite(runs, tmp_path, capsys, home):
    zoo = home / "zoo"
    assert main(["publish", str(runs["a"]), "--name", "resnet8.mine_digits"]) == 0
    capsys.readouterr()
    sha_a = get_weights("resnet8.mine_digits").sha256
    files = {p.name: p.read_bytes() for p in zoo.iterdir()}
    # another run, or another model calibrated and saved under the same name: refused, nothing changed
    assert main(["publish", str(runs["b"]), "--name", "resnet8.mine_digits"]) == 2
    one_line_error(capsys, "'resnet8.mine_digits' already exists", "--overwrite")
    assert main(["calibrate", str(runs["b"]), "--save", "resnet8.mine_digits", "--record", str(tmp_path / "c.json")]) == 2
    one_line_error(capsys, "already exists", "--overwrite")
    assert not (tmp_path / "c.json").exists()
    assert {p.name: p.read_bytes() for p in zoo.iterdir()} == files
    # --overwrite replaces it
    assert main(["publish", str(runs["b"]), "--name", "resnet8.mine_digits", "--overwrite"]) == 0
    sha_b = get_weights("resnet8.mine_digits").sha256
    assert sha_b != sha_a
    assert main(["calibrate", str(runs["a"]), "--save", "resnet8.mine_digits", "--overwrite",
                 "--record", str(tmp_path / "c.json")]) == 0
    w = get_weights("resnet8.mine_digits")  # run a's model again, re-calibrated
    assert w.sha256 != sha_b and w.provenance["derived_from"] == "resnet8.run_digits"
    # the same name in another folder is free
    assert main(["publish", str(runs["b"]), "--name", "resnet8.mine_digits", "--zoo-dir", str(tmp_path / "z")]) == 0


def test_export_refuses_a_folder_as_output(tmp_path, capsys):
    assert main(["export", SHIPPED, "-o", str(tmp_path)]) == 2
    one_line_error(capsys, str(tmp_path), "folder")


def test_refusal_in_a_fresh_process_has_no_traceback(runs, tmp_path):
    env = {**os.environ, "ANYCOST_HOME": str(tmp_path / "home")}
    p = subprocess.run([sys.executable, "-m", "anycost.cli", "publish", str(runs["a"]), "--name", "../../x"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "path separator" in p.stderr
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.safetensors"))
