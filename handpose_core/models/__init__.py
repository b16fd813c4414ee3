"""Model registry: ``create_model(name, **config)`` builds any registered architecture.

Each architecture module registers factory functions with :func:`register_model`; the
checkpoint stores ``(name, config)`` so a model is rebuilt without pickled classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from handpose_core.errors import HandPoseError

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator: register ``fn(**config) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _REGISTRY:
            raise KeyError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _load_builtin() -> None:
    # Imported for their registration side effect; kept lazy so `import handpose_core` stays light.
    from handpose_core.models import cpm, deep_prior  # noqa: F401


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, **config: Any) -> torch.nn.Module:
    """Build the registered model ``name`` with keyword ``config``."""
    _load_builtin()
    if name not in _REGISTRY:
        raise HandPoseError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**config)
