"""A timm-style model registry: ``@register_model``, ``create_model``, ``list_models``."""
from __future__ import annotations

from typing import Callable

_MODELS: dict[str, Callable] = {}
_ROLES: dict[str, str] = {}


def register_model(role: str):
    """Register ``fn(num_classes=..., **kw)`` under its function name; role: student|teacher."""
    def deco(fn):
        _MODELS[fn.__name__] = fn
        _ROLES[fn.__name__] = role
        return fn
    return deco


def list_models(role: str | None = None) -> list[str]:
    return sorted(n for n in _MODELS if role is None or _ROLES[n] == role)


def model_role(name: str) -> str:
    check_model_name(name)
    return _ROLES[name]


def check_model_name(name: str, role: str | None = None):
    valid = list_models(role)
    if name not in valid:
        kind = f"{role} model" if role else "model"
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def create_model(name: str, num_classes: int = 10, **kw):
    """Build a registered model, e.g. ``create_model("spiking_resnet18", num_classes=10, T=4)``."""
    check_model_name(name)
    return _MODELS[name](num_classes=num_classes, **kw)
