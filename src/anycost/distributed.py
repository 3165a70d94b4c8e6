"""Multi-process training through ``torchrun`` (torch.distributed + DistributedDataParallel).

``anycost train`` runs unchanged under ``torchrun --nproc_per_node N anycost train ...``:
torchrun sets WORLD_SIZE / RANK / LOCAL_RANK, and :func:`setup` joins the process group
(NCCL on GPUs, Gloo on CPUs). ``batch_size`` stays the *global* batch; each rank takes a
strided shard of the shared epoch permutation, so the ranks' batches at step i together
are exactly the single-process batch i (augmentation included, see ``BatchLoader``).

BatchNorm must see the global batch for the run to match a single process: on CUDA we use
``nn.SyncBatchNorm``; it does not run on CPU, so there :class:`DistBatchNorm2d` all-reduces
per-channel sums with the differentiable ``torch.distributed.nn`` all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device)
    if world <= 1:
        return DistInfo(device=device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), device, owns)


def teardown(info: DistInfo) -> None:
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class DistBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the batch of all ranks (CPU/Gloo stand-in for SyncBatchNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        packed = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))  # gradients flow back
        s, ss, n = packed[:c], packed[c:2 * c], packed[2 * c]
        mean = s / n
        var = ss / n - mean * mean  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d becomes a cross-rank one (SyncBatchNorm on CUDA, DistBatchNorm2d on CPU),
    with the same parameters, buffers and state_dict keys."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else device)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


class LossModule(nn.Module):
    """What DDP wraps: the model plus its loss, so that a family's ``training_loss`` (several
    exits, a cost penalty, ...) goes through DDP's forward and its gradients are synchronised."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, x: Tensor, y: Tensor, progress: float = 0.0):
        fam = getattr(self.model, "training_loss", None)
        if fam is not None:
            return fam(x, y, criterion=self.criterion, progress=progress)
        logits = self.model(x)
        return self.criterion(logits, y), logits


def all_reduce_sums(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
