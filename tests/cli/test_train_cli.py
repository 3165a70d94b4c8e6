"""Command-line arguments are checked before any work: `train --set` values, devices,
thread counts and record paths are one-line errors (exit 2); run folders are never
silently replaced; --json output is strict JSON; `models --all` works."""

import json
import math
import re

import pytest
import torch

from anycost.cli import main
from anycost.train import TrainConfig, run_lock, train

TINY = ["train", "test_resnet", "--recipe", "demo", "--epochs", "1", "--set", "batch_size=256", "--threads", "1",
        "--no-progress"]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript, jq) do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anycost: error: "), err
    return err[0][len("anycost: error: "):]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_run")
    train(TrainConfig(model="test_resnet", dataset="digits", epochs=1, batch_size=256, channels_last=False, flip=False,
                      progress=False, out_dir=str(out)))
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or a dataset fails the test: the command had to stop before it."""
    def fail(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    for mod in ("anycost.cli.eval", "anycost.cli.bench"):
        monkeypatch.setattr(f"{mod}.load_model", fail)
    monkeypatch.setattr("anycost.train.load_dataset", fail)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# ------------------------------------------------------------------ train --set and flags

@pytest.mark.parametrize("args, says", [
    (["--set", "lr=fast"], "lr must be a finite number > 0, got 'fast'"),
    (["--set", "epochs=1.5"], "epochs must be an integer >= 1, got 1.5"),
    (["--set", "model_kwargs="], "model_kwargs must be a JSON object"),
    (["--set", "model_kwargs={widths: [4]}"], "model_kwargs must be a JSON object such as {\"key\": 1}, got '{widths: [4]}'"),
    (["--set", "lr_mult=[1]"], "lr_mult must be a JSON object"),
    (["--set", "lr=nan"], "lr must be a finite number > 0, got 'nan'"),
    (["--set", "lr=NaN"], "lr must be a finite number > 0, got nan"),
    (["--set", "lr=inf"], "lr must be a finite number > 0, got 'inf'"),
    (["--set", "lr=Infinity"], "lr must be a finite number > 0, got inf"),
    (["--set", "lr=-0.1"], "lr must be a finite number > 0, got -0.1"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--set", "weight_decay=-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["--set", "momentum=1"], "momentum must be a number in [0, 1), got 1.0"),
    (["--set", "label_smoothing=1.5"], "label_smoothing must be a number in [0, 1), got 1.5"),
    (["--set", "warmup=1"], "warmup must be a fraction of all steps in [0, 1), got 1.0"),
    (["--set", "batch_size=0"], "batch_size must be an integer >= 1, got 0"),
    (["--epochs", "-3"], "epochs must be an integer >= 1, got -3"),
    (["--set", "nesterov=yes"], "nesterov must be true or false, got 'yes'"),
    (["--set", "augment=1"], "augment must be true or false, got 1"),
    (["--set", "schedule=step"], "schedule must be 'onecycle' or 'cosine', got 'step'"),
    (["--set", "bogus=1"], "unknown config keys: bogus"),
    (["--set", "lr"], "--set expects KEY=VALUE, got 'lr'"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--threads", "-1"], "threads must be an integer >= 1"),
    (["--device", "gpu"], "device must be a torch device such as cpu, cuda or cuda:1, got 'gpu'"),
])
def test_train_bad_values_are_one_line_errors_before_any_work(args, says, tmp_path, capsys, no_work):
    assert main([*TINY, "--out", str(tmp_path / "r"), *args]) == 2
    assert says in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_train_on_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys, no_work, no_cuda):
    assert main([*TINY, "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available" in one_line_error(capsys)
    assert main([*TINY, "--out", str(tmp_path / "r"), "--set", "device=cuda:1"]) == 2  # from --set or a recipe too
    assert "no CUDA device is available" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_train_refuses_to_replace_a_run_and_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    record = (out / "record.json").read_text()
    assert main([*TINY, "--out", str(out), "--seed", "3"]) == 2
    msg = one_line_error(capsys)
    assert str(out) in msg and "finished run" in msg and "--overwrite" in msg
    assert (out / "record.json").read_text() == record
    assert main([*TINY, "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "give one of them" in one_line_error(capsys)
    assert main([*TINY, "--out", str(out), "--force"]) == 2
    assert "--force only applies with --resume" in one_line_error(capsys)
    assert main([*TINY, "--out", str(out), "--resume", "--set", "lr=0.05"]) == 2
    assert re.search(r"cannot resume: 'lr' was 0\.1, now 0\.05 .*--force", one_line_error(capsys))
    assert main([*TINY, "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "record.json").read_text())["config"]["seed"] == 3


def test_train_into_a_folder_another_process_trains_into(tmp_path, capsys):
    with run_lock(tmp_path):
        assert main([*TINY, "--out", str(tmp_path)]) == 2
    msg = one_line_error(capsys)
    assert msg.startswith(f"{tmp_path} is in use: another process") and "choose another --out" in msg


# ------------------------------------------------------------------ eval and bench

EVAL = ["eval", "--no-record"]
BENCH = ["bench", "--latency-runs", "2", "--batches", "1", "--batch-size", "8", "--warmup", "1", "--rounds", "1"]


@pytest.mark.parametrize("cmd", ["eval", "bench"])
@pytest.mark.parametrize("args, says", [
    (["--threads", "0"], "--threads must be a thread count >= 1"),
    (["--threads", "-1"], "--threads must be a thread count >= 1"),
    (["--device", "cuda"], "--device cuda: no CUDA device is available on this machine"),
    (["--device", "cuda:7"], "--device cuda:7: no CUDA device is available"),
    (["--device", "npu0"], "--device 'npu0' is not a device"),
])
def test_eval_and_bench_check_threads_and_device_first(cmd, args, says, capsys, no_work, no_cuda):
    assert main([cmd, "resnet8.cpu30_cifar10", *args]) == 2
    assert says in one_line_error(capsys)


@pytest.mark.parametrize("cmd", ["eval", "bench"])
def test_record_that_is_a_folder_is_refused_before_any_work(cmd, tmp_path, capsys, no_work):
    assert main([cmd, "resnet8.cpu30_cifar10", "--record", str(tmp_path)]) == 2
    msg = one_line_error(capsys)
    assert msg.startswith(f"--record {tmp_path} is a folder; give a file path")
    (tmp_path / "file").write_text("x")
    assert main([cmd, "resnet8.cpu30_cifar10", "--record", str(tmp_path / "file" / "r.json")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_eval_json_is_strict_json(digits_run, capsys):
    assert main([*EVAL, str(digits_run), "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["split"] == "val" and out["n"] == 360 and 0 <= out["points"][0]["accuracy"] <= 100


def test_bench_json_is_strict_json_even_with_a_non_finite_figure(digits_run, tmp_path, capsys, monkeypatch):
    import anycost.bench

    real = anycost.bench.bench_model

    def with_nan(*a, **k):  # a figure that cannot be computed (e.g. a zero time) must not break the JSON
        res = real(*a, **k)
        res["points"][0]["speedup_batched"] = math.nan
        return res

    monkeypatch.setattr(anycost.bench, "bench_model", with_nan)
    assert main([*BENCH, str(digits_run), "--json", "--record", str(tmp_path / "b.json")]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["points"][0]["speedup_batched"] is None and out["record"] == str(tmp_path / "b.json")
    strict_json((tmp_path / "b.json").read_text())


# ------------------------------------------------------------------ models

def test_models_all_lists_the_test_variants(capsys):
    assert main(["models", "--all", "--json"]) == 0
    rows = strict_json(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"test_resnet", "test_ee_resnet", "test_cascade", "test_cnmm", "test_cnmm_r", "test_lcnet"} <= names
    assert {"resnet20", "cascade", "lcnet_resnet20"} <= names
    assert all(r["macs"] > 0 and r["params"] > 0 for r in rows)
    tiny = {r["name"]: r for r in rows}["test_cascade"]
    assert tiny["input_size"] == [3, 8, 8]
    assert main(["models", "--all", "test_*"]) == 0
    table = capsys.readouterr().out
    assert "test_lcnet" in table and "resnet20 " not in table
    assert main(["models"]) == 0
    assert "test_resnet" not in capsys.readouterr().out
