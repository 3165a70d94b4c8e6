import json

import pytest
import torch

from anycost.checkpoint import CheckpointError, load_checkpoint
from anycost.train import StopTraining, TrainConfig, load_recipe, list_recipes, train


def tiny_cfg(out, **kw):
    d = dict(model="test_resnet", dataset="digits", epochs=3, batch_size=128, lr=0.1, channels_last=False, flip=False,
             progress=False, out_dir=str(out), seed=1)
    d.update(kw)
    return TrainConfig(**d)


def test_resume_after_kill_mid_epoch_gives_identical_weights(tmp_path):
    ref = tiny_cfg(tmp_path / "ref")
    train(ref)
    w_ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]

    cfg = tiny_cfg(tmp_path / "killed")
    steps_per_epoch = 1437 // 128  # 11, drop_last

    def kill(step):
        if step == steps_per_epoch + 5:  # in the middle of epoch 2
            raise StopTraining

    with pytest.raises(StopTraining):
        train(cfg, on_step=kill)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    rec = train(cfg, resume=True)
    w = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert w.keys() == w_ref.keys()
    assert all(torch.equal(w[k], w_ref[k]) for k in w), "resumed run diverged from the uninterrupted one"
    assert rec["results"]["epochs_done"] == 3 and rec["results"]["status"] == "done"


def test_record_has_config_commit_seed_hardware_history(tmp_path):
    rec = train(tiny_cfg(tmp_path, epochs=2))
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk == rec
    assert rec["config"]["model"] == "test_resnet" and rec["seed"] == 1
    assert set(rec["git"]) == {"commit", "dirty"} and rec["hardware"]["torch"] == torch.__version__
    h = rec["results"]["history"]
    assert [r["epoch"] for r in h] == [1, 2] and all(0 <= r["val_acc"] <= 100 for r in h)
    assert len(rec["split"]["val_indices"]) == 360
    assert rec["model"]["normalization"]["mean"] and len(rec["model"]["classes"]) == 10


def test_training_learns_digits(tmp_path):
    rec = train(tiny_cfg(tmp_path, epochs=10, model="resnet8", model_kwargs={"widths": [8, 16, 32]}, batch_size=64))
    assert rec["results"]["final"]["val_acc"] > 80  # chance is 10 %


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    train(tiny_cfg(tmp_path, epochs=1))
    p = tmp_path / "last.pt"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match=r"last.pt: truncated or corrupt checkpoint"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(tiny_cfg(tmp_path, epochs=1), resume=True)


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny_cfg(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="cannot resume: 'batch_size'"):
        train(tiny_cfg(tmp_path, epochs=1, batch_size=64), resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_cfg(tmp_path / "empty"), resume=True)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="schedule"):
        tiny_cfg("x", schedule="step").validate()


def test_packaged_recipes_are_valid_configs():
    assert {"cpu", "paper", "demo"} <= set(list_recipes())
    for r in list_recipes():
        TrainConfig.from_dict(load_recipe(r)).validate()
    with pytest.raises(ValueError, match="unknown recipe"):
        load_recipe("nope")


def test_bf16_autocast_trains_in_bf16_and_keeps_float32_weights(tmp_path, monkeypatch):
    import anycost.train as tr

    seen = []
    real_create = tr.create_model

    def spy_create(*a, **kw):  # records the dtype of every training-mode conv output
        m = real_create(*a, **kw)
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.register_forward_hook(lambda mod, i, o: seen.append(o.dtype) if mod.training else None)
        return m

    monkeypatch.setattr(tr, "create_model", spy_create)
    rec = train(tiny_cfg(tmp_path, epochs=10, model="resnet8", model_kwargs={"widths": [8, 16, 32]}, batch_size=64,
                         amp="bf16"))
    assert seen and set(seen) == {torch.bfloat16}
    w = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in w.values())
    assert rec["config"]["amp"] == "bf16" and rec["results"]["final"]["val_acc"] > 80


def test_unknown_amp_is_refused(tmp_path):
    with pytest.raises(ValueError, match="amp must be 'bf16'"):
        train(tiny_cfg(tmp_path, amp="fp8"))
