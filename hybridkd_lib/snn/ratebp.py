"""Rate-based backpropagation (RateBP, NeurIPS 2024) as a training mode of any student.

One step: (1) a spike pass over T without an autograd graph, in which every LIF
records its firing rate and eligibility and every BN its batch statistics (and
updates its running statistics once); (2) one rate pass with autograd over the
batch B on the time-averaged input. Every LIF's value there is its recorded rate
and every BN uses the recorded statistics, so between LIFs only non-linear layers
(max-pooling of spikes) can make the rate pass's value differ from the time-averaged
spike pass: ``value="rate"`` keeps the reference's construction (pool the rates),
``value="spike_mean"`` uses the recorded time average there (``layers.SpikeMeanValue``).
The graph is one batch-B pass: its memory does not grow with T. BPTT is the other
mode of the same model (``set_mode``). At T=1 the two passes compute what BPTT's one pass
does, so a RateBP step takes that pass there (``rate_is_bptt``).
"""
from __future__ import annotations

import torch
from torch import nn

from hybridkd_lib.snn.layers import SpikeMeanValue
from hybridkd_lib.snn.neurons import MODES, SPIKE_LOOPS

RATE_VALUES = ("rate", "spike_mean")


def check_rate_value(value: str) -> None:
    if value not in RATE_VALUES:
        raise ValueError(f"unknown rate-pass value {value!r}; valid: {', '.join(RATE_VALUES)}")


def set_mode(model: nn.Module, mode: str, value: str | None = None) -> nn.Module:
    """Switch the rate-aware modules of ``model`` (a spiking student's ``rate_aware_modules()``: itself, every
    LIF, rate-aware BN and ``SpikeMeanValue``; any other module: those of the spiking models and rate-aware
    layers inside it) to ``mode``; ``value`` (``"rate"``/``"spike_mean"``, None: unchanged) sets what the
    rate pass gives after a non-linear layer between LIFs."""
    if mode not in MODES:
        raise ValueError(f"unknown propagation mode {mode!r}; valid: {', '.join(MODES)}")
    if value is not None:
        check_rate_value(value)
    targets = (model.rate_aware_modules() if hasattr(model, "rate_aware_modules") else
               [m for m in model.modules() if getattr(m, "rate_aware", False) or getattr(m, "spiking", False)])
    for m in targets:
        m.mode = mode
        if value is not None and isinstance(m, SpikeMeanValue):
            m.value = value
        if mode == "bptt" and hasattr(m, "clear"):
            m.clear()
    return model


def set_spike_pass(model: nn.Module, loop: str | None = None, in_place: bool | None = None) -> int:
    """How ``model`` runs the graph-free spike pass, set for the whole model at once (as spikingjelly's
    ``set_step_mode``): ``loop`` (``neurons.SPIKE_LOOPS``) for every LIF; ``in_place``: each block's
    temporaries (the children its ``temporary_inputs`` names) write over their input and its residual add
    over its own temporary. None leaves a setting as it is; returns how many modules were set."""
    if loop is not None and loop not in SPIKE_LOOPS:
        raise ValueError(f"spike loop {loop!r} not allowed; valid: {', '.join(SPIKE_LOOPS)}")
    switched = 0
    for block in model.modules():
        if loop is not None and hasattr(block, "spike_loop"):   # every LIF (and a plug-in's neuron like it)
            block.spike_loop = loop
            switched += 1
        if in_place is None:
            continue
        if hasattr(block, "adds_over_input"):   # its residual add writes over its own temporary
            block.adds_over_input = in_place
            switched += 1
        for name in getattr(block, "temporary_inputs", ()):
            child = getattr(block, name)
            if hasattr(child, "writes_over_input"):
                child.writes_over_input = in_place
                switched += 1
    return switched


def spike_pass(model: nn.Module, x: torch.Tensor, value: str = "rate"):
    """Graph-free spike pass (records rates/eligibilities); returns the T-averaged logits."""
    set_mode(model, "spike", value)
    with torch.no_grad():
        return model(x)


def rate_forward(model: nn.Module, x: torch.Tensor, fn=None, value: str = "rate", between_passes=None):
    """Spike pass, then the rate pass with autograd; returns ``fn(model, x)`` in rate mode.

    ``fn`` defaults to ``model(x)`` (logits ``[B, classes]``); the hybrid trainer passes
    a function that also runs the teacher suffixes on the student's rate features.
    ``value``: see the module docstring. ``between_passes``: called after the spike pass
    (``speed.apply`` returns its freed memory there). The recorded rates are dropped afterwards;
    the graph keeps what backward needs.
    """
    spike_pass(model, x, value)
    if between_passes is not None:
        between_passes()
    set_mode(model, "rate")
    try:
        return model(x) if fn is None else fn(model, x)
    finally:
        set_mode(model, "bptt")


def rate_is_bptt(T: int) -> bool:
    """True at ``T == 1``: there the spike pass is one step, every rate is that step's spike, every
    eligibility its surrogate derivative and every BN's recorded statistics the batch's own, so the rate
    pass computes BPTT's values and gradients (``tests/test_ratebp.py`` checks it on every student). A
    RateBP step then takes BPTT's single pass (``methods.Method.outputs``) instead of two."""
    return T == 1


def scale_gradient(loss: torch.Tensor, T: int) -> torch.Tensor:
    """The reference's 1/T gradient scale: the value of ``loss``, the gradient of ``loss / T``."""
    scaled = loss / T
    return loss.detach() + (scaled - scaled.detach())


def rate_pass_gap(model: nn.Module, x: torch.Tensor, value: str = "rate") -> dict:
    """How far the rate pass's values are from the time-averaged spike pass's, with rate-pass value
    ``value``: the largest absolute difference of the logits and of the stage outputs (the hybrids' inputs).
    One training-mode spike pass and rate pass, as a RateBP step makes (BN running statistics
    are updated once)."""
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            set_mode(model, "spike", value)
            spike_feats = model.forward_intermediates(x)
            spike_logits = model.forward_head(spike_feats[-1])
            spike_feats = [f.mean(0) for f in spike_feats]
            set_mode(model, "rate")
            rate_feats = model.forward_intermediates(x)
            rate_logits = model.forward_head(rate_feats[-1])
    finally:
        set_mode(model, "bptt")
        model.train(was)
    return {"logits": (rate_logits - spike_logits).abs().max().item(),
            "stage outputs": max((r - s).abs().max().item() for r, s in zip(rate_feats, spike_feats))}
