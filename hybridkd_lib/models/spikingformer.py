"""Spikingformer (Zhou et al. 2023), CIFAR variant, as ``cifar10/model.py`` of
zhouchenlin2096/Spikingformer defines it.

Tokens are channels-first, ``[T, B, D, N]`` (or ``[B, D, N]`` in the rate pass), so
the 1x1 projections are ``Conv1d`` and the norms ``BatchNorm1d`` (the source's
``Conv2d``/``BatchNorm2d`` on ``[T*B, D, H, W]`` or ``Conv1d``/``BatchNorm1d`` on
``[T*B, D, N]``: the same weights and statistics). Layer by layer:

- tokenizer: conv3x3-BN (D/8); then LIF-conv3x3-BN to D/4 and D/2; then
  LIF-maxpool-conv3x3-BN to D twice (32x32 -> 8x8 tokens); convs without bias,
  no relative-position branch;
- attention: LIF; q, k, v each conv1x1 (no bias)-BN-LIF; ``(Q K^T) V * 0.125`` (no
  softmax; computed as ``Q (K^T V)``, the same value); LIF with threshold 0.5;
  conv1x1 (with bias)-BN;
- MLP: LIF-conv1x1-BN to 4D, LIF-conv1x1-BN back to D (convs with bias);
- residual stream real-valued: ``x + attn(x)``, then ``+ mlp``; head: mean over
  tokens, Linear (truncated-normal init, std 0.02, bias 0), mean over T.

The source's blocks also create two LayerNorms that their forward never calls; they are
left out (4,096 parameters at D=256: the source module has 4,156,202, the network it
computes 4,152,106, the Spikingformer paper's 4.15 M).

Neurons: the source's ``MultiStepLIFNode(tau=2.0, detach_reset=True)`` with spikingjelly's
defaults, i.e. tau 2.0, ``decay_input=True``, hard reset to 0, threshold 1.0 (0.5 for the
attention LIF), sigmoid surrogate alpha 4: ``SPIKINGFORMER_NEURON``. A run's ``neuron``
parameter overrides these fields (the attention LIF keeps its 0.5 threshold).
"""
from __future__ import annotations

from torch import nn

from hybridkd_lib.snn.layers import MatMul, RateBatchNorm1d, RateBatchNorm2d, SpikeMeanValue, conv
from hybridkd_lib.models.resnet import neuron_config
from hybridkd_lib.models.stages import SpikingStageModel
from hybridkd_lib.snn.neurons import LIF, NeuronConfig

SPIKINGFORMER_NEURON = NeuronConfig(tau=2.0, v_reset=0.0, decay_input=True)


def _proj(cin, cout, bias):
    return nn.Sequential(conv(cin, cout, 1, sample_dims=2, bias=bias), RateBatchNorm1d(cout))


class SpikingSelfAttention(nn.Module):
    def __init__(self, dim, heads, cfg: NeuronConfig, scale=0.125):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.lif_in = LIF(cfg)
        self.q, self.lif_q = _proj(dim, dim, False), LIF(cfg)
        self.k, self.lif_k = _proj(dim, dim, False), LIF(cfg)
        self.v, self.lif_v = _proj(dim, dim, False), LIF(cfg)
        self.lif_attn = LIF(cfg, v_threshold=0.5)
        self.proj = _proj(dim, dim, True)
        self.kv_product, self.attn_product = MatMul(), MatMul()   # modules, so that hooks see the operands

    def forward(self, x):  # [..., D, N]
        *lead, D, N = x.shape
        h = self.lif_in(x)
        split = lambda t: t.reshape(*lead, self.heads, D // self.heads, N)  # [..., H, d, N]
        q, k, v = (split(lif(p(h))) for p, lif in
                   ((self.q, self.lif_q), (self.k, self.lif_k), (self.v, self.lif_v)))
        kv = self.kv_product(k, v.transpose(-1, -2))              # [..., H, d, d] = K^T V (channels-first)
        out = self.attn_product(kv.transpose(-1, -2), q) * self.scale  # [..., H, d, N] = ((Q K^T) V)^T
        return self.proj(self.lif_attn(out.reshape(*lead, D, N)))


class SpikingMLP(nn.Module):
    def __init__(self, dim, ratio, cfg):
        super().__init__()
        self.lif1, self.fc1 = LIF(cfg), _proj(dim, dim * ratio, True)
        self.lif2, self.fc2 = LIF(cfg), _proj(dim * ratio, dim, True)

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


class SpikingTokenizer(nn.Module):
    """The source's tokenizer after its first conv+BN (``block1``..``block4``): LIF-conv-BN to
    D/4 and D/2, then LIF-maxpool-conv-BN to D twice; ``[..., D/8, H, W]`` -> ``[..., D, H*W/16]``."""

    def __init__(self, dim, cfg):
        super().__init__()
        c = [dim // 8, dim // 4, dim // 2, dim, dim]
        pool = lambda i: [SpikeMeanValue(nn.MaxPool2d(3, 2, 1))] if i >= 2 else []
        self.blocks = nn.Sequential(*(nn.Sequential(LIF(cfg), *pool(i), conv(c[i], c[i + 1]), RateBatchNorm2d(c[i + 1]))
                                      for i in range(4)))
        self.tokens = _Tokens()

    def forward(self, x):
        return self.tokens(self.blocks(x))


class _TokenHead(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):  # [..., D, N] -> [..., classes]
        return self.fc(x.mean(-1))


class Spikingformer(SpikingStageModel):
    """Spikingformer-L-D: ``depth`` blocks of width ``dim``; input 32x32 -> 8x8 tokens."""

    def __init__(self, num_classes=10, dim=256, depth=4, heads=8, mlp_ratio=4, in_chans=3,
                 neuron_cfg: NeuronConfig | dict | None = None, T: int = 4):
        super().__init__()
        self.T = T
        self.neuron_cfg = neuron_cfg = neuron_config(neuron_cfg, SPIKINGFORMER_NEURON)
        self.encoder = nn.Sequential(conv(in_chans, dim // 8), RateBatchNorm2d(dim // 8))
        self.stem = SpikingTokenizer(dim, neuron_cfg)
        self.stages = nn.ModuleList(SpikingformerBlock(dim, heads, mlp_ratio, neuron_cfg) for _ in range(depth))
        self.feature_info = [{"num_chs": dim, "reduction": 4, "kind": "tokens"} for _ in range(depth)]
        self.head = _TokenHead(dim, num_classes)
