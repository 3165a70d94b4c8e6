"""anycost: neural networks whose inference cost is chosen at run time.

Importing the package has no side effects and loads nothing heavy: the names below are
resolved on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "create_model": "anycost.zoo",
    "load": "anycost.zoo",
    "Weights": "anycost.zoo",
    "list_weights": "anycost.zoo",
    "get_weights": "anycost.zoo",
    "list_models": "anycost.models",
    "register_model": "anycost.models",
    "load_dataset": "anycost.data",
    "OperatingPoint": "anycost.core",
    "Mixture": "anycost.core",
    "DynamicModel": "anycost.core",
    "BudgetError": "anycost.core",
    "TradeoffCurve": "anycost.eval",
    "evaluate_curve": "anycost.eval",
    "DynamicOutput": "anycost.core",
    "module_macs": "anycost.cost",
    "check_reported_macs": "anycost.cost",
    "TrainConfig": "anycost.train",
    "train": "anycost.train",
}

# submodules reachable as attributes (``anycost.deploy.to_onnx``) without an explicit import
_SUBMODULES = {"core", "cost", "curves", "data", "deploy", "eval", "models", "zoo", "train", "bench"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"anycost.{name}")
    raise AttributeError(f"module 'anycost' has no attribute {name!r}")
