import pytest
import torch

from anycost.checkpoint import CheckpointError
from anycost.cost import module_macs
from anycost.models import create_model
from anycost.train import TrainConfig, train
from anycost.zoo import export_to_zoo, load_cascade, load_model_file, read_index, zoo_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="test_resnet", dataset="digits", epochs=1, progress=False, out_dir=str(out), channels_last=False))
    return out


def test_export_roundtrip(tiny_run, tmp_path):
    p = export_to_zoo(tiny_run, "tiny.digits", tmp_path)
    idx = read_index(tmp_path)
    assert idx["tiny.digits"]["model"] == "test_resnet" and idx["tiny.digits"]["size_bytes"] == p.stat().st_size
    m, meta = load_model_file(p)
    ref, _ = load_model_file(tiny_run / "last.pt")
    assert meta["metrics"]["macs"] == module_macs(m, (1, 8, 8))
    # the training augmentation travels with the model (BN re-estimation replays it)
    aug = {"augment": True, "flip": True, "pad": None, "cutout": 0}  # TrainConfig's defaults
    assert meta["train_augment"] == aug and load_model_file(tiny_run)[1]["train_augment"] == aug
    assert not m.training and m.pretrained_cfg["num_classes"] == 10
    x = torch.randn(4, 1, 8, 8)
    # float16 storage changes the logits only slightly
    assert torch.allclose(m(x), ref(x), atol=0.05)


def test_mismatched_and_corrupt_checkpoints(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="trained with num_classes=10"):
        load_model_file(tiny_run / "last.pt", num_classes=100)
    ck = torch.load(tiny_run / "last.pt", weights_only=True)
    ck["meta"]["model_name"] = "resnet14"  # more blocks: keys missing from the file
    torch.save(ck, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not match the model: .*missing keys"):
        load_model_file(tmp_path / "wrong.pt")
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an anycost checkpoint"):
        load_model_file(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model_file(tmp_path / "garbage.pt")


def test_unknown_pretrained_name():
    with pytest.raises(KeyError, match="no pretrained model 'resnet20.imagenet'"):
        create_model("resnet20", pretrained="imagenet")


@pytest.mark.parametrize("name", sorted(read_index()))
def test_committed_zoo_entries(name):
    """Every committed checkpoint loads by name, is at most 2 MB for CIFAR ResNets, and its
    declared MACs match the live model."""
    entry = read_index()[name]
    if entry["family"] == "selection":  # a JSON spec naming zoo members, plus operating points
        path = zoo_dir() / f"{name}.json"
        assert path.stat().st_size == entry["size_bytes"]
        casc, meta = load_cascade(path)
        assert meta["operating_points"] and all(m in read_index() for m in meta["members"])
        out = casc(torch.randn(2, *meta["input_size"]))
        assert out.shape == (2, meta["num_classes"]) and torch.isfinite(out).all()
        return
    path = zoo_dir() / f"{name}.pt"
    assert path.stat().st_size == entry["size_bytes"]
    if entry["family"] == "resnet":
        assert entry["size_bytes"] <= 2_000_000
    base, tag = name.rsplit(".", 1)
    m = create_model(entry["model"], pretrained=tag) if base == entry["model"] else load_model_file(path)[0]
    assert module_macs(m, m.pretrained_cfg["input_size"]) == entry["macs"]
    out = m(torch.randn(2, *m.pretrained_cfg["input_size"]))
    assert out.shape == (2, m.pretrained_cfg["num_classes"]) and torch.isfinite(out).all()
