"""The registered CNMM models (``cnmm_*``) and the tiny test grids (``test_cnmm*``)."""

from __future__ import annotations

from ..registry import register_model
from .model import CNMM
from .residual import ResCNMM


@register_model(family="cnmm")
def cnmm_d8(**kw):
    """Depth-8, three-scale grid at widths (16, 32, 64) for 32x32 inputs (32 edges, 28
    input-to-output paths; all edges: 59.4 M MACs; the cheapest path: 17.0 M)."""
    return CNMM(depth=8, **kw)


@register_model(family="cnmm")
def cnmm_d12(**kw):
    return CNMM(depth=12, **kw)


@register_model(family="cnmm")
def cnmm_r6(**kw):
    """Residual grid, depth 6, three scales at widths (16, 32, 64) for 32x32 inputs (all
    edges: 92 M MACs; the cheapest network, stem and two diagonal edges: 7.5 M)."""
    return ResCNMM(depth=6, **kw)


@register_model(family="cnmm")
def cnmm_r6b(**kw):
    """``cnmm_r6`` trained by budget sampling (:class:`ResCNMM`): each batch runs the network
    edge pruning keeps at a random MAC budget, ranked by logits (from 0) plus annealed noise."""
    kw.setdefault("sampling", "budget")
    kw.setdefault("keep_max", 1.0)
    kw.setdefault("init_logit", 0.0)
    return ResCNMM(depth=6, **kw)


@register_model(family="cnmm")
def cnmm_r8(**kw):
    return ResCNMM(depth=8, **kw)


@register_model(family="cnmm")
def cnmm_r9(**kw):
    """Residual grid, depth 9: its longest path is ResNet-20 deep (nine basic blocks, three per
    scale), where ``cnmm_r6``'s is ResNet-14 deep (all 37 edges: 156 M MACs; cheapest: 7.5 M)."""
    return ResCNMM(depth=9, **kw)


@register_model(family="cnmm")
def cnmm_r9l(**kw):
    """Residual grid, depth 9, with late down-sampling (``scale_starts=(0, 3, 6)``): the 16x16
    scale starts at depth 3 and the 8x8 one at depth 6, so the always-on trunk (stem, identities,
    the two diagonals) down-samples about where a ResNet-20 does; its longest trunk is 2 blocks
    at 32x32, a diagonal and 2 at 16x16, a diagonal and 3 at 8x8 (40.55 M MACs, as ResNet-20).
    25 edges, 23 optional (106.6 M MACs with every edge; cheapest: 7.5 M)."""
    kw.setdefault("scale_starts", (0, 3, 6))
    return ResCNMM(depth=9, **kw)


@register_model(family="cnmm")
def test_cnmm_r(**kw):
    """Tiny residual grid for tests: depth 4, scales 3, widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return ResCNMM(depth=4, **kw)


@register_model(family="cnmm")
def test_cnmm(**kw):
    """Tiny grid for tests and the demo: depth 4, scales 3, widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return CNMM(depth=4, **kw)
