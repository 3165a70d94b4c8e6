"""Model registry: ``register_model`` (duplicate names are an error), ``create_model`` and
``list_models``. Every entry point takes the shared keyword vocabulary (``num_classes``,
``in_chans``, ...) and returns an ``nn.Module``."""

from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, family: str | None = None):
    """Decorator. ``family`` groups models for listings (default: the defining module's name)."""

    def deco(f):
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' is already registered")
        _REGISTRY[key] = f
        _FAMILY[key] = family or f.__module__.rsplit(".", 1)[-1]
        return f

    return deco(fn) if fn is not None else deco


def list_models(pattern: str = "*", include_test: bool = True) -> list[str]:
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
    return names if include_test else [n for n in names if not n.startswith("test_")]


def model_family(name: str) -> str:
    return _FAMILY[name]


def create_model(name: str, pretrained: str | bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model, untrained. Weights come from the zoo layer, which imports this
    registry (never the reverse): ``anycost.create_model(name, pretrained=TAG)`` or
    ``anycost.load("name.TAG")``."""
    if pretrained:
        raise ValueError(f"anycost.models.create_model builds untrained models; for weights use "
                         f"anycost.create_model({name!r}, pretrained={pretrained!r}) or anycost.load('{name}.TAG')")
    if name not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{name}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise KeyError(f"unknown model '{name}'{hint}; see `anycost models` or list_models()")
    try:
        model = _REGISTRY[name](**kwargs)
    except TypeError as e:  # an unknown or ill-typed keyword: a user mistake, said in one line
        raise ValueError(f"bad arguments for model '{name}': {e}") from None
    model.model_name = name
    return model
