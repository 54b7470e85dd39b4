"""The convolution floor of a training step: the dense products it computes, timed alone.

``record(step, model)`` runs ``step()`` once with forward hooks on every convolution and linear layer of
``model`` and lists each call as a ``DenseCall``: the input's shape and layout, the compute dtype (the
output's: bf16 or fp16 under CUDA autocast) and which backward products the step computes for it (the gradient
with respect to the input where the input needs one, the weight's where the weight is trained). For a
RateBP step that is the spike pass's forward over ``[T*B, ...]``, the rate pass's forward and both
backward products over ``[B, ...]``, and with a teacher its graph-free forward and, for the hybrids, its
suffixes' forward and input-gradient products.

``time_calls`` runs exactly those products on random tensors of the same shapes, layout, dtype and
device and returns their seconds: what a step of that configuration cannot go below with these
kernels. The rest of a step (LIF loops, BN, pooling, the optimizer, allocation) is its distance from
the floor. Products between two activations (attention's ``Q K^T``) are not counted.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DENSE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class DenseCall:
    """One call of a convolution (``kind="conv"``) or linear layer in a step: input ``x_shape``
    (``[N, C, H, W]``, ``[N, C, L]`` or ``[..., in]``), ``channels_last`` input, ``weight_shape``,
    ``bias``, the conv's ``stride``/``padding``/``dilation``/``groups``, the compute ``dtype`` and the
    backward products it needs (``input_grad``, ``weight_grad``)."""

    kind: str
    x_shape: tuple
    channels_last: bool
    weight_shape: tuple
    bias: bool
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1
    dtype: str = "torch.float32"
    input_grad: bool = False
    weight_grad: bool = False


def _padding(m: nn.Module) -> tuple:
    if isinstance(m.padding, str):   # "valid" or "same" (odd kernels)
        return tuple(0 if m.padding == "valid" else d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
    return tuple(m.padding)


def _call_of(m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> DenseCall:
    backward = torch.is_grad_enabled() and out.requires_grad
    common = dict(x_shape=tuple(x.shape), weight_shape=tuple(m.weight.shape), bias=m.bias is not None,
                  dtype=str(out.dtype), input_grad=backward and x.requires_grad,
                  weight_grad=backward and m.weight.requires_grad)
    if isinstance(m, nn.Linear):
        return DenseCall("linear", channels_last=False, **common)
    return DenseCall("conv", channels_last=x.dim() == 4 and not x.is_contiguous()
                     and x.is_contiguous(memory_format=torch.channels_last),
                     stride=tuple(m.stride), padding=_padding(m), dilation=tuple(m.dilation), groups=m.groups,
                     **common)


def record(step, model: nn.Module) -> list[DenseCall]:
    """Run ``step()`` once and return every dense call of ``model``'s convolutions and linear layers in it
    (in call order; a recomputed forward counts again)."""
    calls: list[DenseCall] = []
    hooks = [m.register_forward_hook(lambda m, args, out: calls.append(_call_of(m, args[0], out)))
             for m in model.modules() if isinstance(m, DENSE)]
    try:
        step()
    finally:
        for h in hooks:
            h.remove()
    return calls


def _products(call: DenseCall, device: torch.device) -> list:
    """The call's forward and backward products as functions of no argument, on random tensors."""
    dtype = getattr(torch, call.dtype.removeprefix("torch."))
    fmt = torch.channels_last if call.channels_last else torch.contiguous_format
    x = torch.randn(call.x_shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
    w = torch.randn(call.weight_shape, dtype=dtype, device=device)
    if call.kind == "conv" and w.dim() == 4:
        w = w.contiguous(memory_format=fmt)
    b = torch.randn(call.weight_shape[0], dtype=dtype, device=device) if call.bias else None
    if call.kind == "linear":
        x2 = x.reshape(-1, call.weight_shape[1])
        g2 = torch.randn(x2.shape[0], call.weight_shape[0], dtype=dtype, device=device)
        ops = [lambda: F.linear(x, w, b)]
        if call.input_grad:
            ops.append(lambda: g2 @ w)
        if call.weight_grad:
            ops.append(lambda: g2.t() @ x2)
        return ops
    conv = F.conv2d if x.dim() == 4 else F.conv1d
    args = (call.stride, call.padding, call.dilation, call.groups)
    ops = [lambda: conv(x, w, b, *args)]
    if call.input_grad or call.weight_grad:
        g = torch.randn_like(ops[0]())
        mask = [call.input_grad, call.weight_grad, call.bias and call.weight_grad]
        ops.append(lambda: torch.ops.aten.convolution_backward(
            g, x, w, [w.shape[0]] if call.bias else None, list(call.stride), list(call.padding),
            list(call.dilation), False, [0] * (x.dim() - 2), call.groups, mask))
    return ops


@torch.no_grad()
def time_calls(calls: list[DenseCall], device: torch.device | str, repeats: int = 3, warmup: bool = True) -> float:
    """Seconds the products of ``calls`` take on ``device``: per distinct call, one warm-up run of its
    products (``warmup``; leave it out only where the same calls ran before in this process), then the median of
    ``repeats`` timed runs, times how often the step made that call."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    total = 0.0
    for call, count in Counter(calls).items():
        ops = _products(call, device)
        if warmup:
            for op in ops:
                op()
        sync()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            for op in ops:
                op()
            sync()
            times.append(time.perf_counter() - t0)
        total += count * statistics.median(times)
    return total
