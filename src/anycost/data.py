"""Datasets as uint8 tensors in memory, seeded splits, and a batch loader that augments
whole batches with tensor ops (no per-sample Python loop).

Sources:
  * CIFAR-10 / CIFAR-100 from a local folder in the official "python version" layout,
    read with a restricted unpickler (a crafted pickle cannot run code);
  * ``--download`` through torchvision, only when asked for;
  * a user's image folders (one sub-folder per class) through torchvision's ImageFolder;
  * ``digits``: scikit-learn's 8x8 handwritten digits, shipped inside the sklearn wheel,
    the offline default for the demo and the tests.

Images stay uint8 ``(N, C, H, W)`` until a batch is drawn; normalisation statistics are
computed on the training split and travel with the model (``pretrained_cfg``).
"""

from __future__ import annotations

import hashlib

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DataError",
    "ImageDataset",
    "SplitData",
    "load_cifar",
    "load_digits",
    "load_image_folder",
    "download_cifar",
    "make_split",
    "load_dataset",
    "load_split",
    "BatchLoader",
    "augment_batch",
    "apply_cutout",
    "crop_pad",
    "DATASETS",
]

DATASETS = ("cifar10", "cifar100", "digits", "folder")
# Two loaders' statistics of one training set agree to the last bits; two datasets' differ in
# the second or third decimal (CIFAR-10 and CIFAR-100 means: 0.491 and 0.507).
NORM_TOL = 1e-4
SPLITS = ("train", "val", "calib", "holdout", "test")


class DataError(RuntimeError):
    """A data problem the user can fix: missing, truncated or foreign files."""


def same_normalization(a: dict, b: dict, tol: float = NORM_TOL) -> bool:
    """Whether two ``{"mean": [...], "std": [...]}`` normalisations are the same (to ``tol``)."""
    a, b = a or {}, b or {}
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a[k], b[k])) for k in a)


# --------------------------------------------------------------------------- unpickling

# The only globals the official CIFAR pickles (and numpy re-packs of them) reference.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes written by Python 3 at protocol 2
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside numpy's array reconstruction."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}'")
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> dict:
    """Load one CIFAR pickle; every failure becomes a one-line DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refusing global" in str(e):
            raise DataError(f"{path}: not a CIFAR pickle ({e})") from None
        raise DataError(f"{path}: truncated or corrupt pickle ({e})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    # Python 2 pickles loaded with latin1 have str keys; re-packs may have bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


# --------------------------------------------------------------------------- containers


@dataclass
class ImageDataset:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: list[str]
    name: str

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: Tensor, name: str | None = None) -> "ImageDataset":
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, name or self.name)


@dataclass
class SplitData:
    """train / val (carved from the training files) and test (only if its files exist)."""

    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset | None
    mean: list[float]  # per-channel, in [0, 1] pixel units, from the train split
    std: list[float]
    split_info: dict = field(default_factory=dict)  # goes in every run record

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def get(self, split: str) -> ImageDataset:
        """train, val, test, or the two halves of val: 'calib' (first half: where dynamic
        models choose operating points) and 'holdout' (second half: where they are measured)."""
        if split in ("calib", "holdout") and self.val is not None:
            half = len(self.val) // 2
            idx = torch.arange(half) if split == "calib" else torch.arange(half, len(self.val))
            return self.val.subset(idx, f"{self.val.name.rsplit('-', 1)[0]}-{split}")
        ds = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if ds is None:
            if split == "test":
                raise DataError("the test split is not available: its files (e.g. test_batch) are not in the data folder")
            raise DataError(f"split '{split}' is not available (choose from {', '.join(SPLITS)})")
        return ds


# --------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names"),
}


def find_cifar_dir(data_dir: str | os.PathLike, dataset: str = "cifar10") -> Path:
    """``data_dir`` may be the batches folder itself or its parent."""
    spec = _CIFAR[dataset]
    d = Path(data_dir).expanduser()
    if not d.exists():
        raise DataError(f"{d}: data folder not found")
    if (d / spec["meta"]).exists():
        return d
    if (d / spec["folder"] / spec["meta"]).exists():
        return d / spec["folder"]
    raise DataError(f"{d}: no {dataset} data here (expected '{spec['meta']}' in it or in '{spec['folder']}/' below it)")


def _read_cifar_files(root: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        d = safe_unpickle(root / f)
        if "data" not in d or label_key not in d:
            raise DataError(f"{root / f}: not a CIFAR batch (keys {sorted(d)[:6]}, need 'data' and '{label_key}')")
        x = np.asarray(d["data"])
        y = np.asarray(d[label_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or x.shape[0] != y.shape[0]:
            raise DataError(f"{root / f}: 'data' must be uint8 of shape (N, 3072) matching {y.shape[0]} labels, got {x.dtype} {x.shape}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(data_dir: str | os.PathLike, dataset: str = "cifar10", split: str = "train") -> ImageDataset:
    """Read the official python-version pickles. ``split`` is 'train' or 'test'."""
    if dataset not in _CIFAR:
        raise DataError(f"unknown CIFAR dataset '{dataset}' (choose cifar10 or cifar100)")
    spec = _CIFAR[dataset]
    root = find_cifar_dir(data_dir, dataset)
    meta = safe_unpickle(root / spec["meta"])
    if spec["names_key"] not in meta:
        raise DataError(f"{root / spec['meta']}: no '{spec['names_key']}' key")
    classes = _class_names(meta[spec["names_key"]], dataset, root / spec["meta"])
    x, y = _read_cifar_files(root, spec[split], spec["label_key"])
    if y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"{root}: labels outside 0..{len(classes) - 1}")
    images = torch.from_numpy(x).view(-1, 3, 32, 32)  # rows are channel-major R, G, B planes
    return ImageDataset(images.contiguous(), torch.from_numpy(y), classes, f"{dataset}-{split}")


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _class_names(names, dataset: str, where: Path) -> list[str]:
    """The class names of a CIFAR meta file, checked: CIFAR-10's ten names in their order, or
    CIFAR-100's hundred distinct ones. Anything else (another dataset's meta file, a truncated
    list) would train and report against the wrong labels, so it is a DataError."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{where}: class names must be a list of strings, got {type(names).__name__}")
    names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    want = _NUM_CLASSES[dataset]
    if len(names) != want or len(set(names)) != want:
        raise DataError(f"{where}: {dataset} has {want} distinct class names, this file lists {len(names)} "
                        f"({len(set(names))} distinct): {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    if dataset == "cifar10" and tuple(names) != CIFAR10_CLASSES:
        raise DataError(f"{where}: not CIFAR-10's class names (expected {', '.join(CIFAR10_CLASSES)}; "
                        f"got {', '.join(names[:4])}, ...)")
    return names


def has_cifar_split(data_dir, dataset: str, split: str) -> bool:
    try:
        root = find_cifar_dir(data_dir, dataset)
    except DataError:
        return False
    return all((root / f).exists() for f in _CIFAR[dataset][split])


def download_cifar(root: str | os.PathLike, dataset: str = "cifar10", url: str | None = None) -> Path:
    """Download through torchvision (for users with internet). Never called implicitly."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[dataset]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(url or cls.url, str(root), filename=cls.filename, md5=None if url else cls.tgz_md5)
    except Exception as e:  # urllib, socket and http errors all land here
        raise DataError(f"download of {dataset} failed ({type(e).__name__}: {e}); without internet, "
                        f"copy the '{_CIFAR[dataset]['folder']}' folder by hand and pass --data-dir") from None
    return root / _CIFAR[dataset]["folder"]


# --------------------------------------------------------------------------- other sources


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), as uint8 (N, 1, 8, 8). No download."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ImageDataset(torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(d.target.astype(np.int64)),
                        [str(c) for c in d.target_names], "digits")


def load_image_folder(root: str | os.PathLike, size: int = 32) -> ImageDataset:
    """One sub-folder per class; every image resized to ``size`` x ``size`` RGB uint8."""
    from torchvision import datasets, transforms

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: {e}") from None
    # Decoding files is inherently per-file; everything after it is batched.
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageDataset(images, labels, list(ds.classes), f"folder:{root.name}")


# --------------------------------------------------------------------------- splits


def make_split(n: int, val_size: int, seed: int = 0, mode: str = "last") -> tuple[Tensor, Tensor]:
    """Train/val indices. mode 'last': the last ``val_size`` items are validation (the CIFAR
    default); 'random': a seeded permutation."""
    if not 0 <= val_size < n:
        raise DataError(f"val_size must be in [0, {n}), got {val_size}")
    if mode == "last":
        perm = torch.arange(n)
    elif mode == "random":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        raise DataError(f"unknown split mode '{mode}' (last or random)")
    return perm[: n - val_size].sort().values, perm[n - val_size:].sort().values


def channel_stats(images: Tensor, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std in 0..1 pixel units, two passes over chunks in
    float64: converting a whole CIFAR training set at once would hold over 2 GB."""
    n = images.shape[0] * images.shape[2] * images.shape[3]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        total += (images[i:i + chunk].to(torch.float64) / 255.0).sum(dim=(0, 2, 3))
    mean = total / n
    sq = torch.zeros_like(total)
    for i in range(0, images.shape[0], chunk):
        sq += ((images[i:i + chunk].to(torch.float64) / 255.0 - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
    return mean.tolist(), (sq / max(1, n - 1)).sqrt().tolist()


def load_dataset(dataset: str = "digits", data_dir: str | None = None, val_size: int | None = None,
                 split_seed: int = 0, split_mode: str | None = None, download: bool = False,
                 image_size: int = 32) -> SplitData:
    """Load train (+ carved val) and test where present. Defaults: CIFAR keeps the last
    5,000 training images for validation; digits keeps a seeded random 20 %."""
    test = None
    if dataset in _CIFAR:
        if data_dir is None:
            raise DataError(f"{dataset} needs --data-dir (the '{_CIFAR[dataset]['folder']}' folder or its parent)")
        if download:
            data_dir = str(download_cifar(data_dir, dataset))
        have_train = has_cifar_split(data_dir, dataset, "train")
        full = load_cifar(data_dir, dataset, "train") if have_train else None
        if has_cifar_split(data_dir, dataset, "test"):
            test = load_cifar(data_dir, dataset, "test")
        elif not have_train:
            root = find_cifar_dir(data_dir, dataset)  # raises a clear error when nothing is there
            raise DataError(f"{root}: neither training nor test files of {dataset} are present")
        val_size = 5000 if val_size is None else val_size
        split_mode = split_mode or "last"
    elif dataset == "digits":
        full = load_digits()
        val_size = 360 if val_size is None else val_size
        split_mode = split_mode or "random"
    elif dataset == "folder":
        if data_dir is None:
            raise DataError("dataset 'folder' needs --data-dir (one sub-folder per class)")
        full = load_image_folder(data_dir, image_size)
        val_size = max(1, len(full) // 10) if val_size is None else val_size
        split_mode = split_mode or "random"
    else:
        raise DataError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")

    if full is None:  # test-only folder: enough to evaluate a trained model
        return SplitData(test, None, test, [0.0] * test.images.shape[1], [1.0] * test.images.shape[1],
                         {"dataset": dataset, "train_size": 0, "val_size": 0, "test_size": len(test)})
    tr_idx, va_idx = make_split(len(full), val_size, split_seed, split_mode)
    train = full.subset(tr_idx, f"{dataset}-train")
    val = full.subset(va_idx, f"{dataset}-val") if val_size > 0 else None
    mean, std = channel_stats(train.images)
    info = {"dataset": dataset, "split_mode": split_mode, "split_seed": split_seed, "train_size": len(train),
            "val_size": val_size, "test_size": len(test) if test is not None else 0,
            **split_fingerprint(va_idx)}
    return SplitData(train, val, test, mean, std, info)


def load_split(dataset: str, data_dir: str | None, split: str, val_size: int | None = None,
               split_seed: int = 0) -> ImageDataset:
    """The images of one split, carved as a model's training carved them (``val_size``,
    ``split_seed``). CIFAR's 'test' reads only the test files (test_batch + batches.meta)."""
    if dataset in _CIFAR and split == "test":
        if not data_dir:
            raise DataError(f"{dataset} needs --data-dir")
        return load_cifar(data_dir, dataset, "test")
    return load_dataset(dataset, data_dir, val_size, split_seed).get(split)


def split_fingerprint(val_idx: torch.Tensor, inline: int = 1000) -> dict:
    """How a record names its validation images: a sha256 of the sorted int64 indices (the
    split is a function of its seed, so the hash is enough to check it), plus the indices
    themselves when few (a CIFAR record would otherwise carry 34 KB of them)."""
    idx = torch.sort(torch.as_tensor(val_idx, dtype=torch.int64)).values
    out = {"val_indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()}
    if len(idx) <= inline:
        out["val_indices"] = torch.as_tensor(val_idx).tolist()
    return out


# --------------------------------------------------------------------------- batches


def draw_augmentation(b: int, pad: int, flip: bool, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random crop offsets (dy, dx) and flip flags for ``b`` images, from ``gen`` (CPU)."""
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad > 0 else torch.zeros(b, dtype=torch.long)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad > 0 else torch.zeros(b, dtype=torch.long)
    fl = torch.rand(b, generator=gen) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    return dy, dx, fl


def apply_augmentation(x: Tensor, pad: int, dy: Tensor, dx: Tensor, fl: Tensor) -> Tensor:
    """Crop each image of x (B, C, H, W) at its (dy, dx) in the zero-padded batch; flip where fl."""
    b, c, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        rows = (dy.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[bidx, cidx, rows, cols]  # (B, C, H, W)
    if bool(fl.any()):
        x = torch.where(fl.to(x.device)[:, None, None, None], x.flip(3), x)
    return x


def draw_cutout(b: int, h: int, w: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Cutout centres (cy, cx) for ``b`` images, uniform over the image (CPU ``gen``)."""
    return torch.randint(0, h, (b,), generator=gen), torch.randint(0, w, (b,), generator=gen)


def apply_cutout(x: Tensor, size: int, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero a ``size`` x ``size`` square of each image of x (B, C, H, W) centred at (cy, cx),
    clipped at the border (DeVries & Taylor, 2017). Applied after normalisation, so the hole
    is the dataset's mean colour. One mask for the batch, no per-image loop."""
    h, w = x.shape[-2:]
    lo = size // 2
    ys = torch.arange(h, device=x.device)[None, :] - (cy.to(x.device)[:, None] - lo)  # (B, H): row offset in the square
    xs = torch.arange(w, device=x.device)[None, :] - (cx.to(x.device)[:, None] - lo)  # (B, W)
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]  # (B, H, W)
    return x.masked_fill(inside[:, None], 0.0)


def crop_pad(pad: int | None, side: int) -> int:
    """The random crop's zero padding: ``pad``, or by default an eighth of the image side and
    at least 1 px (4 px on CIFAR, 1 px on 8x8 digits). Training and BN re-estimation share it."""
    return pad if pad is not None else max(1, side // 8)


def augment_batch(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Random crop with zero padding and horizontal flip for a whole batch (tensor ops,
    no per-image loop). Offsets and flips come from ``gen`` on the CPU, so the stream is
    the same whatever the device."""
    return apply_augmentation(x, pad, *draw_augmentation(x.shape[0], pad, flip, gen))


class BatchLoader:
    """Iterates (images, labels) over an in-memory ImageDataset.

    Images come out as normalised float32 on ``device``; ``augment`` applies random-crop and
    flip on the whole uint8 batch. Shuffling and augmentation draw from one CPU generator
    whose state can be saved and restored (exact resume). ``rank``/``world_size`` shard
    each epoch's permutation like DistributedSampler (every rank sees the same permutation
    and takes a strided slice)."""

    def __init__(self, ds: ImageDataset, batch_size: int, mean, std, *, shuffle: bool = False,
                 augment: bool = False, flip: bool = True, pad: int = 4, cutout: int = 0, drop_last: bool = False, device="cpu",
                 generator: torch.Generator | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.ds, self.batch_size = ds, batch_size
        self.shuffle, self.augment, self.flip, self.pad, self.drop_last = shuffle, augment, flip, pad, drop_last
        if cutout < 0:
            raise ValueError("cutout must be >= 0 (0: off)")
        self.cutout = cutout
        self.device = torch.device(device)
        self.gen = generator or torch.Generator().manual_seed(0)
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        c = ds.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)

    def _order(self) -> Tensor:
        n = len(self.ds)
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])  # pad like DistributedSampler
            order = order[self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = -(-len(self.ds) // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.ds.images[idx].to(self.device, non_blocking=True)
            if self.augment:
                # Draw for the whole global batch on every rank and keep this rank's share: the
                # ranks' strided shards of step i together are the single-process batch i, so the
                # same images get the same crops and flips whatever the number of processes.
                dy, dx, fl = draw_augmentation(idx.numel() * self.world_size, self.pad, self.flip, self.gen)
                r, w = self.rank, self.world_size
                x = apply_augmentation(x, self.pad, dy[r::w], dx[r::w], fl[r::w])
            x = (x.float() / 255.0 - self.mean) / self.std
            if self.augment and self.cutout:
                # drawn after the crops and flips, so runs without cutout keep their stream
                cy, cx = draw_cutout(idx.numel() * self.world_size, x.shape[2], x.shape[3], self.gen)
                x = apply_cutout(x, self.cutout, cy[r::w], cx[r::w])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.ds.labels[idx].to(self.device, non_blocking=True)
