"""Loss terms shared by the training loop and the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temp: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean, in float32 (Hinton et
    al. 2015; T^2 keeps the gradient scale independent of T). Both (B, K); the caller
    detaches the teacher when it must not learn from the term."""
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    s = F.log_softmax(student.float() / temp, 1)
    t = F.log_softmax(teacher.float() / temp, 1)
    return temp * temp * F.kl_div(s, t, reduction="batchmean", log_target=True)
