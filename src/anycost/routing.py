"""Batched routing: after each decision point only the inputs that continue go on, as a
smaller batch (``index_select``), and results are scattered back to their original rows
(``index_copy``). This is what turns MAC savings into wall-clock savings for batches:
exited inputs never touch later layers.

    router = BatchRouter(x.shape[0], x.device)
    h = stage1(x)
    done = confident(head1(h))                      # (A,) bool over active rows
    rows, pos = router.leave(done)                  # original rows leaving now
    logits.index_copy_(0, rows, head_out[pos])
    (h,) = router.keep(done, h)                     # shrink the state to the rest
"""

from __future__ import annotations

import torch
from torch import Tensor


class BatchRouter:
    def __init__(self, batch_size: int, device=None):
        self.rows = torch.arange(batch_size, device=device)  # original row of each active row

    @property
    def active(self) -> int:
        return self.rows.numel()

    def leave(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``mask``: (A,) bool over active rows. Returns (original rows, active positions) of
        the rows that leave; call :meth:`keep` with the same mask afterwards."""
        pos = mask.nonzero().squeeze(1)
        return self.rows.index_select(0, pos), pos

    def keep(self, mask: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """Drop the rows where ``mask`` is True from the active set and from each state tensor."""
        stay = (~mask).nonzero().squeeze(1)
        self.rows = self.rows.index_select(0, stay)
        return tuple(s.index_select(0, stay) for s in state)


def gather_rows(t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``t`` where ``mask`` holds, and their positions."""
    pos = mask.nonzero().squeeze(1)
    return t.index_select(0, pos), pos


def scatter_rows(dst: Tensor, pos: Tensor, src: Tensor) -> Tensor:
    """``dst[pos] = src`` out of place, differentiable w.r.t. both."""
    return dst.index_copy(0, pos, src.to(dst.dtype))
