"""LC-Net: per-input layer skipping (L-Net) and channel skipping (C-Net) with learned
scaling of what is kept (Xia, Yin, Dai, Jha, "Fully Dynamic Inference with Deep Neural
Networks", 2020).

From the abstract: two compact networks predict, per input, which layers and which
filters are redundant, and how to scale the computation that is kept; LC-Net combines
both. Everything else is **our design** (the docs page ``docs/families/lcnet.md`` has the
rationale and the measurements):

* One predictor per residual block: the block input, global-average-pooled, into a tiny
  MLP (C_in -> 16 -> outputs). L-Net outputs a skip/execute logit and a scale ``1 + tanh``
  for the residual branch; C-Net outputs a keep logit and a scale ``1 + tanh`` for each of
  the block's inner channels (conv1's outputs, conv2's inputs). The predictors start
  biased to "execute everything", so training starts from the backbone's behaviour.
* Training: hard decisions in the forward pass with a straight-through Gumbel-sigmoid
  estimator; loss = cross-entropy + ``lam * relu(E[MACs] / MACs_full - target) ** 2``, where the
  expectation uses the keep probabilities and includes the predictors' own MACs. Training
  starts from a trained zoo ResNet (``--init-from``) or from scratch.
  ``penalty="example"`` (default) applies the hinge per input; ``penalty="batch"`` to the
  batch mean only, which leaves room for per-input differences.
  ``target_ramp=r`` slides the target from 1 to ``target`` over the first r of training.
  ``channel_init`` is the channel gates' initial keep logit (3: kept in sigmoid(3) ~ 95 %
  of training draws); a lower one (1.5: ~82 %) gives the cost penalty ~3x the gradient on
  them and trains the backbone with channels dropped from the start.
  ``channel_target=c`` adds a second squared hinge, ``channel_lam * relu(kept - c) ** 2``, on
  the share of the *executed* blocks' MACs that the channel gates keep (block execution
  probabilities detached, so it never pays to skip a block to dodge it). The MAC hinge alone
  prices a channel at 1/C of its block, so the layer gates can meet the budget while the
  executed blocks keep every channel; this hinge prices channels against their own block,
  with the layer/channel split set by the user.
* Budget-conditioned (beyond the paper): the predictors also see the target budget; each
  training example draws its target uniformly in ``[budget_min, 1]`` and is penalised
  against it, so one model serves every budget at inference (the budget is in the
  operating point).
* Inference: hard decisions; operating points (:mod:`.points`) move the decision
  thresholds (or, for the conditioned model, the budget), run everything ('full'), or fix
  the gates for every input ('fixed', derived at calibration from the most frequent
  decisions). Skipped blocks leave the batch (gather/scatter per block). Channel skipping
  groups the rows that share a keep-mask and runs each group through weight-sliced
  convolutions: at batch 1 that is plain weight slicing, and in a batch per-input MACs stay
  exact; how much time batches save depends on how many distinct masks the batch holds.
* Measurement (calibration) takes a dense masked pass with the same decisions and MACs, and
  re-runs routed inference on the inputs whose decisions it cannot vouch for (``measure``).
* Export (:mod:`.export`): per-input skipping in TorchScript for gated points; a plain pruned
  ResNet (ONNX too) for fixed points.

Modules: :mod:`.model` (the network), :mod:`.points` (operating points), :mod:`.export`.
"""

from __future__ import annotations

from ..registry import register_model
from .export import GatedNet, PrunedNet
from .model import BlockPredictor, LCResNet, TorchvisionBackbone, TorchvisionBlock
from .points import threshold

__all__ = ["LCResNet", "BlockPredictor", "TorchvisionBackbone", "TorchvisionBlock", "GatedNet", "PrunedNet", "threshold"]


def _lc(depth, layers, channels, conditioned=False, **kw):
    return LCResNet(depth=depth, layers=layers, channels=channels, conditioned=conditioned, **kw)


for _d in (20, 32, 56):
    register_model(lambda _d=_d, **kw: _lc(_d, True, False, **kw), name=f"lnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, False, True, **kw), name=f"cnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, True, True, **kw), name=f"lcnet_resnet{_d}", family="lcnet")
    register_model(lambda _d=_d, **kw: _lc(_d, True, True, True, **kw), name=f"lcnet_cond_resnet{_d}", family="lcnet")


@register_model(family="lcnet")
def test_lcnet(**kw):
    """Tiny LC-Net for tests and the demo: resnet14 layout at widths (4, 8, 16), 8x8 inputs."""
    kw.setdefault("widths", (4, 8, 16))
    kw.setdefault("input_hw", 8)
    return LCResNet(depth=14, **kw)
