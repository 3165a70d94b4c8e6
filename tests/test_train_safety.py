"""Training never loses or silently replaces a run, and every config value is checked:
typed and range-checked TrainConfig fields (property tests), finished/unfinished run
folders, the run-folder lock (two real processes), and resume checks with --force."""

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycost.checkpoint import CheckpointError
from anycost.cli._common import parse_set
from anycost.data import DATASETS
from anycost.train import (RESUME_FREE, RunFolderError, StopTraining, TrainConfig, resume_changes, run_lock,
                           train)


def tiny_cfg(out, **kw):
    d = dict(model="test_resnet", dataset="digits", epochs=1, batch_size=256, lr=0.1, channels_last=False,
             flip=False, progress=False, out_dir=str(out), seed=1)
    d.update(kw)
    return TrainConfig(**d)


# ------------------------------------------------------------------ config values

FINITE = dict(allow_nan=False, allow_infinity=False)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
COUNT = st.integers(1, 10**6)
NATURAL = st.integers(0, 10**6)
FRACTION = st.floats(0, 1, exclude_max=True, **FINITE)

# every field but the teacher pair (they go together; tested below) and a valid value for it
VALID = {
    "model": TEXT, "model_kwargs": st.dictionaries(TEXT, st.integers() | st.booleans() | TEXT, max_size=3),
    "dataset": st.sampled_from(DATASETS), "data_dir": st.none() | TEXT, "val_size": st.none() | NATURAL,
    "split_seed": NATURAL, "epochs": COUNT, "batch_size": COUNT,
    "lr": st.floats(0, 1e6, exclude_min=True, **FINITE),
    "lr_mult": st.dictionaries(TEXT, st.floats(0, 1e3, exclude_min=True, **FINITE), max_size=3),
    "momentum": st.floats(0.01, 1, exclude_max=True, **FINITE), "nesterov": st.booleans(),
    "weight_decay": st.floats(0, 1e3, **FINITE), "schedule": st.sampled_from(["onecycle", "cosine"]),
    "warmup": FRACTION, "label_smoothing": FRACTION, "augment": st.booleans(), "flip": st.booleans(),
    "pad": st.none() | NATURAL, "cutout": NATURAL, "channels_last": st.booleans(), "compile": st.booleans(),
    "amp": st.sampled_from([None, "bf16"]), "seed": NATURAL, "device": st.sampled_from(["cpu", "cuda", "cuda:1", "mps"]),
    "threads": st.none() | COUNT, "eval_batch_size": COUNT, "out_dir": TEXT, "progress": st.booleans(),
    "init_from": st.none() | TEXT, "distill_temp": st.floats(0, 1e3, exclude_min=True, **FINITE),
    "ema": FRACTION, "ema_warmup": NATURAL,
}

NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WRONG_TYPE = st.sampled_from(["fast", "", [1], {"a": 1}, True])
NOT_INT = st.floats(allow_nan=True).filter(lambda v: not (math.isfinite(v) and v.is_integer())) | st.sampled_from(
    ["3", [3], {"n": 3}, True])
# values each field must refuse: wrong type, non-finite or out of range
INVALID = {
    "epochs": NOT_INT | st.integers(max_value=0), "batch_size": NOT_INT | st.integers(max_value=0),
    "eval_batch_size": NOT_INT | st.integers(max_value=0), "threads": NOT_INT | st.integers(max_value=0),
    "seed": NOT_INT | st.integers(max_value=-1), "split_seed": NOT_INT | st.integers(max_value=-1),
    "cutout": NOT_INT | st.integers(max_value=-1), "pad": NOT_INT | st.integers(max_value=-1),
    "val_size": NOT_INT | st.integers(max_value=-1), "ema_warmup": NOT_INT | st.integers(max_value=-1),
    "lr": NONFINITE | WRONG_TYPE | st.floats(max_value=0, **FINITE),
    "distill_temp": NONFINITE | WRONG_TYPE | st.floats(max_value=0, **FINITE),
    "weight_decay": NONFINITE | WRONG_TYPE | st.floats(max_value=0, exclude_max=True, **FINITE),
    "momentum": NONFINITE | WRONG_TYPE | st.floats(min_value=1, **FINITE) | st.floats(max_value=0, exclude_max=True, **FINITE),
    "warmup": NONFINITE | WRONG_TYPE | st.floats(min_value=1, **FINITE) | st.floats(max_value=0, exclude_max=True, **FINITE),
    "label_smoothing": NONFINITE | WRONG_TYPE | st.floats(min_value=1, **FINITE),
    "ema": NONFINITE | WRONG_TYPE | st.floats(min_value=1, **FINITE),
    "nesterov": st.integers() | TEXT | st.none(), "augment": st.integers() | TEXT, "progress": st.sampled_from(["yes", 1, 0.0]),
    "model_kwargs": st.sampled_from(["", "{bad", [1, 2], 3, None]), "lr_mult": st.sampled_from(["", [1], {"a": 0}, {"a": math.nan}]),
    "schedule": st.sampled_from(["step", "", 1, None]), "amp": st.sampled_from(["fp16", "", 1, True]),
    "dataset": st.sampled_from(["imagenet", "", 3, None]), "device": st.sampled_from(["gpu", "", "cuda:x", 0, None]),
    "model": st.sampled_from(["", 3, None]), "out_dir": st.sampled_from(["", 0, None]),
    "flip": st.sampled_from([1, "no"]), "channels_last": st.sampled_from([0, "true"]), "compile": st.sampled_from([1.0, "on"]),
    "data_dir": st.sampled_from([3, ["d"]]), "init_from": st.sampled_from(["", 3]),
}


def set_arg(key, value) -> str:
    """The --set argument a user would type for this value (JSON, as parse_set reads it)."""
    return f"{key}={json.dumps(value)}"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_valid_value_is_accepted_and_round_trips(data):
    key = data.draw(st.sampled_from(sorted(VALID)))
    value = data.draw(VALID[key])
    via_set = TrainConfig.from_dict(parse_set([set_arg(key, value)]))
    assert getattr(via_set, key) == value
    again = TrainConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(via_set))))  # a record's config
    assert again == via_set


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_invalid_value_is_a_value_error_naming_the_key_and_value(data):
    key = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[key])
    for build in (lambda: TrainConfig(**{key: value}), lambda: TrainConfig.from_dict(parse_set([set_arg(key, value)]))):
        with pytest.raises(ValueError) as e:
            build()
        msg = str(e.value)
        assert msg.startswith(key) and repr(value) in msg and "\n" not in msg, msg


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_invalid_set_value_exits_2_with_one_line_naming_the_key(tmp_path_factory, data):
    from unittest import mock

    from anycost.cli import main

    key = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[key])
    out = tmp_path_factory.getbasetemp() / "never-written"
    err = io.StringIO()
    with mock.patch("anycost.train.load_dataset", side_effect=AssertionError("training started")), \
            contextlib.redirect_stderr(err):
        where = [] if key == "out_dir" else ["--out", str(out)]  # --out would win over --set out_dir
        rc = main(["train", "test_resnet", "--recipe", "demo", *where, "--set", set_arg(key, value)])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"anycost: error: {key}"), (rc, lines)
    assert not out.exists()


def test_every_field_has_valid_and_invalid_examples():
    """A new TrainConfig field must join the property tests above."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(VALID) | {"teacher", "distill"} == names
    assert set(INVALID) | {"teacher", "distill"} == names


@pytest.mark.parametrize("kw, match", [
    ({"distill": 1.0}, "teacher and a weight"), ({"teacher": "resnet8.x"}, "teacher and a weight"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum > 0"),
    ({"distill": -1.0, "teacher": "t"}, "distill must be"), ({"bogus": 1}, "unknown config keys: bogus"),
])
def test_settings_that_go_together(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(kw)


def test_a_field_changed_after_construction_is_checked_by_train(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.epochs = 1.5
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 1.5"):
        train(cfg)
    assert not (tmp_path / "last.pt").exists()


def test_integers_for_float_fields_become_floats():
    cfg = TrainConfig.from_dict({"lr": 1, "weight_decay": 0})
    assert type(cfg.lr) is float and type(cfg.weight_decay) is float and cfg.lr == 1.0


# ------------------------------------------------------------------ run folders

def _weights(out):
    return torch.load(out / "last.pt", weights_only=True)["model"]


def test_a_finished_run_is_refused_unless_overwrite(tmp_path):
    train(tiny_cfg(tmp_path))
    before = (tmp_path / "record.json").read_text(), (tmp_path / "last.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"holds a finished run .*--overwrite"):
        train(tiny_cfg(tmp_path, seed=2))
    assert ((tmp_path / "record.json").read_text(), (tmp_path / "last.pt").read_bytes()) == before
    rec = train(tiny_cfg(tmp_path, seed=2, epochs=2), overwrite=True)
    assert rec["config"]["seed"] == 2 and rec["results"]["epochs_done"] == 2
    assert json.loads((tmp_path / "record.json").read_text()) == rec
    # resuming a finished run is still allowed (a no-op that returns its record)
    assert train(tiny_cfg(tmp_path, seed=2, epochs=2), resume=True)["results"]["status"] == "done"


def test_an_unfinished_run_needs_resume_or_overwrite(tmp_path):
    _killed_run(tmp_path)
    w = _weights(tmp_path)
    with pytest.raises(RunFolderError, match=r"unfinished run \(1 of 2 epochs done\); use --resume .* --overwrite"):
        train(tiny_cfg(tmp_path, epochs=2))
    assert all(torch.equal(w[k], _weights(tmp_path)[k]) for k in w)
    with pytest.raises(ValueError, match="give one of them"):
        train(tiny_cfg(tmp_path, epochs=2), resume=True, overwrite=True)
    assert train(tiny_cfg(tmp_path, epochs=2), resume=True)["results"]["epochs_done"] == 2


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_to_start(tmp_path):
    train(tiny_cfg(tmp_path))
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="normalisation"):  # the teacher check fails during set-up
        train(tiny_cfg(tmp_path, teacher="resnet20.cpu30_cifar10", distill=1.0), overwrite=True)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_nothing_to_resume_creates_no_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_cfg(tmp_path / "typo"), resume=True)
    assert not (tmp_path / "typo").exists()


def test_a_file_as_run_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train(tiny_cfg(tmp_path / "f"))


# ------------------------------------------------------------------ the lock

def test_a_held_lock_refuses_a_second_run_naming_the_folder(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path} is in use: another process (pid {os.getpid()})")):
            train(tiny_cfg(tmp_path))
        assert (tmp_path / "train.lock").exists()  # the holder's file, untouched by the refused run
    assert not (tmp_path / "last.pt").exists()
    assert not (tmp_path / "train.lock").exists()  # released and removed on the way out
    train(tiny_cfg(tmp_path))  # the folder is usable again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "record.json"]
    with run_lock(tmp_path):  # and train released it too
        pass


CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import torch
    from anycost.train import TrainConfig, train
    torch.set_num_threads(1)
    out = pathlib.Path(sys.argv[1])
    started, release = out.parent / "started", out.parent / "release"

    def hold(step):  # the first step waits until the parent has tried the same folder
        started.touch()
        while not release.exists():
            time.sleep(0.02)

    train(TrainConfig(model="test_resnet", dataset="digits", epochs=1, batch_size=256, lr=0.1, channels_last=False,
                      flip=False, progress=False, out_dir=str(out), seed=1), on_step=hold)
""")


def test_two_processes_cannot_train_into_one_folder(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(6000):  # the child holds the lock once it trains
            if (tmp_path / "started").exists() or child.poll() is not None:
                break
            time.sleep(0.02)
        assert (tmp_path / "started").exists(), child.communicate()[1][-2000:]
        with pytest.raises(RunFolderError, match=re.escape(f"{out} is in use: another process (pid {child.pid})")):
            train(tiny_cfg(out))
        with pytest.raises(RunFolderError, match="is in use"):  # --overwrite does not take it either
            train(tiny_cfg(out), overwrite=True)
    finally:
        (tmp_path / "release").touch()
        _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-2000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["results"]["status"] == "done" and rec["config"]["seed"] == 1  # the child's run, untouched


# ------------------------------------------------------------------ resume checks

def _killed_run(out, **kw):
    def kill(step):
        if step == 7:  # in epoch 2 of 2 (5 steps per epoch: 1,437 training images, batch 256)
            raise StopTraining

    with pytest.raises(StopTraining):
        train(tiny_cfg(out, epochs=2, **kw), on_step=kill)


@pytest.mark.parametrize("change", [{"lr": 0.05}, {"weight_decay": 0.0}, {"label_smoothing": 0.2},
                                    {"momentum": 0.8}, {"warmup": 0.3}, {"augment": False}, {"amp": "bf16"},
                                    {"init_from": "resnet8.cpu30_cifar10"}])
def test_resume_refuses_every_setting_that_changes_the_result(tmp_path, change):
    _killed_run(tmp_path)
    key, value = next(iter(change.items()))
    with pytest.raises(CheckpointError, match=f"cannot resume: '{key}' was .*, now {value!r}.*--force"):
        train(tiny_cfg(tmp_path, epochs=2, **change), resume=True)


def test_resume_accepts_changes_that_cannot_change_the_weights(tmp_path):
    _killed_run(tmp_path)
    free = dict(eval_batch_size=7, threads=1, channels_last=True, data_dir=str(tmp_path / "elsewhere"))
    rec = train(tiny_cfg(tmp_path, epochs=2, **free), resume=True)
    assert rec["results"]["status"] == "done" and "forced_changes" not in rec["results"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_resume_changes_are_exactly_the_fields_outside_resume_free(data):
    base = TrainConfig()
    key = data.draw(st.sampled_from(sorted(VALID)))
    value = data.draw(VALID[key].filter(lambda v: v != getattr(base, key)))
    changed = dataclasses.replace(base, **{key: value})
    expect = {} if key in RESUME_FREE else {key: {"from": getattr(base, key), "to": value}}
    assert resume_changes(dataclasses.asdict(base), changed) == expect


def test_force_resumes_applies_the_new_values_and_records_them(tmp_path):
    _killed_run(tmp_path)
    with pytest.raises(ValueError, match="--force only applies with --resume"):
        train(tiny_cfg(tmp_path / "x"), force=True)
    rec = train(tiny_cfg(tmp_path, epochs=2, lr=0.05, weight_decay=0.0), resume=True, force=True)
    forced = rec["results"]["forced_changes"]
    assert forced == [{"at_epoch": 1, "changes": {"lr": {"from": 0.1, "to": 0.05},
                                                 "weight_decay": {"from": 5e-4, "to": 0.0}}}]
    assert rec["config"]["lr"] == 0.05
    groups = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.05, 0.05]  # the optimiser used the new lr, not the saved one
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0]


def test_forced_changes_change_the_weights_and_unforced_resume_stays_bit_identical(tmp_path):
    train(tiny_cfg(tmp_path / "ref", epochs=2))
    _killed_run(tmp_path / "same")
    train(tiny_cfg(tmp_path / "same", epochs=2), resume=True)
    _killed_run(tmp_path / "forced")
    train(tiny_cfg(tmp_path / "forced", epochs=2, lr=0.02), resume=True, force=True)
    ref, same, forced = (_weights(tmp_path / n) for n in ("ref", "same", "forced"))
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not all(torch.equal(ref[k], forced[k]) for k in ref if ref[k].is_floating_point())
