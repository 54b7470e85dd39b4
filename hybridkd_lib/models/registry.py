"""A timm-style model registry: ``@register_model``, ``create_model``, ``list_models``, and each
model's facts (``model_facts``): its role, display name, source, default classes and a small test size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

_MODELS: dict[str, Callable] = {}
_ROLES: dict[str, str] = {}
_OPTIONS: dict[str, tuple | None] = {}
_FACTS: dict[str, "ModelFacts"] = {}
WEIGHT_OPTIONS = ("checkpoint_path", "init_checkpoint", "pretrained")


@dataclass(frozen=True)
class ModelFacts:
    """What the book, the README and the tests say about a model, in one place."""

    name: str
    role: str                  # student | teacher
    display: str               # as the paper's tables write it, e.g. "ResNet-19"
    source: str                # the definition it follows
    classes: int               # its default number of classes (the dataset it is named for)
    small: dict = field(default_factory=dict)   # keywords of a small variant (tests, tutorials)
    weights_keyword: str | None = None   # the keyword its builder reads a weights file from (None: the
                                         # registry loads the file into the built model, every key checked)

    def param_count(self, num_classes: int | None = None) -> int:
        """Parameters at full size, counted on the meta device (no memory, no weights read)."""
        import torch

        with torch.device("meta"):
            model = create_model(self.name, num_classes=num_classes or self.classes)
        return sum(p.numel() for p in model.parameters())


ROLES = ("student", "teacher")


def register_model(role: str, options: tuple | None = None, *, display: str, source: str, classes: int,
                   small: dict | None = None, weights_keyword: str | None = None):
    """Register ``fn(num_classes=..., **kw)`` under its function name (from a plug-in too); role:
    student|teacher (a student is a ``SpikingStageModel``, a teacher a ``StageModel``); ``options``: every
    keyword it takes (None: also any keyword of ``timm.create_model``); the rest: the model's facts
    (``ModelFacts``). A name taken by another function is an error."""
    if role not in ROLES:
        raise ValueError(f"role={role!r} not allowed; valid: {', '.join(ROLES)}")

    def deco(fn):
        name = fn.__name__
        if name in _MODELS and (_MODELS[name].__module__, _MODELS[name].__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].__module__})")
        _MODELS[name] = fn
        _ROLES[name] = role
        _OPTIONS[name] = options
        _FACTS[name] = ModelFacts(name, role, display, source, classes, dict(small or {}), weights_keyword)
        return fn
    return deco


def unregister_model(name: str) -> None:
    """Remove a plug-in's model from the registry (the library's own stay)."""
    if name in _MODELS and _MODELS[name].__module__.startswith("hybridkd_lib."):
        raise ValueError(f"model {name!r} is the library's own and stays registered")
    for table in (_MODELS, _ROLES, _OPTIONS, _FACTS):
        table.pop(name, None)


def model_facts(name: str) -> ModelFacts:
    check_model_name(name)
    return _FACTS[name]


def check_model_kwargs(name: str, kw: dict, what: str = "model_kw", also: dict | None = None) -> None:
    """Keyword arguments of model ``name``: known keys (listed when one is not) of values the model
    accepts, checked by building it on the meta device (no memory, no weights read) with ``kw`` and
    the keywords ``also`` the caller adds (e.g. the run's ``T``)."""
    import torch

    check_model_name(name)
    if not isinstance(kw, dict):
        raise ValueError(f"{what}={kw!r} not allowed: expected a dict (a JSON object, e.g. '{{\"width\": 16}}')")
    options = _OPTIONS[name]
    listed = ", ".join(options) if options is not None else "timm.create_model keywords, e.g. img_size, drop_rate"
    unknown = sorted(set(kw) - set(options)) if options is not None else []
    if unknown:
        raise ValueError(f"{what} key(s) {unknown} are not options of {name}; options: {listed}")
    for key, value in kw.items():   # sizes and counts (width, dim, T, in_chans, ...)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"{what}: {key}={value!r} not allowed for {name}; a size or count is an integer >= 1")
    try:
        with torch.device("meta"):
            create_model(name, **{k: v for k, v in {**kw, **(also or {})}.items() if k not in WEIGHT_OPTIONS})
    except (TypeError, ValueError, AttributeError, AssertionError) as exc:
        raise ValueError(f"{what}={kw!r} not accepted by {name}: {exc} (options: {listed})") from None


def list_models(role: str | None = None) -> list[str]:
    from hybridkd_lib.base import plugins

    plugins.load_from_environment()
    return sorted(n for n in _MODELS if role is None or _ROLES[n] == role)


def check_model_name(name: str, role: str | None = None):
    valid = list_models(role)
    if name not in valid:
        kind = f"{role} model" if role else "model"
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def create_model(name: str, num_classes: int = 10, weights=None, **kw):
    """Build a registered model, e.g. ``create_model("spiking_resnet18", num_classes=10, T=4)``; ``weights``:
    a weights file (timm's formats) loaded as the model's registry entry says (``weights_keyword``)."""
    check_model_name(name)
    keyword = _FACTS[name].weights_keyword
    if weights is not None and keyword:
        return _MODELS[name](num_classes=num_classes, **{keyword: str(weights)}, **kw)
    model = _MODELS[name](num_classes=num_classes, **kw)
    if weights is not None:
        from hybridkd_lib.models.timm_teachers import load_checked

        load_checked(model, weights)
    return model
