"""Classify image files with a model at one operating point (what ``anycost predict`` runs).

:func:`predict` takes PNG / JPEG files and folders (every such image directly inside, in
sorted order), checks that each image has the model's input size (or resizes it when asked),
normalises it with the model's own mean and std, and runs ``model.infer`` at the chosen
point: a named one, the most accurate one within a MAC budget, or by default the most
accurate one. Each image gets its class, the class's probability, the point used and the
MACs that image really cost. Every bad input is a ``ValueError`` (``FileNotFoundError`` for a
missing path) naming the file and what is allowed, raised before any image is classified.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

__all__ = ["ImageError", "predict", "image_files", "decode_image", "read_image", "prediction_rows", "choose_op",
           "model_normalisation"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """An input that is not a usable image. ``reason`` says which way: 'unreadable', 'format'
    (not PNG / JPEG) or 'size' (the server answers them with 400, 415 and 422)."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``paths``: a file as given, a folder as the PNG / JPEG files
    directly inside it, sorted. A missing path or a folder with no such image is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{p}: folder holds no PNG or JPEG images (looked for "
                                 f"{', '.join(IMAGE_SUFFIXES)} files directly inside)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    if not out:
        raise ImageError("no images given: pass PNG / JPEG files or folders of them")
    return out


def decode_image(source, input_size: tuple[int, int, int], resize: bool = False, *, name: str | None = None,
                 formats_note: str = "predict reads PNG and JPEG",
                 size_note: str = "resize it, or pass --resize (resize=True)") -> np.ndarray:
    """One PNG / JPEG (a path or a binary file object) as uint8 (H, W, C): converted to RGB
    or greyscale to match C, and of size H x W, resized only if ``resize``. The format and
    size are checked before any pixel is decoded; ``name`` (default: the path) starts every
    error message, and the notes end the format and size ones."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_size
    if c not in (1, 3):
        raise ImageError(f"the model takes {c}-channel inputs; predict reads greyscale (1) or RGB (3) images")
    name = name or str(source)
    try:
        with Image.open(source) as im:
            if im.format not in FORMATS:
                raise ImageError(f"{name}: a {im.format} image; {formats_note}", "format")
            if im.size != (w, h) and not resize:
                raise ImageError(f"{name}: {im.size[0]}x{im.size[1]} pixels, but the model takes {w}x{h} images"
                                 + (f"; {size_note}" if size_note else ""), "size")
            im = im.convert("RGB" if c == 3 else "L")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports a broken file as any of these, depending on where the bytes stop making sense
        raise ImageError(f"{name}: not a readable PNG or JPEG image ({type(e).__name__})") from None
    return a.reshape(h, w, c)


def read_image(path: str | os.PathLike, input_size: tuple[int, int, int], resize: bool = False) -> torch.Tensor:
    """One image file as a (C, H, W) float tensor in 0..1 pixel units (the training data's
    scale); see :func:`decode_image`."""
    a = decode_image(path, input_size, resize).astype(np.float32) / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def prediction_rows(logits: torch.Tensor, macs: torch.Tensor, point: str, classes: list[str]) -> list[dict]:
    """One dict per row: ``class`` (its name, or the index as a string), ``class_index``,
    ``probability`` (softmax, 0..1), ``operating_point`` and ``macs`` (what that input cost)."""
    p, k = logits.float().softmax(1).max(1)
    rows = []
    for idx, prob, cost in zip(k.tolist(), p.tolist(), macs.double().tolist()):
        rows.append({"class": str(classes[idx]) if idx < len(classes) else str(idx), "class_index": idx,
                     "probability": prob, "operating_point": point, "macs": cost})
    return rows


def choose_op(model: nn.Module, op: str | None = None, budget: float | None = None):
    """The point to run: ``op`` by name, the most accurate single point within ``budget``
    MACs (never a mixture: each image's answer is then deterministic), or by default the
    most accurate shipped point (the cheaper of equals; the model's default if none is
    calibrated)."""
    if op is not None and budget is not None:
        raise ValueError("give an operating point name or a budget, not both")
    if op is not None:
        return model.find_op(op)
    if budget is not None:
        return model.at_budget(budget, mix=False)
    pts = [p for p in model.operating_points() if p.calibrated]
    if not pts:
        return model.default_op()
    return max(pts, key=lambda p: (p.accuracy, -p.macs))


def model_normalisation(model: nn.Module) -> tuple[tuple[int, int, int], torch.Tensor, torch.Tensor]:
    """(input size (C, H, W), mean and std as (1, C, 1, 1) tensors) from the model's pretrained_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size, mean, std = tuple(cfg.get("input_size") or ()), cfg.get("mean"), cfg.get("std")
    if len(size) != 3 or not mean or not std:
        raise ValueError("the model records no input size or normalisation (model.pretrained_cfg); load it with "
                         "anycost.load or from a run folder")
    c = size[0]
    return size, torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)


def predict(model: nn.Module | str, images: Iterable[str | os.PathLike], *, op: str | None = None,
            budget: float | None = None, resize: bool = False, zoo_dir: str | os.PathLike | None = None,
            batch_size: int = 256, device: str = "cpu") -> list[dict]:
    """One dict per image, in input order: ``image`` (path), ``class`` (its name, or the index
    as a string), ``class_index``, ``probability`` (softmax, 0..1), ``operating_point`` (name)
    and ``macs`` (what this image cost at that point). ``model``: a loaded model or what
    :func:`anycost.zoo.resolve_model` accepts (a zoo name, file or run folder)."""
    from anycost.core import DynamicModel

    if isinstance(model, (str, os.PathLike)):
        from anycost.zoo import resolve_model

        model = resolve_model(model, zoo_dir=zoo_dir)
    if not isinstance(model, DynamicModel):
        raise ValueError(f"{type(model).__name__} is not an anycost model with operating points")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    size, mean, std = model_normalisation(model)
    point = choose_op(model, op, budget)
    files = image_files(images)
    x = torch.stack([read_image(f, size, resize) for f in files])  # every file checked before any inference
    model = model.to(device).eval()
    classes = list(getattr(getattr(model, "weights", None), "classes", None) or [])
    out = []
    for i in range(0, len(files), batch_size):
        xb = ((x[i:i + batch_size] - mean) / std).to(device)
        res = model.infer(xb, point)
        for f, row in zip(files[i:i + batch_size], prediction_rows(res.logits, res.macs, point.name, classes)):
            out.append({"image": str(f), **row})
    return out
