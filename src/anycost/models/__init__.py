"""Model families, one file each. Importing this package registers them."""

from .registry import create_model, list_models, model_family, register_model
from . import resnet_cifar  # noqa: F401  (registers resnet*)
from . import early_exit  # noqa: F401  (registers ee_resnet*)
from . import cascade  # noqa: F401  (registers cascade, test_cascade)
from . import cnmm  # noqa: F401  (registers cnmm_*)
from . import lcnet  # noqa: F401  (registers lnet_*, cnet_*, lcnet_*)

__all__ = ["create_model", "list_models", "model_family", "register_model"]
