"""What a run trains and its training step: ``Learner`` (student, teacher, hybrids: the networks its method
names, built by ``models.build``) and the optimizer. Shared by the trainer and the benchmark.
"""
from __future__ import annotations

import torch
from torch import nn

from hybridkd_lib.method.methods import get_method
from hybridkd_lib.models import WEIGHT_OPTIONS, build_student, build_teacher
from hybridkd_lib.training.config import TrainConfig


class Learner(nn.Module):
    """The trainable part of a run and its training step (shared with the benchmark): it builds and owns the
    networks its method (``methods.Method``) names and steps through the method.

    ``forward(x, y)`` is the training step's ``(loss, parts, logits)``, so that ``DistributedDataParallel``
    can wrap the learner; ``x`` is ``[B, C, H, W]`` or a frame sequence ``[T, B, C, H, W]``.

    Attributes:
        model: what is trained (the student, or the teacher of an ``ann`` run).
        student: the SNN student (``models.SpikingStageModel``), or None.
        teacher: the teacher (``models.StageModel``, frozen while a student trains), or None.
        distiller: the ``method.hybrid.HybridDistiller`` of student, teacher and alignment modules (its
            ``pairs``, ``num_hybrids`` and ``aligns``), or None.
        aligns: the alignment modules A_k (trained with the student), or None.
        loss_cfg: the run's ``method.losses.LossConfig`` (term weights, KD temperature, RateBP's 1/T scale),
            what ``Method.loss`` and ``step_loss`` read.
        spec: the run's ``method.methods.Method``.
        T: the student's timesteps.
        arch: the trained network's registered name; with ``model_kw`` what rebuilds ``model``.
        model_kw: the options that rebuild ``model``.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, input_shape: tuple):
        super().__init__()
        self.T, self.loss_cfg, self.rate_value = cfg.T, cfg.loss_cfg, cfg.rate_value
        self.spec = get_method(cfg.method)
        self.teacher_input_size = cfg.teacher_input_size
        self.between_passes = None   # called between RateBP's spike and rate pass (set by speed.apply on the CPU)
        self._build(cfg, num_classes, tuple(input_shape))
        # the architecture only: a teacher fine-tuned from a file is rebuilt from model.pt alone
        self.model_kw = {k: v for k, v in self.model_kw.items() if k not in WEIGHT_OPTIONS}

    def _build(self, cfg: TrainConfig, num_classes: int, input_shape: tuple) -> None:
        """``model`` (what is trained), ``student``, ``teacher`` (trained weights from ``teacher_ckpt``),
        ``distiller``, ``arch`` and ``model_kw``: the networks the method names, student first."""
        in_chans, networks = input_shape[-3], self.spec.networks
        self.student = self.teacher = None
        if "student" in networks:
            self.student, self.model_kw = build_student(cfg.student, num_classes, in_chans, cfg.T, cfg.student_kw,
                                                        cfg.neuron)
            self.model, self.arch = self.student, cfg.student
            if "teacher" in networks:
                self.teacher, _ = build_teacher(cfg.teacher, num_classes, in_chans, cfg.teacher_kw, cfg.teacher_ckpt)
        else:
            self.model, self.model_kw = build_teacher(cfg.teacher, num_classes, in_chans, cfg.teacher_kw)
            self.arch = cfg.teacher
        self.distiller = self.spec.distiller(self.student, self.teacher, input_shape, cfg.teacher_input_size)

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
