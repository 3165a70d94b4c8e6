"""anycost: neural networks whose inference cost is chosen at run time."""
__version__ = "0.1.0"
