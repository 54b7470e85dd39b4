"""Building a run's networks from explicit arguments: the spiking student, and the ANN teacher with or
without trained weights (a run of this library, or any checkpoint file the teacher's registry entry loads)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from hybridkd_lib.base import checkpoint as checkpoints
from hybridkd_lib.models.registry import WEIGHT_OPTIONS, create_model
from hybridkd_lib.models.timm_teachers import check_state_dict


def resolve_teacher_ckpt(path: str) -> Path:
    """A run directory (its ``model.pt``) or a ``.pt`` file."""
    p = Path(path)
    return p / "model.pt" if p.is_dir() else p


def build_student(name: str, num_classes: int, in_chans: int, T: int, kw: dict | None = None,
                  neuron: dict | None = None) -> tuple[nn.Module, dict]:
    """The spiking student ``name`` and the keywords that rebuild it (``T``, ``in_chans``, ``neuron_cfg``)."""
    kw = dict(kw or {}, T=T)
    kw.setdefault("in_chans", in_chans)
    if neuron:
        kw["neuron_cfg"] = dict(neuron)
    return create_model(name, num_classes=num_classes, **kw), kw


def build_teacher(name: str, num_classes: int, in_chans: int, kw: dict | None = None,
                  checkpoint: str | None = None) -> tuple[nn.Module, dict]:
    """The ANN teacher ``name`` and its keywords; with the trained weights of ``checkpoint`` where given: a run
    directory or ``model.pt`` of this library, or any checkpoint the teacher's registry entry loads (timm's
    formats: safetensors, ``state_dict``/``model``/``state_dict_ema`` keys, ``module.``)."""
    kw = dict(kw or {})
    full_kw = {"in_chans": in_chans, **kw}
    if not checkpoint:
        return create_model(name, num_classes=num_classes, **full_kw), full_kw
    path = resolve_teacher_ckpt(checkpoint)
    state = checkpoints.load(path) if path.suffix != ".safetensors" else None
    if isinstance(state, dict) and "model" in state and "arch" in state:  # a run of this library
        if state["arch"] != name:
            raise ValueError(f"teacher checkpoint {str(path)!r} holds {state['arch']!r}, not --teacher {name!r}")
        full_kw = {**state.get("model_kw", {}), **{k: v for k, v in kw.items() if k not in WEIGHT_OPTIONS}}
        model = create_model(name, num_classes=num_classes, **full_kw)
        check_state_dict(model, state["model"], str(path))
        model.load_state_dict(state["model"])
        return model, full_kw
    return create_model(name, num_classes=num_classes, weights=path, **full_kw), full_kw
