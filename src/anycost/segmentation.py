"""Dense prediction: a synthetic segmentation set for tests and demos, mean IoU, and a
small training loop (the classifier trainer's bookkeeping is per image, not per pixel)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def synthetic_shapes(n: int, size: int = 16, num_classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images of random axis-aligned rectangles on noise; class k > 0 paints colour channel
    k-1 brighter. Returns float images (N, 3, H, W) in [0, 1] and masks (N, H, W) int64."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, size, size, generator=g) * 0.3
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for k in range(1, num_classes):
        lo = torch.randint(0, size // 2, (n, 2), generator=g)
        ext = torch.randint(size // 4, size // 2 + 1, (n, 2), generator=g)
        ys = torch.arange(size)[None, :, None]
        xs = torch.arange(size)[None, None, :]
        inside = (ys >= lo[:, 0, None, None]) & (ys < (lo[:, 0] + ext[:, 0])[:, None, None]) \
            & (xs >= lo[:, 1, None, None]) & (xs < (lo[:, 1] + ext[:, 1])[:, None, None])
        mask[inside] = k
        img[:, (k - 1) % 3][inside] += 0.6
    return img.clamp(0, 1), mask


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """mIoU over the classes present in prediction or target."""
    ious = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return 100.0 * sum(ious) / max(1, len(ious))


def train_segmentation(model: nn.Module, images: Tensor, masks: Tensor, epochs: int = 10, batch_size: int = 32,
                       lr: float = 0.05, seed: int = 0) -> list[float]:
    """Per-pixel cross-entropy with SGD; returns the loss per epoch. Uses the model's
    ``training_loss`` when it has one (a CNMM's mixing weights and cost term)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    crit = nn.CrossEntropyLoss()
    losses, n = [], images.shape[0]
    total = epochs * (-(-n // batch_size))
    step = 0
    model.train()
    for _ in range(epochs):
        perm, tot = torch.randperm(n, generator=g), 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x, y = images[idx], masks[idx]
            if hasattr(model, "training_loss"):
                loss, _ = model.training_loss(x, y, criterion=crit, progress=step / total)
            else:
                loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * idx.numel()
            step += 1
        losses.append(tot / n)
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: Tensor) -> Tensor:
    model.eval()
    out = model(images)
    return (out.logits if hasattr(out, "logits") else out).argmax(1)


def load_voc_segmentation(root, split: str = "train", size: int = 64, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """A PASCAL VOC-style folder: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette
    PNGs whose indices are class ids, 255 = ignore) and ``ImageSets/Segmentation/<split>.txt``.
    Returns float images (N, 3, size, size) in [0, 1] and masks (N, size, size) int64 (nearest
    resizing keeps ids intact). Missing files are one-line DataErrors naming the file."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from anycost.data import DataError

    root = Path(root)
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        raise DataError(f"{ids_file}: not found (expected the VOC layout under {root})")
    ids = [s.strip() for s in ids_file.read_text().splitlines() if s.strip()]
    if not ids:
        raise DataError(f"{ids_file}: lists no images")
    xs, ys = [], []
    for i in ids:  # decoding files is per file; everything after is batched
        img_p, seg_p = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
        for p in (img_p, seg_p):
            if not p.is_file():
                raise DataError(f"{p}: not found")
        try:
            img = Image.open(img_p).convert("RGB").resize((size, size), Image.BILINEAR)
            seg = Image.open(seg_p).resize((size, size), Image.NEAREST)
        except OSError as e:
            raise DataError(f"{img_p.name}/{seg_p.name}: unreadable ({e})") from None
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        ys.append(torch.from_numpy(np.asarray(seg, dtype=np.int64).copy()))
    return torch.stack(xs).float() / 255.0, torch.stack(ys)
