"""Deployment formats for an exported operating point: TorchScript for every family, ONNX
(checked against ONNX Runtime) where the point's control flow is static."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["to_torchscript", "load_torchscript", "to_onnx", "run_onnx"]


def to_torchscript(module: nn.Module, path=None) -> torch.jit.ScriptModule:
    """``torch.jit.script`` the module (an ``export(op)`` result); save it when ``path`` (a file
    name or a writable binary file object) is given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks TorchScript deprecated
        scripted = torch.jit.script(module.eval())
    if path is None:
        return scripted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if hasattr(path, "write"):
            torch.jit.save(scripted, path)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            scripted.save(str(path))
    return scripted


def load_torchscript(path_or_bytes: str | os.PathLike | bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if isinstance(path_or_bytes, bytes):
            return torch.jit.load(io.BytesIO(path_or_bytes))
        return torch.jit.load(str(path_or_bytes))


def to_onnx(module: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """ONNX with a dynamic batch dimension. Only for static control flow: a data-dependent
    branch would be frozen at the example's path, so callers check ``model.is_static(op)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def run_onnx(path: str | os.PathLike, x: Tensor) -> Tensor:
    """Logits from ONNX Runtime on the CPU (``pip install anycost[deploy]``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("running ONNX needs onnxruntime: pip install 'anycost[deploy]'") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})[0])
