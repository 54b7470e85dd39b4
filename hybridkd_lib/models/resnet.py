"""ResNets for students (LIF) and teachers (ReLU) with one stage layout.

The spiking definitions follow the RateBP reference code
(Tab-ct/rate-based-backpropagation, ``model/resnet.py``: bias-free convs, PyTorch's
default init; ``sew_resnet.py`` and ``preact_resnet.py``: convs with bias, Kaiming-normal
``fan_out`` init, BN weight 1 and bias 0); the CIFAR teachers use the same stem/stage
layout with ReLU. ``tests/test_models.py`` checks each against numbers of its source.
"""
from __future__ import annotations

from torch import nn

from hybridkd_lib.snn.layers import GlobalAvgPool, RateBatchNorm2d, SpikeMeanValue, conv, residual_add
from hybridkd_lib.models.stages import SpikingStageModel, StageModel
from hybridkd_lib.snn.neurons import DEFAULT_NEURON, LIF, NeuronConfig


def _act(spiking: bool, cfg: NeuronConfig):
    return LIF(cfg) if spiking else nn.ReLU()


def neuron_config(neuron_cfg: NeuronConfig | dict | None, default: NeuronConfig = DEFAULT_NEURON) -> NeuronConfig:
    """A model's LIF settings: a ``NeuronConfig``, or a dict of fields that override the model's
    ``default`` (the ``neuron`` parameter of a run); None: the default."""
    return neuron_cfg if isinstance(neuron_cfg, NeuronConfig) else NeuronConfig.with_overrides(default, neuron_cfg)


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN + shortcut (identity or 1x1 conv + BN), act after the add."""

    temporary_inputs = ("bn1", "act1", "bn2", "act2")   # their input is read by nobody else (ratebp.set_spike_pass)
    adds_over_input = False   # the residual add writes over bn2's output in the spike pass (ratebp.set_spike_pass)

    def __init__(self, cin, cout, stride, spiking, cfg, bias=False):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride, bias=bias), RateBatchNorm2d(cout)
        self.act1 = _act(spiking, cfg)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1, bias=bias), RateBatchNorm2d(cout)
        self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride, bias=bias), RateBatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.act2 = _act(spiking, cfg)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))   # the first map is freed here, not at return
        return self.act2(residual_add(self, h, self.shortcut(x)))


class SEWBlock(nn.Module):
    """SEW-ResNet block: (conv-BN-LIF) x 2, ADD identity / downsample (conv1x1-BN-LIF)."""

    temporary_inputs = ("bn1", "act1", "bn2", "act2")
    adds_over_input = False   # the ADD writes over act2's spikes in the spike pass (ratebp.set_spike_pass)

    def __init__(self, cin, cout, stride, spiking, cfg, bias=True):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride, bias=bias), RateBatchNorm2d(cout)
        self.act1 = _act(spiking, cfg)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1, bias=bias), RateBatchNorm2d(cout)
        self.act2 = _act(spiking, cfg)
        self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride, bias=bias), RateBatchNorm2d(cout), _act(spiking, cfg))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))
        return residual_add(self, h, self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block: LIF-conv-BN-LIF-conv-BN with a real-valued identity path."""

    temporary_inputs = ("bn1", "act2", "bn2")   # act1 reads x, which the shortcut reads too
    adds_over_input = False   # the residual add writes over bn2's output in the spike pass (ratebp.set_spike_pass)

    def __init__(self, cin, cout, stride, spiking, cfg, bias=True):
        super().__init__()
        self.act1, self.conv1 = _act(spiking, cfg), conv(cin, cout, 3, stride, bias=bias)
        self.bn1 = RateBatchNorm2d(cout)
        self.act2, self.conv2, self.bn2 = _act(spiking, cfg), conv(cout, cout, 3, 1, bias=bias), RateBatchNorm2d(cout)
        self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride, bias=bias), RateBatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        h = self.act2(self.bn1(self.conv1(self.act1(x))))
        h = self.bn2(self.conv2(h))
        return residual_add(self, h, self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "sew": SEWBlock, "preact": PreActBlock}


class ResNet(StageModel):
    """Generic ResNet on the stage protocol.

    ``stem``: ``"cifar"`` (3x3 conv, stride 1, no pool) or ``"imagenet"`` (7x7 conv
    stride 2 + max-pool). ``head_hidden``: an extra Linear-act before the classifier
    (ResNet-19). ``preact``: the stem has no activation, layer4's real-valued output goes
    straight to the average pool. ``source_init``: convs with bias and the Kaiming-normal
    ``fan_out`` init of the ImageNet sources (torchvision's ResNet recipe).
    """

    def __init__(self, layers, widths, strides, stem_width, num_classes=10, in_chans=3,
                 block="basic", stem="cifar", head_hidden=None, spiking=False,
                 neuron_cfg: NeuronConfig | dict | None = None, T: int = 4, source_init: bool = False):
        super().__init__()
        self.T = T
        self.neuron_cfg = neuron_cfg = neuron_config(neuron_cfg)
        Block = BLOCKS[block]
        preact = block == "preact"
        bias = source_init
        if stem == "cifar":
            self.encoder = nn.Sequential(conv(in_chans, stem_width, 3, 1, bias=bias), RateBatchNorm2d(stem_width))
            self.stem = _act(spiking, neuron_cfg)
            reduction = 1
        else:
            enc = [conv(in_chans, stem_width, 7, 2, bias=bias), RateBatchNorm2d(stem_width)]
            pool = SpikeMeanValue(nn.MaxPool2d(3, 2, 1))
            if preact:   # real-valued stem: conv-BN-maxpool, the first block starts with LIF
                self.encoder, self.stem = nn.Sequential(*enc, pool), nn.Identity()
            else:
                self.encoder, self.stem = nn.Sequential(*enc), nn.Sequential(_act(spiking, neuron_cfg), pool)
            reduction = 4
        stages, info, cin = [], [], stem_width
        for n, w, s in zip(layers, widths, strides):
            blocks = [Block(cin if i == 0 else w, w, s if i == 0 else 1, spiking, neuron_cfg, bias) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            reduction *= s
            info.append({"num_chs": w, "reduction": reduction, "kind": "map"})
            cin = w
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        head = [GlobalAvgPool()]
        if head_hidden:
            head += [nn.Linear(cin, head_hidden), _act(spiking, neuron_cfg)]
            cin = head_hidden
        head.append(nn.Linear(cin, num_classes))
        self.head = nn.Sequential(*head)
        if source_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)


class SpikingResNet(SpikingStageModel, ResNet):
    """ResNet with LIF neurons; see ``SpikingStageModel`` for shapes and modes."""

    def __init__(self, *args, **kw):
        ResNet.__init__(self, *args, spiking=True, **kw)


def _widths(base, n):
    return [base * 2 ** i for i in range(n)]


def resnet18_cifar(spiking, num_classes=10, width=64, in_chans=3, **kw):
    cls = SpikingResNet if spiking else ResNet
    return cls([2, 2, 2, 2], _widths(width, 4), [1, 2, 2, 2], width, num_classes, in_chans, **kw)


def resnet34_cifar(spiking, num_classes=10, width=64, in_chans=3, **kw):
    cls = SpikingResNet if spiking else ResNet
    return cls([3, 4, 6, 3], _widths(width, 4), [1, 2, 2, 2], width, num_classes, in_chans, **kw)


def resnet19_cifar(spiking, num_classes=10, width=128, in_chans=3, **kw):
    cls = SpikingResNet if spiking else ResNet
    return cls([3, 3, 2], _widths(width, 3), [1, 2, 2], width, num_classes, in_chans,
               head_hidden=2 * width, **kw)


def resnet34_imagenet(spiking, block, num_classes=1000, width=64, in_chans=3, **kw):
    cls = SpikingResNet if spiking else ResNet
    return cls([3, 4, 6, 3], _widths(width, 4), [1, 2, 2, 2], width, num_classes, in_chans,
               block=block, stem="imagenet", source_init=True, **kw)
