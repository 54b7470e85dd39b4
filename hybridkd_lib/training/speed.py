"""The CPU memory tricks of a training step, applied from one place, behind one switch.

None of them changes a number; each only changes where memory lives. ``apply`` installs them on a
learner; the trainer and the benchmark both call it, and nothing in the algorithm modules
(``neurons``, ``layers``, ``ratebp``, ``hybrid``) calls a trick:

- writing over block temporaries: a block names the children whose input nobody else reads
  (``temporary_inputs``, e.g. ``("bn1", "act1", "bn2", "act2")``); in the graph-free spike pass on
  the CPU those LIFs and BNs write their output over their input (``writes_over_input``) instead
  of allocating and page-faulting a new ``[T, B, ...]`` tensor, and a block with ``adds_over_input`` writes its
  residual sum over its own temporary (``layers.residual_add``);
- returning freed heap pages to the OS (glibc ``malloc_trim``, see ``memory``) after every step
  and between RateBP's spike and rate passes (the learner's ``between_passes`` hook);
- stepping the optimizer inside backward, so a step never holds every gradient at once
  (``StepInBackward``; single-process CPU runs without gradient clipping only: it frees each
  gradient as soon as it is used, so nothing after backward could read or clip the gradients).

The frozen teacher's BN runs as one affine map ``x * s + t`` (autograd keeps no copy of ``x``) in
every configuration: that is the library BN's inference definition (``layers._RateBatchNorm``,
students' evaluation included), not a switch, so turning it off would move the last bits.

The tensor layout of a training step is chosen here too (``layout``): channels_last wherever the
convolution kernels compute it correctly.

``enabled()`` is on by default; ``set_enabled(False)`` (or ``with disabled(): ...``) makes ``apply``
install nothing, which ``tests/test_trainer.py`` uses to show that a run's weights do not change.

``apply(..., compile_spike_pass=True)`` (off by default; ``TrainConfig.compile_spike_pass``, ``bench --compile``)
runs every LIF's spike pass as one compiled kernel of its plain equations (``neurons.spike_equations`` through
``torch.compile``: C++ on the CPU, Triton on CUDA), in a method whose step has a spike pass
(``Method.uses_spike_pass``), where ``compiler_works()``; without a working compiler it says so once and the
fused loop runs.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from hybridkd_lib.snn.ratebp import set_spike_pass
from hybridkd_lib.training import memory

_ENABLED = True


def enabled() -> bool:
    return _ENABLED


def set_enabled(on: bool) -> None:
    global _ENABLED
    _ENABLED = bool(on)


@contextmanager
def disabled():
    was = _ENABLED
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(was)


class StepInBackward:
    """Run ``opt``'s update of each parameter inside ``loss.backward()``, as soon as that
    parameter's gradient is complete, then free the gradient, so a step never holds every
    gradient at once (PyTorch's "optimizer step in backward" recipe, using
    ``Tensor.register_post_accumulate_grad_hook``). The update is ``opt.step()`` itself,
    called with only that parameter in its group: same arithmetic, same optimizer state
    (so ``opt.state_dict()``, the LR scheduler and checkpoints are unchanged). With it,
    a training step is ``loss.backward()`` alone; ``remove()`` detaches the hooks.
    Not for data parallel runs, whose gradients must be averaged before any update.
    """

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt
        self._group_of = {p: i for i, g in enumerate(opt.param_groups) for p in g["params"]}
        self._handles = [p.register_post_accumulate_grad_hook(self._update) for p in self._group_of]

    def _update(self, p: torch.Tensor) -> None:
        groups = self.opt.param_groups
        kept = [g["params"] for g in groups]
        try:
            for i, g in enumerate(groups):
                g["params"] = [p] if i == self._group_of[p] else []
            self.opt.step()
        finally:
            for g, params in zip(groups, kept):
                g["params"] = params
        p.grad = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class Tricks:
    """What ``apply`` installed on one learner; a training step (``step.TrainingStep``) ends with
    ``after_step``; ``in_backward``: the optimizer update runs inside backward."""

    device: torch.device
    in_backward: StepInBackward | None = None
    on: bool = False

    def after_step(self) -> None:
        if self.on:
            memory.release_freed_memory(self.device)

    def remove(self) -> None:
        if self.in_backward is not None:
            self.in_backward.remove()
            self.in_backward = None


# oneDNN's 1x1 backward-weights kernel with stride > 1 on NHWC (channels_last) input writes past its
# workspace when the input channels are fewer than the ISA's channel block (8 on AVX2, 16 on AVX-512):
# wrong weight gradients, hangs and heap corruption (uxlfoundation/oneDNN#6035, open; torch 2.14.1).
ONEDNN_SAFE_IN_CHANNELS = 16


def unsafe_channels_last_convs(model: nn.Module) -> list[str]:
    """The convolutions of ``model`` that hit oneDNN#6035 in channels_last on the CPU: 1x1, stride > 1,
    fewer than ``ONEDNN_SAFE_IN_CHANNELS`` input channels (their names)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and all(k == 1 for k in m.kernel_size) and any(s > 1 for s in m.stride)
            and m.in_channels < ONEDNN_SAFE_IN_CHANNELS]


def layout(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """The memory format a training step of ``model`` runs in on ``device``: channels_last (oneDNN and
    cuDNN convolutions without layout reorders; CPU ~10-20 % faster at full width), except on the CPU
    when a convolution would hit oneDNN#6035 (the small widths of the tests and the smoke profile)."""
    if torch.device(device).type == "cpu" and unsafe_channels_last_convs(model):
        return torch.contiguous_format
    return torch.channels_last


def to_layout(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` in ``layout(model, device)``."""
    return model.to(memory_format=layout(model, device))


_COMPILER_PROBLEM: dict[str, str | None] = {}   # device type -> None (works) or why not
_COMPILER_PROBLEM_SAID: set[str] = set()          # device types whose problem was logged


def compiler_works(device: torch.device | str = "cpu") -> str | None:
    """None where ``torch.compile`` builds and runs a spike-pass kernel on ``device``'s type, else why not
    (checked once per process and device type)."""
    kind = torch.device(device).type
    if kind not in _COMPILER_PROBLEM:
        from hybridkd_lib.snn.neurons import compiled_spike_equations, spike_equations

        try:
            x = torch.randn(2, 3, 4, device=device)
            got = compiled_spike_equations()(x, 0.2, 1.0, 4.0, 1.0, None, True)
            want = spike_equations(x, 0.2, 1.0, 4.0, 1.0, None, True)
            same = all(torch.allclose(a, b) for a, b in zip(got, want))
            _COMPILER_PROBLEM[kind] = None if same else "the compiled kernel's records differ from the plain loop's"
        except Exception as e:   # no C++ compiler, no Triton, a broken toolchain: say which, then run eagerly
            _COMPILER_PROBLEM[kind] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return _COMPILER_PROBLEM[kind]


def use_compiled_spike_pass(model: nn.Module, device: torch.device | str, log=print) -> bool:
    """Every LIF of ``model`` runs its spike pass as the compiled kernel, where ``compiler_works``; else says
    so (once per process) and leaves the fused loop. Returns whether it compiled."""
    problem, kind = compiler_works(device), torch.device(device).type
    if problem is not None:
        if kind not in _COMPILER_PROBLEM_SAID:
            log(f"compiled spike pass unavailable on {kind} ({problem}); the fused loop runs")
            _COMPILER_PROBLEM_SAID.add(kind)
        return False
    set_spike_pass(model, loop="compiled")
    return True


def steps_in_backward(device: torch.device, data_parallel: bool) -> bool:
    """Whether the optimizer steps inside backward by default: one process on the CPU (DDP must see every
    gradient before any update; on CUDA the trick buys nothing)."""
    return torch.device(device).type == "cpu" and not data_parallel


def apply(learner: nn.Module, opt: torch.optim.Optimizer | None = None, data_parallel: bool = False,
          step_in_backward: bool | None = None, compile_spike_pass: bool = False, log=print) -> Tricks:
    """Install the tricks on ``learner`` (already on its device) when ``enabled()``: temporaries
    overwritten (CPU), freed pages returned (CPU), the optimizer stepped in backward (``opt`` given and
    ``step_in_backward``, by default: one process on the CPU), the compiled spike pass
    (``compile_spike_pass``). Returns the ``Tricks`` the step calls; nothing is installed when off."""
    device = next(learner.parameters()).device
    if step_in_backward is None:
        step_in_backward = steps_in_backward(device, data_parallel)
    if not _ENABLED:
        return Tricks(device)
    student = getattr(learner, "student", learner)   # a learner's spiking model (None: it trains an ANN)
    spec = getattr(learner, "spec", None)             # a learner's method: does its step run the spike pass?
    if compile_spike_pass and student is not None and (spec is None or spec.uses_spike_pass(learner.T)):
        use_compiled_spike_pass(student, device, log)
    if device.type == "cpu":
        if student is not None:
            set_spike_pass(student, in_place=True)
        if hasattr(learner, "between_passes"):
            learner.between_passes = partial(memory.release_freed_memory, device)
    in_backward = StepInBackward(opt) if opt is not None and step_in_backward else None
    return Tricks(device, in_backward, on=True)
