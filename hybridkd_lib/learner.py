"""What a run trains and its training step: ``Learner`` (student, teacher, hybrids), the teacher
built from a checkpoint, and the optimizer. Shared by the trainer and the benchmark.
"""
from __future__ import annotations

import torch
from torch import nn

from hybridkd_lib import checkpoint, ratebp
from hybridkd_lib.config import TrainConfig, resolve_teacher_ckpt
from hybridkd_lib.hybrid import HybridDistiller, teacher_input
from hybridkd_lib.losses import total_loss
from hybridkd_lib.methods import get_method
from hybridkd_lib.models import create_model
from hybridkd_lib.models.timm_teachers import check_state_dict, load_state_dict_file


_WEIGHT_KW = ("checkpoint_path", "init_checkpoint", "pretrained")  # where weights came from, not the architecture


def build_teacher(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The teacher architecture, with trained weights if ``teacher_ckpt`` is given: a run
    directory or ``model.pt`` of this library, or any checkpoint timm loads (safetensors,
    ``state_dict``/``model``/``state_dict_ema`` keys, ``module.`` prefix)."""
    kw = dict(cfg.teacher_kw)
    kw.setdefault("in_chans", in_chans)
    if not (cfg.teacher_ckpt and get_method(cfg.method).trains == "student"):
        return create_model(cfg.teacher, num_classes=num_classes, **kw)
    path = resolve_teacher_ckpt(cfg.teacher_ckpt)
    state = checkpoint.load(path) if path.suffix != ".safetensors" else None
    if isinstance(state, dict) and "model" in state and "arch" in state:  # a run of this library
        if state["arch"] != cfg.teacher:
            raise ValueError(f"teacher checkpoint {str(path)!r} holds {state['arch']!r}, not --teacher {cfg.teacher!r}")
        kw = {**state.get("model_kw", {}), **{k: v for k, v in cfg.teacher_kw.items() if k not in _WEIGHT_KW}}
        model = create_model(cfg.teacher, num_classes=num_classes, **kw)
        check_state_dict(model, state["model"], str(path))
        model.load_state_dict(state["model"])
        return model
    if cfg.teacher.startswith("cifar_"):
        model = create_model(cfg.teacher, num_classes=num_classes, **kw)
        weights = load_state_dict_file(path)
        check_state_dict(model, weights, str(path))
        model.load_state_dict(weights)
        return model
    return create_model(cfg.teacher, num_classes=num_classes, checkpoint_path=str(path), **kw)


class Learner(nn.Module):
    """The trainable part of a run and its training step (shared with the benchmark).

    ``forward(x, y)`` is the training step's loss, so that ``DistributedDataParallel`` can
    wrap the learner; ``x`` is ``[B, C, H, W]`` or a frame sequence ``[T, B, C, H, W]``.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, input_shape: tuple):
        super().__init__()
        self.T, self.loss_cfg, self.rate_value = cfg.T, cfg.loss_cfg, cfg.rate_value
        self.spec = spec = get_method(cfg.method)
        self.teacher_input_size = cfg.teacher_input_size
        self.between_passes = None   # called between RateBP's spike and rate pass (set by speed.apply)
        in_chans = input_shape[-3]
        self.student = self.teacher = self.distiller = None
        if spec.trains == "teacher":
            self.model = build_teacher(cfg, num_classes, in_chans)
            self.model_kw = {"in_chans": in_chans, **cfg.teacher_kw}
            self.arch = cfg.teacher
        else:
            skw = dict(cfg.student_kw, T=cfg.T)
            skw.setdefault("in_chans", in_chans)
            if cfg.neuron:
                skw["neuron_cfg"] = dict(cfg.neuron)
            self.student = create_model(cfg.student, num_classes=num_classes, **skw)
            self.model, self.arch, self.model_kw = self.student, cfg.student, dict(skw)
            if spec.teacher:
                self.teacher = build_teacher(cfg, num_classes, in_chans)
                self.distiller = HybridDistiller(self.student, self.teacher, input_shape, cfg.teacher_input_size,
                                                 hybrids=spec.hybrids)
        # the architecture only: a teacher fine-tuned from a file is rebuilt from model.pt alone
        self.model_kw = {k: v for k, v in self.model_kw.items() if k not in _WEIGHT_KW}

    def trainable(self) -> list[nn.Parameter]:
        mods = [self.model] + ([self.distiller.aligns] if self.spec.hybrids else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def forward(self, x, y):
        return self.step_loss(x, y)

    def step_loss(self, x, y):
        """Loss (with the method's graph), its parts (detached tensors) and the SNN/ANN logits."""
        spec = self.spec
        # the teacher's (graph-free) forward runs where it adds least to the peak: before
        # BPTT's graph is built, after RateBP's spike pass (whose [T, B, ...] maps are the peak)
        y_a = self.distiller.teacher_logits(x) if spec.teacher and spec.propagation == "bptt" else None
        y_m = ()
        if spec.propagation == "ann":
            y_s = self.model(teacher_input(x, self.teacher_input_size))
        elif spec.propagation == "bptt":
            y_s = self.model(x)
        else:   # RateBP; with hybrids the rate pass also runs the teacher suffixes on the student's features
            out = ratebp.rate_forward(self.student, x, fn=(lambda _, xx: self.distiller(xx)) if spec.hybrids else None,
                                      value=self.rate_value, between_passes=self.between_passes)
            y_s, y_m = out if spec.hybrids else (out, ())
        if spec.teacher and spec.propagation == "rate":
            y_a = self.distiller.teacher_logits(x)
        loss, parts = total_loss(spec.name, self.loss_cfg, y, y_s, y_a, y_m)
        if spec.propagation == "rate" and self.loss_cfg.ratebp_grad_scale:
            loss = ratebp.scale_gradient(loss, self.T)
        return loss, parts, y_s

    def predict(self, x, with_teacher: bool = True):
        """Inference logits ``(y_S, [y_M0, ...], y_A or None)`` (for ``ann``: the ANN's as ``y_S``)."""
        if self.spec.trains == "teacher":
            return self.model(teacher_input(x, self.teacher_input_size)), [], None
        y_s, y_m = self.distiller(x) if self.spec.hybrids else (self.model(x), [])
        y_a = self.distiller.teacher_logits(x) if self.distiller is not None and with_teacher else None
        return y_s, y_m, y_a

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
