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


def conv(cin, cout, k=3, stride=1, padding=None, sample_dims=3, bias=False):
    """Bias-free conv (2-D by default, 1-D with ``sample_dims=2``) usable on temporal inputs."""
    cls = nn.Conv2d if sample_dims == 3 else nn.Conv1d
    return Temporal(cls(cin, cout, k, stride, k // 2 if padding is None else padding, bias=bias),
                    sample_dims)


class _RateBatchNorm:
    """BatchNorm with the RateBP modes (mixin for BatchNorm1d/2d).

    ``bptt`` (and eval): ordinary BN over ``[T*B]``. ``spike``: normalise with the
    batch statistics over ``(T*B, spatial)``, record them and update the running
    statistics once. ``rate``: the forward value uses the recorded spike-pass
    statistics, the gradient is ordinary BN's (``mu = mu_spk + (mu_x - mu_x.detach())``,
    same for var); running statistics are not touched again.
    """

    mode = "bptt"
    sync_stats = False  # all-reduce the spike-pass statistics across processes (SyncBN under torchrun)
    spk_mean: torch.Tensor | None = None
    spk_var: torch.Tensor | None = None
    _sample_dims = 3

    def clear(self):
        self.spk_mean = self.spk_var = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temporal = x.dim() == self._sample_dims + 2
        if temporal:
            T, B = x.shape[:2]
            x = x.flatten(0, 1)
        if not self.training or self.mode == "bptt":
            y = super().forward(x)
        elif self.mode == "spike":
            y = self._spike_forward(x)
        else:
            y = self._rate_forward(x)
        return y.unflatten(0, (T, B)) if temporal else y

    def _shape(self, x):
        return (1, -1) + (1,) * (x.dim() - 2)

    def _dims(self, x):
        return (0,) + tuple(range(2, x.dim()))

    @torch.no_grad()
    def _spike_forward(self, x):
        m = self.momentum if self.momentum is not None else 0.1
        if not (self.sync_stats and dist.is_available() and dist.is_initialized()):
            # one native fused kernel: batch statistics, running-stat update, normalisation
            out, mean, invstd = torch.native_batch_norm(
                x, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
                self.running_var if self.track_running_stats else None, True, m, self.eps)
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
            self.spk_mean, self.spk_var = mean, (invstd.pow(-2) - self.eps).clamp_min(0)
            return out
        # SyncBN: statistics over every process's shard
        n = x.numel() // x.shape[1]
        dims = self._dims(x)
        stats = torch.cat([x.sum(dims), x.square().sum(dims), x.new_tensor([float(n)])])
        dist.all_reduce(stats)
        n = int(stats[-1].item())
        mean = stats[:x.shape[1]] / n
        var = (stats[x.shape[1]:-1] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            self.running_mean.lerp_(mean, m)
            self.running_var.lerp_(var * (n / max(n - 1, 1)), m)
            self.num_batches_tracked.add_(1)
        self.spk_mean, self.spk_var = mean, var
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        shp = self._shape(x)
        return torch.addcmul(shift.view(shp), x, scale.view(shp))

    def _rate_forward(self, x):
        if self.spk_mean is None:
            raise RuntimeError("rate pass without a spike pass: run the model in mode 'spike' first")
        dims, shp = self._dims(x), self._shape(x)
        mu_x = x.mean(dim=dims)
        mu = self.spk_mean + (mu_x - mu_x.detach())
        xc = x - mu.view(shp)
        var_x = xc.square().mean(dim=dims)
        var = (self.spk_var + (var_x - var_x.detach())).clamp_min(0)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        y = xc * scale.view(shp)
        return y + self.bias.view(shp) if self.affine else y


class RateBatchNorm2d(_RateBatchNorm, nn.BatchNorm2d):
    """``[B, C, H, W]`` or ``[T, B, C, H, W]``."""

    _sample_dims = 3


class RateBatchNorm1d(_RateBatchNorm, nn.BatchNorm1d):
    """``[B, C, N]`` or ``[T, B, C, N]`` (tokens: channels first)."""

    _sample_dims = 2


class GlobalAvgPool(nn.Module):
    """``[..., C, H, W]`` -> ``[..., C]`` (any leading dims)."""

    def forward(self, x):
        return x.flatten(-2).mean(-1)
