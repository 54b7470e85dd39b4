"""One training step, the same for the trainer, the bench and the GPU two-step check.

``place`` puts a learner on its device in the layout the kernels compute correctly there
(``speed.layout``) with every training BN synchronised across processes; ``TrainingStep`` is then
``(loss, parts) = step(x, y)``: the method's forward (under autocast where ``precision`` is bf16 or fp16, CUDA only), backward, the
optional gradient clipping (``clip_grad_norm``, timm's meaning: the global L2 norm of every trained
gradient) and the optimizer update, with the CPU memory tricks ``speed.apply`` installs (the update
inside backward on single-process CPU runs without clipping). ``peak_mem_mb`` reads peak memory as
every figure of the library does.
"""
from __future__ import annotations

import resource

import torch
from torch import nn

from hybridkd_lib.training import speed
from hybridkd_lib.training.distributed import autocast
from hybridkd_lib.snn.layers import convert_sync_batchnorm


def place(learner: nn.Module, device: torch.device, world: int = 1) -> nn.Module:
    """``learner`` on ``device``; a spiking student in ``speed.layout``'s memory format (channels_last where
    the kernels compute it correctly); every training BN synchronised when ``world > 1``."""
    learner = learner.to(device)
    if "student" in learner.spec.networks:
        learner = speed.to_layout(learner, device)
    return convert_sync_batchnorm(learner) if world > 1 else learner


def peak_mem_mb(device: torch.device) -> float:
    """CUDA: ``max_memory_allocated`` (since the last ``reset_peak``); CPU: the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (a CPU process's peak RSS cannot be reset: the bench uses fresh processes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class TrainingStep:
    """``step(x, y) -> (loss, parts)``: one optimizer step of ``learner`` (called through ``module``: the
    learner, or DDP around it with ``data_parallel``) on ``x`` ``[B, C, H, W]`` / ``[T, B, C, H, W]`` and
    labels ``y`` ``[B]`` already on ``device``. ``clip_grad_norm``: clip the trained gradients' global L2 norm
    (None: off); where set, the optimizer update stays after backward (no step-in-backward), and ``log``
    says so. ``compile_spike_pass``: the spike pass as compiled kernels (``speed.apply``)."""

    def __init__(self, learner: nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                 module: nn.Module | None = None, data_parallel: bool = False,
                 clip_grad_norm: float | None = None, compile_spike_pass: bool = False, precision: str = "fp32",
                 log=print):
        self.learner, self.opt, self.device, self.precision = learner, opt, device, precision
        # fp16 keeps small gradients representable by scaling the loss (torch.amp's GradScaler; CUDA only)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.module = module if module is not None else learner
        self.clip_grad_norm = clip_grad_norm
        in_backward = speed.steps_in_backward(device, data_parallel) and clip_grad_norm is None
        if clip_grad_norm is not None and speed.steps_in_backward(device, data_parallel) and speed.enabled():
            log(f"clip_grad_norm={clip_grad_norm}: the optimizer steps after backward (the step-in-backward "
                f"memory trick is not installed)")
        # the optimizer steps inside backward only on the CPU, where there is no fp16 and so no scaler
        assert not (in_backward and self.scaler is not None), "a gradient scaler cannot step inside backward"
        self.tricks = speed.apply(learner, opt, step_in_backward=in_backward, compile_spike_pass=compile_spike_pass,
                                  log=log)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        with autocast(self.device, self.precision):
            loss, parts, _ = self.module(x, y)
        self.backward_and_step(loss)
        return loss, parts

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, the clipping where set, and the optimizer's update (inside backward when the
        trick is installed)."""
        if self.tricks.in_backward is not None:
            loss.backward()   # every parameter is updated as its gradient completes
        else:
            self.opt.zero_grad(set_to_none=True)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            if self.scaler is not None:
                self.scaler.unscale_(self.opt)   # clipping sees the true gradients
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.learner.trainable(), self.clip_grad_norm)
            if self.scaler is None:
                self.opt.step()
            else:
                self.scaler.step(self.opt)   # skipped where a gradient overflowed
                self.scaler.update()
        self.tricks.after_step()

    def close(self) -> None:
        """Detach the tricks' hooks (the learner steps no more)."""
        self.tricks.remove()
