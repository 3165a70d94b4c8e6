import json

import pytest
import torch

from anycost.checkpoint import CheckpointError, load_checkpoint
from anycost.train import StopTraining, TrainConfig, load_recipe, list_recipes, train
from anycost.models import create_model


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
    assert len(rec["split"]["val_indices"]) == 360 and len(rec["split"]["val_indices_sha256"]) == 64
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


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    from anycost.losses import distillation_loss

    t = torch.randn(8, 10)
    assert distillation_loss(t.clone(), t, 4.0).abs() < 1e-5
    s = torch.randn(8, 10, requires_grad=True)
    loss = distillation_loss(s, t, 4.0)
    assert loss > 0
    loss.backward()
    with torch.no_grad():  # a small step against the gradient moves the student towards the teacher
        assert distillation_loss(s - 0.5 * s.grad, t, 4.0) < loss
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(torch.randn(8, 10), torch.randn(8, 5), 4.0)


def test_training_with_a_teacher_distils_and_resumes(tmp_path):
    """A student distilled from a trained teacher (a run folder) trains, records the teacher,
    resumes to the same weights, and a different teacher weight refuses to resume. The
    distillation term changes training: weights differ from the same run without it."""
    train(tiny_cfg(tmp_path / "teacher", epochs=2))
    kw = dict(teacher=str(tmp_path / "teacher"), distill=2.0)
    ref = train(tiny_cfg(tmp_path / "ref", **kw))
    assert ref["config"]["teacher"] == str(tmp_path / "teacher") and ref["results"]["final"]["val_acc"] > 30
    w_ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]

    def kill(step):
        if step == 15:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(tiny_cfg(tmp_path / "killed", **kw), on_step=kill)
    train(tiny_cfg(tmp_path / "killed", **kw), resume=True)
    w = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w[k], w_ref[k]) for k in w)
    with pytest.raises(CheckpointError, match="'distill'"):
        train(tiny_cfg(tmp_path / "killed", teacher=kw["teacher"], distill=1.0), resume=True)
    train(tiny_cfg(tmp_path / "plain"))
    w_plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["model"]
    assert not all(torch.equal(w_plain[k], w_ref[k]) for k in w)


def test_distillation_config_errors(tmp_path):
    with pytest.raises(ValueError, match="teacher and a weight"):
        train(tiny_cfg(tmp_path, distill=1.0))
    with pytest.raises(ValueError, match="teacher and a weight"):
        train(tiny_cfg(tmp_path, teacher="resnet20.cpu30_cifar10"))
    with pytest.raises(ValueError, match="normalisation"):
        train(tiny_cfg(tmp_path, dataset="digits", teacher="resnet20.cpu30_cifar10", distill=1.0))


def test_lr_mult_gives_named_parameters_their_own_learning_rate():
    from anycost.train import param_groups

    m = create_model("test_lcnet", num_classes=10, in_chans=1)
    groups = param_groups(m, 5e-4, 0.1, {"predictors": 10})
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, p in m.named_parameters():
        g = by_id[id(p)]
        assert g["lr"] == pytest.approx(1.0 if name.startswith("predictors") else 0.1), name
        assert g["weight_decay"] == (5e-4 if p.ndim > 1 else 0.0), name
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 5e-4  # base groups first, as before
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    with pytest.raises(ValueError, match="no parameter name starts with 'predictor_typo'"):
        param_groups(m, 5e-4, 0.1, {"predictor_typo": 10})
    with pytest.raises(ValueError, match="lr_mult values must be positive"):
        TrainConfig(lr_mult={"predictors": 0}).validate()


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch):
    import anycost.train as tr

    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without AVX512-BF16"):
        train(tiny_cfg(tmp_path, epochs=1, amp="bf16"))
    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # native bf16, or float32: no warning
        train(tiny_cfg(tmp_path / "b", epochs=1, amp="bf16"))
        monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: False)
        train(tiny_cfg(tmp_path / "c", epochs=1))


def test_cpu_has_native_bf16_reads_the_cpu_probes(monkeypatch):
    import anycost.train as tr

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert tr.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert tr.cpu_has_native_bf16() is True


def test_cutout_is_validated_and_part_of_the_resume_check(tmp_path):
    with pytest.raises(ValueError, match="cutout"):
        train(tiny_cfg(tmp_path / "neg", cutout=-2))
    train(tiny_cfg(tmp_path, epochs=1, cutout=2))  # 8x8 digits, 2x2 holes
    with pytest.raises(Exception, match="'cutout' was 2, now 0"):
        train(tiny_cfg(tmp_path, epochs=1), resume=True)


@pytest.mark.parametrize("kill_at", [None, 1437 // 128 + 5])
def test_weight_ema_is_published_and_resumes_exactly(tmp_path, kill_at):
    """With ``ema`` on, ``model`` in the checkpoint is the average (differs from the live
    weights, which are kept as ``train_model``), the record carries both accuracies, and a
    run killed mid-epoch resumes to the same average as an uninterrupted one."""
    ref = tiny_cfg(tmp_path / "ref", ema=0.9, ema_warmup=3)
    train(ref)
    ck_ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    assert ck_ref["model"].keys() == ck_ref["train_model"].keys()
    assert not torch.equal(ck_ref["model"]["fc.weight"], ck_ref["train_model"]["fc.weight"])
    rows = json.loads((tmp_path / "ref" / "record.json").read_text())["results"]["history"]
    assert all("val_acc_raw" in r and "val_acc" in r for r in rows)
    if kill_at is None:
        return
    cfg = tiny_cfg(tmp_path / "killed", ema=0.9, ema_warmup=3)

    def kill(step):
        if step == kill_at:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(cfg, on_step=kill)
    train(cfg, resume=True)
    ck = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    for key in ("model", "train_model"):
        assert all(torch.equal(ck[key][k], ck_ref[key][k]) for k in ck[key]), key
    with pytest.raises(CheckpointError, match="cannot resume: 'ema'"):
        train(tiny_cfg(tmp_path / "killed", ema=0.5, ema_warmup=3), resume=True)


def test_ema_config_is_checked():
    with pytest.raises(ValueError, match="ema must be a per-step decay"):
        TrainConfig(ema=1.0).validate()


def test_record_states_training_compute(tmp_path):
    """3 x forward MACs per image seen, plus the teacher's forward when distilling; kept
    cumulative per epoch and across a resume."""
    from anycost.cost import module_macs

    cfg = tiny_cfg(tmp_path / "a", epochs=2)
    rec = train(cfg)
    r = rec["results"]
    fwd = module_macs(create_model("test_resnet", num_classes=10, in_chans=1), (1, 8, 8))
    seen = sum(h["images_seen"] for h in r["history"])
    assert seen == 2 * (1437 // 128) * 128  # drop_last batches of the training split
    assert r["train_macs_per_image"] == 3 * fwd and r["train_macs"] == seen * 3 * fwd
    assert r["history"][0]["train_macs"] == r["history"][0]["images_seen"] * 3 * fwd
    assert "backward" in r["train_macs_convention"]
    # a resumed run continues the count
    more = train(tiny_cfg(tmp_path / "a", epochs=2), resume=True)["results"]
    assert more["train_macs"] == r["train_macs"]
    kd = train(tiny_cfg(tmp_path / "kd", epochs=1, teacher=str(tmp_path / "a"), distill=1.0))["results"]
    assert kd["train_macs_per_image"] == 4 * fwd  # the teacher is the same architecture: one more forward
