"""Spikingformer (Zhou et al. 2023, zhouchenlin2096/Spikingformer), CIFAR variant.

Tokens are channels-first, ``[T, B, D, N]`` (or ``[B, D, N]`` in the rate pass), so
the 1x1 projections are ``Conv1d`` and the norms ``BatchNorm1d`` as in the original.
Spike-driven residual learning: the residual stream is real-valued and every
branch starts with a LIF. Self-attention has no softmax: ``(Q K^T) V * 0.125``,
computed as ``Q (K^T V)`` (same value, cheaper for N > d), then a LIF with
threshold 0.5. Each encoder block is one stage of the stage protocol.
"""
from __future__ import annotations

from torch import nn

from hybridkd_lib.layers import RateBatchNorm1d, RateBatchNorm2d, Temporal, conv
from hybridkd_lib.models.stages import SpikingStageModel
from hybridkd_lib.neurons import DEFAULT_NEURON, LIF, NeuronConfig


def _proj(cin, cout):
    return nn.Sequential(conv(cin, cout, 1, sample_dims=2), RateBatchNorm1d(cout))


class SpikingSelfAttention(nn.Module):
    def __init__(self, dim, heads, cfg: NeuronConfig, scale=0.125):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.lif_in = LIF(cfg)
        self.q, self.k, self.v = _proj(dim, dim), _proj(dim, dim), _proj(dim, dim)
        self.lif_q, self.lif_k, self.lif_v = LIF(cfg), LIF(cfg), LIF(cfg)
        self.lif_attn = LIF(cfg, v_threshold=0.5)
        self.proj = _proj(dim, dim)

    def forward(self, x):  # [..., D, N]
        *lead, D, N = x.shape
        h = self.lif_in(x)
        split = lambda t: t.reshape(*lead, self.heads, D // self.heads, N)  # [..., H, d, N]
        q, k, v = (split(lif(p(h))) for p, lif in
                   ((self.q, self.lif_q), (self.k, self.lif_k), (self.v, self.lif_v)))
        kv = k @ v.transpose(-1, -2)            # [..., H, d, d] = K^T V (channels-first)
        out = kv.transpose(-1, -2) @ q * self.scale  # [..., H, d, N] = ((Q K^T) V)^T
        return self.proj(self.lif_attn(out.reshape(*lead, D, N)))


class SpikingMLP(nn.Module):
    def __init__(self, dim, ratio, cfg):
        super().__init__()
        self.lif1, self.fc1 = LIF(cfg), _proj(dim, dim * ratio)
        self.lif2, self.fc2 = LIF(cfg), _proj(dim * ratio, dim)

    def forward(self, x):
        return self.fc2(self.lif2(self.fc1(self.lif1(x))))


class SpikingformerBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, cfg):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, heads, cfg)
        self.mlp = SpikingMLP(dim, mlp_ratio, cfg)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class _Tokens(nn.Module):
    """``[..., D, H, W]`` -> ``[..., D, H*W]``."""

    def forward(self, x):
        return x.flatten(-2)


class SPSRest(nn.Module):
    """Spiking patch splitting after the first conv+BN: LIF-conv-BN to D/4, D/2, then
    max-pool before the last two convs (D, and the relative-position conv, added back)."""

    def __init__(self, dim, cfg):
        super().__init__()
        c = [dim // 8, dim // 4, dim // 2, dim]
        pool = lambda: Temporal(nn.MaxPool2d(3, 2, 1))
        self.lif1, self.conv1, self.bn1 = LIF(cfg), conv(c[0], c[1]), RateBatchNorm2d(c[1])
        self.lif2, self.conv2, self.bn2 = LIF(cfg), conv(c[1], c[2]), RateBatchNorm2d(c[2])
        self.lif3, self.pool3, self.conv3, self.bn3 = LIF(cfg), pool(), conv(c[2], c[3]), RateBatchNorm2d(c[3])
        self.pool4 = pool()
        self.lif4, self.rpe, self.bn4 = LIF(cfg), conv(c[3], c[3]), RateBatchNorm2d(c[3])
        self.tokens = _Tokens()

    def forward(self, x):
        x = self.bn1(self.conv1(self.lif1(x)))
        x = self.bn2(self.conv2(self.lif2(x)))
        x = self.pool4(self.bn3(self.conv3(self.pool3(self.lif3(x)))))
        x = x + self.bn4(self.rpe(self.lif4(x)))
        return self.tokens(x)


class _TokenHead(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):  # [..., D, N] -> [..., classes]
        return self.fc(x.mean(-1))


class Spikingformer(SpikingStageModel):
    """Spikingformer-L-D: ``depth`` blocks of width ``dim``; input 32x32 -> 8x8 tokens."""

    def __init__(self, num_classes=10, dim=256, depth=4, heads=8, mlp_ratio=4, in_chans=3,
                 neuron_cfg: NeuronConfig = DEFAULT_NEURON, T: int = 4):
        super().__init__()
        self.T = T
        self.encoder = nn.Sequential(conv(in_chans, dim // 8), RateBatchNorm2d(dim // 8))
        self.stem = SPSRest(dim, neuron_cfg)
        self.stages = nn.ModuleList(SpikingformerBlock(dim, heads, mlp_ratio, neuron_cfg) for _ in range(depth))
        self.feature_info = [{"num_chs": dim, "reduction": 4, "kind": "tokens"} for _ in range(depth)]
        self.head = _TokenHead(dim, num_classes)
