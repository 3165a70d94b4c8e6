"""Convolutional Neural Mixture Models (Ruiz & Verbeek, ICCV 2019), pruned to any budget.

What is known of the paper: a probabilistic model embedding very many CNNs that share
parameters and are trained jointly; learned mixing probabilities (a review mentions
Concrete / relaxed Bernoulli variables); an efficient approximation of the mixture output;
pruning networks with low mixing probability to adapt the inference cost without
re-training. Everything that goes beyond this is our design, one concern per module:

* :mod:`.grid`: the grid of nodes and edges (:class:`GridSpec`) and what a pruned network
  keeps (:class:`PruneSpec`);
* :mod:`.blocks`: the edges' convolutions;
* :mod:`.model`: :class:`CNMM`, the plain grid (mixing weights, mean-field inference, costs);
* :mod:`.residual`: :class:`ResCNMM`, the residual grid (identity skips, per-batch and budget
  sampling, the sandwich rule);
* :mod:`.pruning`: the pruning mechanisms (edges, channels, both, greedy, greedy-unit);
* :mod:`.pruned`: the standalone static networks a spec keeps, and BN re-estimation;
* :mod:`.candidates`: the candidate operating points ``calibrate`` measures;
* :mod:`.points`: the model contract (operating point params, per-point BN state, inference,
  export);
* :mod:`.variants`: the registered models.

Measured results and the runs behind the design choices: ``docs/notes/cnmm-design.md``."""

from .blocks import EdgeBlock, ResEdgeBlock
from .candidates import DEFAULT_FRACTIONS, SearchConfig, bn_statistics_loader, point_name, pruning_operating_points
from .grid import GridSpec, PruneSpec
from .model import CNMM, anneal
from .points import check_params, split_legacy_bn
from .pruned import PrunedCNMM, PrunedResCNMM, bn_state, load_bn_state, reestimate_bn
from .pruning import CALIBRATED_MECHANISMS, MECHANISMS, check_path, spec_on_path
from .residual import ResCNMM
from . import variants  # noqa: F401  (registers cnmm_* and test_cnmm*)

__all__ = ["CNMM", "ResCNMM", "GridSpec", "PruneSpec", "EdgeBlock", "ResEdgeBlock", "PrunedCNMM", "PrunedResCNMM",
           "MECHANISMS", "CALIBRATED_MECHANISMS", "DEFAULT_FRACTIONS", "SearchConfig", "pruning_operating_points",
           "bn_statistics_loader", "point_name", "reestimate_bn", "bn_state", "load_bn_state", "check_path",
           "spec_on_path", "check_params", "split_legacy_bn", "anneal"]
