"""Shape-polymorphic layers shared by spiking students and ANN teachers.

A temporal tensor has one leading dim more than the wrapped layer expects
(``[T, B, C, H, W]`` for 2-D layers, ``[T, B, C, N]`` for 1-D ones); it is
folded to ``[T*B, ...]`` for the layer and unfolded after (spikingjelly's
``SeqToANNContainer`` idea). A plain ``[B, ...]`` tensor passes straight
through, so the same layer serves the rate pass and ANN teachers.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from hybridkd_lib.snn.neurons import state_dtype


class Temporal(nn.Module):
    """Apply ``module`` to ``[T, B, ...]`` (folded) or ``[B, ...]`` inputs."""

    def __init__(self, module: nn.Module, sample_dims: int = 3):
        super().__init__()
        self.module = module
        self.batch_ndim = sample_dims + 1  # ndim of a non-temporal batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.batch_ndim + 1:
            T, B = x.shape[:2]
            y = self.module(x.flatten(0, 1))
            return y.unflatten(0, (T, B))
        return self.module(x)


class SpikeMeanValue(Temporal):
    """A non-linear layer between LIFs (max-pooling of spikes), in the RateBP modes.

    In the rate pass its value ``f(mean_t x_t)`` differs from the time average
    ``mean_t f(x_t)`` the spiking network computes: for a max-pool, the max of the rates is at most
    the mean of the per-step maxima (two neurons firing alternately: 0.5 against 1), so the rate
    pass under-states pooled activity.
    ``value="rate"`` (the reference's construction, the default) keeps ``f(r)``;
    ``value="spike_mean"`` records ``mean_t f(x_t)`` in the spike pass and uses it as the
    rate pass's value, with ``f(r)``'s gradient (as a LIF does with its rate).
    ``mode`` and ``value`` are set by ``ratebp.set_mode``.
    """

    rate_aware = True   # its forward follows the propagation mode (ratebp.set_mode)
    mode = "bptt"
    value = "rate"
    spike_mean: torch.Tensor | None = None   # [B, ...] recorded by the spike pass

    def clear(self):
        self.spike_mean = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.value != "spike_mean" or not self.training:
            return y
        if self.mode == "spike" and not torch.is_grad_enabled():   # a static input needs no averaging
            self.spike_mean = y.mean(0, dtype=state_dtype(y.dtype)) if x.dim() == self.batch_ndim + 1 else y
        elif self.mode == "rate":
            if self.spike_mean is None or self.spike_mean.shape != y.shape:
                raise RuntimeError("rate pass without a matching spike pass: run the model in mode 'spike' first")
            return y + (self.spike_mean.to(y.dtype) - y).detach()
        return y


def conv(cin, cout, k=3, stride=1, padding=None, sample_dims=3, bias=False):
    """Bias-free conv (2-D by default, 1-D with ``sample_dims=2``) usable on temporal inputs."""
    cls = nn.Conv2d if sample_dims == 3 else nn.Conv1d
    return Temporal(cls(cin, cout, k, stride, k // 2 if padding is None else padding, bias=bias),
                    sample_dims)


class _RateBatchNorm:
    """BatchNorm with the RateBP modes (mixin for BatchNorm1d/2d).

    ``bptt``: ordinary BN over ``[T*B]``; eval (any mode): the running-statistics
    affine map. ``spike``: normalise with the batch statistics over ``(T*B, spatial)``,
    record them and update the running statistics once. ``rate``: the forward value
    uses the recorded spike-pass statistics, the gradient is ordinary BN's
    (``mu = mu_spk + (mu_x - mu_x.detach())``, same for var; see ``_RateBN``);
    running statistics are not touched again.

    ``sync_stats`` (set by ``convert_sync_batchnorm`` under torchrun): every statistic
    and every gradient mean is over all processes' batches, as ``nn.SyncBatchNorm``:
    the forward all-reduces ``[sum x, sum x^2, n]`` as one tensor per layer (no host
    sync) and the backward ``[sum dy*xh, sum dy, sum xh, n]``. It is one implementation
    for CPU (gloo) and CUDA (NCCL) because ``nn.SyncBatchNorm`` refuses CPU tensors
    ("SyncBatchNorm expected input tensor to be on GPU", torch 2.14) and knows no
    spike/rate modes; a 2-process CPU run equals a 1-process run (tests/test_distributed.py).
    """

    rate_aware = True   # its forward follows the propagation mode (ratebp.set_mode)
    mode = "bptt"
    sync_stats = False
    writes_over_input = False   # spike pass: normalise in place (ratebp.set_spike_pass(in_place=True) on block temporaries)
    spk_mean: torch.Tensor | None = None
    spk_var: torch.Tensor | None = None
    _sample_dims = 3

    def clear(self):
        self.spk_mean = self.spk_var = None

    @property
    def _synced(self) -> bool:
        return self.sync_stats and dist.is_available() and dist.is_initialized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temporal = x.dim() == self._sample_dims + 2
        if temporal:
            T, B = x.shape[:2]
            x = x.flatten(0, 1)
        if not self.training and self.running_mean is not None:
            y = self._eval_forward(x)
        elif not self.training or (self.mode == "bptt" and not self._synced):
            y = super().forward(x)
        elif self.mode == "bptt":   # synchronised batch BN with autograd
            mean, var = self._batch_stats(x)
            y = _RateBN.apply(x, self.weight, self.bias, mean, var, self.eps, True)
        elif self.mode == "spike":
            y = self._spike_forward(x, in_place=self.writes_over_input and not torch.is_grad_enabled())
        else:
            y = self._rate_forward(x)
        return y.unflatten(0, (T, B)) if temporal else y

    def _dims(self, x):
        return (0,) + tuple(range(2, x.dim()))

    def _eval_forward(self, x):
        """Inference BN as one per-channel affine map ``x * s + t``: for a frozen BN
        (a teacher inside a hybrid) autograd then keeps no copy of ``x``."""
        return _normalise(x, self.running_mean, self.running_var, self.eps, self.weight, self.bias)

    @torch.no_grad()
    def _batch_stats(self, x):
        """Mean and (biased) variance over every process's batch; updates the running statistics."""
        C, m = x.shape[1], (self.momentum if self.momentum is not None else 0.1)
        dims = self._dims(x)
        xf = x.to(state_dtype(x.dtype))
        stats = torch.cat([xf.sum(dims), xf.square().sum(dims), xf.new_full((1,), x.numel() // C)])
        dist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:-1] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
            self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)
            self.num_batches_tracked.add_(1)
        return mean, var

    @torch.no_grad()
    def _spike_forward(self, x, in_place=False):
        if self._synced:  # statistics over every process's shard
            mean, var = self._batch_stats(x)
            self.spk_mean, self.spk_var = mean, var
            return _normalise(x, mean, var, self.eps, self.weight, self.bias, out=x if in_place else None)
        m = self.momentum if self.momentum is not None else 0.1
        # one native fused kernel: batch statistics, running-stat update, normalisation
        args = (x, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
                self.running_var if self.track_running_stats else None, True, m, self.eps)
        if in_place:  # normalise in place: no new [T*B, ...] tensor
            mean, invstd = x.new_empty(x.shape[1]), x.new_empty(x.shape[1])
            out, mean, invstd = torch.ops.aten.native_batch_norm.out(*args, out=x, save_mean=mean,
                                                                     save_invstd=invstd)
        else:
            out, mean, invstd = torch.native_batch_norm(*args)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        self.spk_mean, self.spk_var = mean, (invstd.pow(-2) - self.eps).clamp_min(0)
        return out

    def _rate_forward(self, x):
        if self.spk_mean is None:
            raise RuntimeError("rate pass without a spike pass: run the model in mode 'spike' first")
        return _RateBN.apply(x, self.weight, self.bias, self.spk_mean, self.spk_var, self.eps, self._synced)


class _RateBN(torch.autograd.Function):
    """BN whose value is normalised with given statistics and whose gradient is batch BN's.

    Equals autograd through ``mu = mu_spk + (mu_x - sg(mu_x))``, ``var = var_spk +
    (mean((x - mu)^2) - sg(.))``, ``y = (x - mu) * rsqrt(var + eps) * w + b``, but saves
    only the input ``x`` (``[B, C, ...]``) and per-channel vectors. With
    ``xh = (x - mu_spk) * s``, ``s = rsqrt(var_spk + eps)``, ``gh = dy * w``:
    ``dx = s * (gh - mean(gh) - (xh - mean(xh)) * mean(gh * xh))`` (means per channel).
    Given the batch's own statistics it is ordinary batch BN. ``sync``: the means are
    over every process's batch (one all-reduce); ``dw``/``db`` stay local sums, which
    DDP averages like every other gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, sync=False):
        ctx.sync = sync
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        return _normalise(x, mean, var, eps, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, scale = ctx.saved_tensors
        dims, n = (0,) + tuple(range(2, x.dim())), x.numel() // x.shape[1]
        xh = (x - _per_channel(mean, x)).mul_(_per_channel(scale, x))
        acc = state_dtype(x.dtype)
        sum_dy_xh = (dy * xh).sum(dims, dtype=acc)   # dL/dw
        sum_dy = dy.sum(dims, dtype=acc)              # dL/db
        dx = None
        if ctx.needs_input_grad[0]:
            g_dy_xh, g_dy, g_xh = sum_dy_xh, sum_dy, xh.sum(dims, dtype=acc)
            if ctx.sync:
                C = x.shape[1]
                packed = torch.cat([g_dy_xh, g_dy, g_xh, g_xh.new_full((1,), n)])
                dist.all_reduce(packed)
                g_dy_xh, g_dy, g_xh, n = packed[:C], packed[C:2 * C], packed[2 * C:3 * C], packed[-1]
            w = scale if weight is None else scale * weight
            # s * w * (dy - mean(dy) - (xh - mean(xh)) * mean(dy * xh)), in place on xh
            xh.sub_(_per_channel(g_xh / n, x)).mul_(_per_channel(-g_dy_xh / n, x))
            dx = xh.add_(dy).sub_(_per_channel(g_dy / n, x)).mul_(_per_channel(w, x))
        affine = weight is not None
        dw = sum_dy_xh.to(weight.dtype) if affine and ctx.needs_input_grad[1] else None
        db = sum_dy.to(weight.dtype) if affine and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Synchronise every training-mode BN of ``module`` across processes (call under torchrun).

    The library's BNs (students, CIFAR teachers, alignment modules) set ``sync_stats``; any
    other ``nn.BatchNorm`` (timm teachers) becomes ``nn.SyncBatchNorm`` where it runs on CUDA.
    """
    for m in module.modules():
        if isinstance(m, _RateBatchNorm):
            m.sync_stats = True
    if any(p.is_cuda for p in module.parameters()):
        _plain_bn_to_sync(module)
    return module


def _plain_bn_to_sync(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (_RateBatchNorm,
                                                                                        nn.SyncBatchNorm)):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _plain_bn_to_sync(child)


def _normalise(x, mean, var, eps, weight=None, bias=None, out=None):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with per-channel ``[C]`` statistics,
    as one ``addcmul`` (``x`` is ``[B, C, ...]``; autograd saves ``x`` only if the scale needs grad)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x), out=out)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[C]`` -> ``[1, C, 1, ...]`` in ``like``'s dtype, broadcastable to ``like`` (``[B, C, ...]``)."""
    return v.to(like.dtype).view((1, -1) + (1,) * (like.dim() - 2))


class RateBatchNorm2d(_RateBatchNorm, nn.BatchNorm2d):
    """``[B, C, H, W]`` or ``[T, B, C, H, W]``."""

    _sample_dims = 3


class RateBatchNorm1d(_RateBatchNorm, nn.BatchNorm1d):
    """``[B, C, N]`` or ``[T, B, C, N]`` (tokens: channels first)."""

    _sample_dims = 2


def residual_add(block: nn.Module, h: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``h + shortcut`` (``[T, B, C, H, W]`` or ``[B, C, H, W]``). In a training-mode forward without autograd (the
    spike pass) of a ``block`` whose ``adds_over_input`` is set (by ``ratebp.set_spike_pass``: ``h`` is a temporary of the
    block that nobody else reads), the sum is written over ``h``: no new ``[T, B, ...]`` tensor."""
    if getattr(block, "adds_over_input", False) and block.training and not torch.is_grad_enabled():
        return h.add_(shortcut)
    return h + shortcut


class GlobalAvgPool(nn.Module):
    """``[..., C, H, W]`` -> ``[..., C]`` (any leading dims)."""

    def forward(self, x):
        return x.flatten(-2).mean(-1)


class MatMul(nn.Module):
    """``a @ b`` as a module (no parameters), so that hooks see the operands of a product of activations
    (spiking attention's ``K^T V`` and ``(K^T V)^T Q``; ``spikecosts`` counts them)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b
