"""One table of bad command lines (issue #34): each exits 2 with one line on stderr, names
the bad value, and shows no traceback. Cases that need data use the tiny CIFAR fixtures."""

from __future__ import annotations

import pickle

import pytest

from anycost.cli import main


@pytest.fixture(scope="module")
def bad_meta_dir(tmp_path_factory, cifar_dir):
    """A CIFAR-10 folder whose batches.meta names the wrong classes."""
    import shutil

    root = tmp_path_factory.mktemp("badmeta") / "cifar-10-batches-py"
    shutil.copytree(cifar_dir, root)
    names = [f"class{i}" for i in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": 20}, protocol=2))
    return root


CASES = [
    # (id, argv with {tmp} / {data} / {badmeta} placeholders, text the message must contain)
    ("set-not-a-number", ["train", "--set", "lr=fast", "--dataset", "digits"], "lr"),
    ("set-not-an-int", ["train", "--set", "epochs=1.5", "--dataset", "digits"], "epochs"),
    ("set-empty-json", ["train", "--set", "model_kwargs=", "--dataset", "digits"], "model_kwargs"),
    ("set-bad-json", ["train", "--set", "model_kwargs={bad", "--dataset", "digits"], "model_kwargs"),
    ("set-nan", ["train", "--set", "lr=nan", "--dataset", "digits"], "lr"),
    ("set-negative", ["train", "--set", "weight_decay=-1", "--dataset", "digits"], "weight_decay"),
    ("set-unknown-key", ["train", "--set", "learning_rate=0.1", "--dataset", "digits"], "learning_rate"),
    ("flag-not-an-int", ["train", "--epochs", "1.5"], "1.5"),
    ("threads-negative", ["eval", "resnet8.cpu30_cifar10", "--threads", "-1"], "-1"),
    ("record-is-a-dir", ["eval", "resnet8.cpu30_cifar10", "--record", "{tmp}"], "--record"),
    ("budget-nan", ["export", "ee_resnet20.cifar10", "--budget", "nan", "-o", "{tmp}/x.pt"], "budget"),
    ("budget-zero", ["export", "cascade.r8_r20_cifar10", "--budget", "0", "-o", "{tmp}/x.pt"], "budget"),
    ("budget-negative", ["export", "cascade.r8_r20_cifar10", "--budget", "-5e6", "-o", "{tmp}/x.pt"], "budget"),
    ("budget-inf", ["export", "ee_resnet20.cifar10", "--budget", "inf", "-o", "{tmp}/x.pt"], "budget"),
    ("budget-unreachable", ["export", "ee_resnet20.cifar10", "--budget", "1000", "-o", "{tmp}/x.pt"], "budget"),
    ("unknown-op", ["export", "cnmm_r6.kd2_cifar10", "--op", "edges 99%", "-o", "{tmp}/x.pt"], "edges 99%"),
    ("unknown-model", ["eval", "resnet21.cifar10"], "resnet21.cifar10"),
    ("wrong-class-names", ["eval", "resnet8.cpu30_cifar10", "--data-dir", "{badmeta}", "--split", "val",
                           "--no-record"], "batches.meta"),
    ("name-traversal", ["publish", "{tmp}", "--name", "../../x"], "../../x"),
    ("shipped-name", ["calibrate", "resnet8.cpu30_cifar10", "--save", "resnet20.cpu30_cifar10"], "resnet20.cpu30_cifar10"),
    ("predict-missing-image", ["predict", "resnet8.cpu30_cifar10", "{tmp}/nope.png"], "nope.png"),
    ("unknown-command", ["evaluate"], "evaluate"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys, bad_meta_dir):
    _, argv, must = case
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{badmeta}", str(bad_meta_dir)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    lines = [x for x in out.err.splitlines() if x.strip()]
    assert code == 2, out.err
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err and "error" in lines[0]
    assert must in lines[0], lines[0]
