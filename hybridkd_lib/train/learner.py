"""What a run trains and its training step: ``Learner`` (student, teacher, hybrids), the teacher
built from a checkpoint, and the optimizer. Shared by the trainer and the benchmark.
"""
from __future__ import annotations

import torch
from torch import nn

from hybridkd_lib.base import checkpoint
from hybridkd_lib.train.config import TrainConfig, resolve_teacher_ckpt
from hybridkd_lib.method.methods import get_method
from hybridkd_lib.models import WEIGHT_OPTIONS, create_model
from hybridkd_lib.models.timm_teachers import check_state_dict


def build_student(cfg: TrainConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, dict]:
    """The spiking student and its keywords (``T``, ``in_chans``, ``neuron_cfg`` from the run's settings)."""
    kw = dict(cfg.student_kw, T=cfg.T)
    kw.setdefault("in_chans", in_chans)
    if cfg.neuron:
        kw["neuron_cfg"] = dict(cfg.neuron)
    return create_model(cfg.student, num_classes=num_classes, **kw), kw


def build_teacher(cfg: TrainConfig, num_classes: int, in_chans: int, weights: bool) -> tuple[nn.Module, dict]:
    """The teacher architecture and its keywords; ``weights``: with the trained weights of ``teacher_ckpt``
    (where given): a run directory or ``model.pt`` of this library, or any checkpoint the teacher's registry
    entry loads (timm's formats: safetensors, ``state_dict``/``model``/``state_dict_ema`` keys, ``module.``)."""
    kw = {"in_chans": in_chans, **cfg.teacher_kw}
    if not (weights and cfg.teacher_ckpt):
        return create_model(cfg.teacher, num_classes=num_classes, **kw), kw
    path = resolve_teacher_ckpt(cfg.teacher_ckpt)
    state = checkpoint.load(path) if path.suffix != ".safetensors" else None
    if isinstance(state, dict) and "model" in state and "arch" in state:  # a run of this library
        if state["arch"] != cfg.teacher:
            raise ValueError(f"teacher checkpoint {str(path)!r} holds {state['arch']!r}, not --teacher {cfg.teacher!r}")
        kw = {**state.get("model_kw", {}), **{k: v for k, v in cfg.teacher_kw.items() if k not in WEIGHT_OPTIONS}}
        model = create_model(cfg.teacher, num_classes=num_classes, **kw)
        check_state_dict(model, state["model"], str(path))
        model.load_state_dict(state["model"])
        return model, kw
    return create_model(cfg.teacher, num_classes=num_classes, weights=path, **kw), kw


class Learner(nn.Module):
    """The trainable part of a run and its training step (shared with the benchmark), as its method
    (``methods.Method``) builds and steps it.

    ``forward(x, y)`` is the training step's ``(loss, parts, logits)``, so that ``DistributedDataParallel``
    can wrap the learner; ``x`` is ``[B, C, H, W]`` or a frame sequence ``[T, B, C, H, W]``. Attributes:
    ``model`` (what is trained), ``student``, ``teacher`` (frozen), ``distiller`` (``HybridDistiller``),
    ``aligns`` (the alignment modules A_k, or None), ``arch`` and ``model_kw`` (what rebuilds ``model``).
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, input_shape: tuple):
        super().__init__()
        self.T, self.loss_cfg, self.rate_value = cfg.T, cfg.loss_cfg, cfg.rate_value
        self.spec = get_method(cfg.method)
        self.teacher_input_size = cfg.teacher_input_size
        self.between_passes = None   # called between RateBP's spike and rate pass (set by speed.apply)
        self.spec.build(self, cfg, num_classes, tuple(input_shape))
        # the architecture only: a teacher fine-tuned from a file is rebuilt from model.pt alone
        self.model_kw = {k: v for k, v in self.model_kw.items() if k not in WEIGHT_OPTIONS}
        self.num_hybrids = self.spec.num_hybrids(self)

    @property
    def aligns(self) -> nn.ModuleList | None:
        """The alignment modules A_k (trained with the student), or None."""
        return self.distiller.aligns if self.distiller is not None and len(self.distiller.aligns) else None

    def trained_modules(self) -> list[nn.Module]:
        """What a run trains and saves: the model and the alignment modules."""
        return [m for m in (self.model, self.aligns) if m is not None]

    def trainable(self) -> list[nn.Parameter]:
        return [p for m in self.trained_modules() for p in m.parameters() if p.requires_grad]

    def forward(self, x, y):
        return self.step_loss(x, y)

    def step_loss(self, x, y):
        """Loss (with the method's graph), its parts (detached tensors) and the SNN/ANN logits."""
        return self.spec.step(self, x, y)

    def predict(self, x, with_teacher: bool = True):
        """Inference logits ``(y_S, [y_M0, ...], y_A or None)`` (for ``ann``: the ANN's as ``y_S``)."""
        return self.spec.predict(self, x, with_teacher)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self


def param_groups(params: list[nn.Parameter], weight_decay: float):
    """No weight decay on BN parameters and biases (1-D tensors)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, params):
    groups = param_groups(params, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
