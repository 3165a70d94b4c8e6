"""anycost: neural networks whose inference cost is chosen at run time.

Importing the package has no side effects and loads nothing heavy: the names below are
resolved on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "create_model": "anycost.models",
    "list_models": "anycost.models",
    "register_model": "anycost.models",
    "load_dataset": "anycost.data",
    "OperatingPoint": "anycost.eval",
    "TradeoffCurve": "anycost.eval",
    "evaluate_curve": "anycost.eval",
    "DynamicOutput": "anycost.cost",
    "module_macs": "anycost.cost",
    "check_reported_macs": "anycost.cost",
    "TrainConfig": "anycost.train",
    "train": "anycost.train",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anycost' has no attribute {name!r}")
