"""Registered students and teachers (see the README's model table)."""
from __future__ import annotations

from hybridkd_lib.models.registry import register_model
from hybridkd_lib.models.resnet import resnet18_cifar, resnet19_cifar, resnet34_cifar, resnet34_imagenet
from hybridkd_lib.models.spikingformer import Spikingformer
from hybridkd_lib.models.timm_teachers import TimmResNet, TimmViT

SPIKING_RESNET = ("width", "in_chans", "T", "neuron_cfg")
CIFAR_RESNET = ("width", "in_chans")


# ---------------------------------------------------------------- spiking students
@register_model("student", SPIKING_RESNET, display="ResNet-18", classes=10, small={"width": 8},
                source="RateBP reference model/resnet.py (CIFAR stem, stages [2,2,2,2])")
def spiking_resnet18(num_classes=10, **kw):
    """ResNet-18 (CIFAR layout), LIF; RateBP reference ``resnet.py``."""
    return resnet18_cifar(True, num_classes, **kw)


@register_model("student", SPIKING_RESNET, display="ResNet-19", classes=10, small={"width": 16},
                source="RateBP reference model/resnet.py (stages [3,3,2], 128-wide stem, Linear-LIF-Linear head)")
def spiking_resnet19(num_classes=10, **kw):
    """ResNet-19 (CIFAR/DVS: ``in_chans=2``), LIF; RateBP reference ``resnet.py``."""
    return resnet19_cifar(True, num_classes, **kw)


@register_model("student", SPIKING_RESNET, display="SEW-ResNet-34", classes=1000, small={"width": 8},
                source="RateBP reference model/sew_resnet.py, SEW ADD connection; convs with bias, Kaiming fan_out init")
def sew_resnet34(num_classes=1000, **kw):
    """SEW-ResNet-34 (ImageNet), ADD connection; RateBP reference ``sew_resnet.py``."""
    return resnet34_imagenet(True, "sew", num_classes, **kw)


@register_model("student", SPIKING_RESNET, display="PreAct-ResNet-34", classes=1000, small={"width": 8},
                source="RateBP reference model/preact_resnet.py; real-valued layer4 output to the pool; convs with bias")
def preact_resnet34(num_classes=1000, **kw):
    """Pre-activation spiking ResNet-34 (ImageNet); RateBP reference ``preact_resnet.py``."""
    return resnet34_imagenet(True, "preact", num_classes, **kw)


# ---------------------------------------------------------------- ANN teachers
@register_model("teacher", CIFAR_RESNET, display="ResNet-18", classes=10, small={"width": 8},
                source="the student's CIFAR stem/stage layout, ReLU")
def cifar_resnet18(num_classes=10, **kw):
    """ANN ResNet-18 with the student's CIFAR stem/stage layout (ReLU)."""
    return resnet18_cifar(False, num_classes, **kw)


@register_model("teacher", CIFAR_RESNET, display="ResNet-34", classes=10, small={"width": 8},
                source="CIFAR stem, stages [3,4,6,3], ReLU")
def cifar_resnet34(num_classes=10, **kw):
    """ANN ResNet-34, CIFAR layout (ReLU)."""
    return resnet34_cifar(False, num_classes, **kw)


@register_model("teacher", CIFAR_RESNET, display="ResNet-19", classes=10, small={"width": 16},
                source="the layout of spiking_resnet19, ReLU")
def cifar_resnet19(num_classes=10, **kw):
    """ANN ResNet-19, CIFAR/DVS layout (ReLU)."""
    return resnet19_cifar(False, num_classes, **kw)


@register_model("student", ("dim", "depth", "heads", "mlp_ratio", "in_chans", "T", "neuron_cfg"),
                display="Spikingformer-4-256", classes=10, small={"dim": 64},
                source="zhouchenlin2096/Spikingformer cifar10/model.py (its neurons: tau 2, hard reset, decay_input)")
def spikingformer_4_256(num_classes=10, **kw):
    """Spikingformer-4-256 (CIFAR, 32x32 -> 8x8 tokens); zhouchenlin2096/Spikingformer."""
    kw.setdefault("dim", 256)
    kw.setdefault("depth", 4)
    return Spikingformer(num_classes, **kw)


@register_model("teacher", display="ResNet-34", classes=1000, weights_keyword="checkpoint_path",
                source="timm resnet34; weights from a local checkpoint_path only")
def resnet34(num_classes=1000, **kw):
    """timm ResNet-34 (ImageNet); weights only from a local ``checkpoint_path``."""
    return TimmResNet("resnet34", num_classes, **kw)


@register_model("teacher", display="ResNet-50", classes=1000, weights_keyword="checkpoint_path",
                source="timm resnet50; local checkpoint only")
def resnet50(num_classes=1000, **kw):
    """timm ResNet-50 (ImageNet); weights only from a local ``checkpoint_path``."""
    return TimmResNet("resnet50", num_classes, **kw)


@register_model("teacher", display="ViT-S/16", classes=1000, weights_keyword="checkpoint_path",
                small={"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 64, "num_heads": 2},
                source="timm ViT-S/16, 4 stages of 3 blocks; local checkpoint only")
def vit_small_patch16_224(num_classes=1000, **kw):
    """timm ViT-S/16; 4 stages of 3 blocks. Smaller variants via timm kwargs
    (e.g. ``img_size=32, patch_size=4, depth=4, embed_dim=128, num_heads=2``)."""
    return TimmViT("vit_small_patch16_224", num_classes, **kw)
