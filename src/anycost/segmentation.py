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
