import os
import pickle

import numpy as np
import pytest
import torch

from anycost.data import (BatchLoader, DataError, augment_batch, download_cifar, load_cifar, load_dataset,
                          load_digits, load_image_folder, make_split, safe_unpickle)
from conftest import SHARED_CIFAR


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_refuses_foreign_global(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR pickle .*refusing global 'posix.system'"):
        safe_unpickle(p)


def test_unpickler_reads_numpy_arrays(tmp_path):
    p = tmp_path / "b"
    arr = np.arange(12, dtype=np.uint8).reshape(2, 6)
    p.write_bytes(pickle.dumps({"data": arr}, protocol=2))
    assert np.array_equal(safe_unpickle(p)["data"], arr)


def test_truncated_file_is_a_clear_error(cifar_dir, tmp_path):
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    for f in cifar_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = (bad / "data_batch_3").read_bytes()
    (bad / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_3: truncated or corrupt pickle"):
        load_cifar(bad)


def test_missing_and_foreign_files(tmp_path, cifar_dir):
    with pytest.raises(DataError, match="data folder not found"):
        load_cifar(tmp_path / "nope")
    with pytest.raises(DataError, match="no cifar10 data here"):
        load_cifar(tmp_path)
    foreign = tmp_path / "f" / "cifar-10-batches-py"
    foreign.mkdir(parents=True)
    (foreign / "batches.meta").write_bytes((cifar_dir / "batches.meta").read_bytes())
    for i in range(1, 6):
        (foreign / f"data_batch_{i}").write_bytes(pickle.dumps({"something": 1}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR batch"):
        load_cifar(foreign)
    (foreign / "data_batch_1").unlink()
    with pytest.raises(DataError, match=r"data_batch_1: file not found"):
        load_cifar(foreign)


def test_cifar_layout_and_parent_folder(cifar_dir):
    a = load_cifar(cifar_dir)
    b = load_cifar(cifar_dir.parent)  # the parent folder works too
    assert a.images.shape == (100, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and a.classes[0] == "airplane"
    # channel-major rows: the first 1024 values are the red plane
    raw = pickle.loads((cifar_dir / "data_batch_1").read_bytes())["data"]
    assert np.array_equal(a.images[0, 0].numpy().ravel(), raw[0, :1024])
    assert np.array_equal(a.images[0, 2].numpy().ravel(), raw[0, 2048:])


def test_split_defaults_and_test_only_folder(cifar_dir, cifar_test_only, tmp_path):
    d = load_dataset("cifar10", str(cifar_dir), val_size=30)
    assert len(d.train) == 70 and len(d.val) == 30 and len(d.test) == 30
    assert d.split_info["val_indices"] == list(range(70, 100))  # the last images are validation
    calib, hold = d.get("calib"), d.get("holdout")
    assert len(calib) == len(hold) == 15
    assert torch.equal(torch.cat([calib.images, hold.images]), d.val.images)
    t = load_dataset("cifar10", str(cifar_test_only))
    assert len(t.test) == 40
    for f in cifar_dir.iterdir():  # training files only, as in ../shared/data
        if f.name != "test_batch":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError, match="test split is not available"):
        load_dataset("cifar10", str(tmp_path), val_size=30).get("test")


def test_make_split_is_seeded_and_disjoint():
    tr, va = make_split(100, 20, seed=3, mode="random")
    tr2, va2 = make_split(100, 20, seed=3, mode="random")
    assert torch.equal(va, va2) and len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 100
    assert not torch.equal(va, make_split(100, 20, seed=4, mode="random")[1])
    with pytest.raises(DataError):
        make_split(10, 10)


def test_download_fails_clearly_without_network(tmp_path):
    # port 9 on loopback refuses at once: the real download code path, with no network needed
    with pytest.raises(DataError, match="download of cifar10 failed .*copy the 'cifar-10-batches-py' folder"):
        download_cifar(tmp_path, "cifar10", url="http://127.0.0.1:9/cifar-10-python.tar.gz")


def test_download_is_never_implicit(tmp_path, monkeypatch):
    import anycost.data as D

    called = []
    monkeypatch.setattr(D, "download_cifar", lambda *a, **k: called.append(a))
    with pytest.raises(DataError):
        load_dataset("cifar10", str(tmp_path))
    assert not called


def test_digits_offline():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8 and int(d.images.max()) == 255
    s = load_dataset("digits")
    assert len(s.train) + len(s.val) == 1797 and s.num_classes == 10


def test_image_folder(tmp_path):
    from PIL import Image

    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), color).save(tmp_path / c / f"{i}.png")
    d = load_image_folder(tmp_path, size=16)
    assert d.images.shape == (6, 3, 16, 16) and d.classes == ["cat", "dog"]
    assert int(d.images[0, 0, 0, 0]) == 255 and int(d.images[-1, 2, 0, 0]) == 255
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")


def test_augment_batch_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, pad=2, flip=True, gen=g)
    assert y.shape == x.shape
    for b in range(2):  # every output is a shifted (maybe flipped) window of the zero-padded input
        xp = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
        windows = [xp[:, i:i + 4, j:j + 4] for i in range(5) for j in range(5)]
        assert any(torch.equal(y[b], w) or torch.equal(y[b], w.flip(2)) for w in windows)
    # same generator state -> same augmentation
    assert torch.equal(augment_batch(x, 2, True, torch.Generator().manual_seed(0)), y)


def test_cutout_zeroes_one_clipped_square_per_image():
    from anycost.data import apply_cutout

    x = torch.ones(3, 2, 8, 8)
    y = apply_cutout(x, 4, torch.tensor([4, 0, 7]), torch.tensor([4, 0, 2]))
    assert torch.equal(y[0, 0] == 0, torch.nn.functional.pad(torch.ones(4, 4), (2, 2, 2, 2)).bool())  # rows/cols 2-5
    assert int((y[1, 0] == 0).sum()) == 4 and bool((y[1, 0, :2, :2] == 0).all())  # clipped at the top-left corner
    assert int((y[2, 0] == 0).sum()) == 12 and bool((y[2, 0, 5:, 0:4] == 0).all())  # rows 5-7 only: clipped at the bottom
    assert torch.equal(y[:, 0], y[:, 1])  # every channel: the hole is the mean colour after normalisation
    assert torch.equal(x, torch.ones(3, 2, 8, 8))  # input untouched


def test_loader_cutout_is_training_only_and_keeps_the_stream_without_it():
    d = load_digits()
    kw = dict(batch_size=64, mean=[0.5], std=[0.25], shuffle=True, augment=True, flip=False, pad=1)
    a, _ = next(iter(BatchLoader(d, generator=torch.Generator().manual_seed(3), **kw)))
    b, _ = next(iter(BatchLoader(d, generator=torch.Generator().manual_seed(3), cutout=4, **kw)))
    # first batch: same shuffle and crops (cutout draws after them); it only zeroes a square
    # of at most 4x4 pixels in each image, and in every image at least one
    changed = (a != b).flatten(1).sum(1)
    assert bool((changed <= 16).all()) and bool(((b == 0) | (a == b)).all()) and bool((b == 0).flatten(1).any(1).all())
    # without augment (evaluation), cutout does nothing
    ev = [x for x, _ in BatchLoader(d, 64, [0.5], [0.25], cutout=4)]
    assert all(torch.equal(x, y) for x, (y, _) in zip(ev, BatchLoader(d, 64, [0.5], [0.25])))
    with pytest.raises(ValueError, match="cutout"):
        BatchLoader(d, 64, [0.5], [0.25], cutout=-1)


def test_loader_normalises_and_shards():
    d = load_digits()
    ld = BatchLoader(d, 500, [0.5], [0.25])
    x, y = next(iter(ld))
    assert x.dtype == torch.float32 and x.shape == (500, 1, 8, 8)
    assert torch.allclose(x, (d.images[:500].float() / 255 - 0.5) / 0.25)
    shards = [torch.cat([yb for _, yb in BatchLoader(d, 100, [0.5], [0.25], rank=r, world_size=2)]) for r in range(2)]
    assert shards[0].numel() == shards[1].numel() == 899


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 folder not present")
def test_shared_cifar_copy_loads():
    d = load_cifar(SHARED_CIFAR, split="train")
    assert d.images.shape == (50000, 3, 32, 32) and torch.bincount(d.labels).tolist() == [5000] * 10


def test_cifar100_layout(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": rng.integers(0, 100, n).tolist(),
             "coarse_labels": rng.integers(0, 20, n).tolist(), "filenames": ["x"] * n}
        (root / split).write_bytes(pickle.dumps(d, protocol=2))
    (root / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                                              "coarse_label_names": [f"s{i}" for i in range(20)]}, protocol=2))
    s = load_dataset("cifar100", str(tmp_path), val_size=2)
    assert s.num_classes == 100 and len(s.train) == 10 and len(s.test) == 5


def test_cli_download_flag_fails_clearly(tmp_path, monkeypatch, capsys):
    import anycost.data as D
    from anycost.cli import main

    real = D.download_cifar
    monkeypatch.setattr(D, "download_cifar", lambda root, ds: real(root, ds, url="http://127.0.0.1:9/x.tar.gz"))
    assert main(["train", "resnet8", "--recipe", "cpu", "--download", "--data-dir", str(tmp_path)]) == 2
    assert "download of cifar10 failed" in capsys.readouterr().err


def test_split_fingerprint_names_large_splits_by_hash():
    from anycost.data import split_fingerprint

    small, large = split_fingerprint(list(range(10))), split_fingerprint(list(range(5000, 0, -1)))
    assert small["val_indices"] == list(range(10)) and "val_indices" not in large
    assert large["val_indices_sha256"] == split_fingerprint(list(range(1, 5001)))["val_indices_sha256"]
    assert large["val_indices_sha256"] != split_fingerprint(list(range(2, 5002)))["val_indices_sha256"]


def test_same_normalization_tolerates_last_bits_not_another_dataset():
    from anycost.data import same_normalization

    c10 = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    c100 = {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]}
    assert same_normalization(c10, {k: [v + 1e-12 for v in vs] for k, vs in c10.items()})
    assert not same_normalization(c10, c100)
    assert not same_normalization(c10, {"mean": c10["mean"]}) and not same_normalization(c10, {**c10, "std": [0.2470]})
