"""Registered students and teachers (see the README's model table)."""
from __future__ import annotations

from hybridkd_lib.models.registry import register_model
from hybridkd_lib.models.resnet import resnet18_cifar, resnet19_cifar, resnet34_cifar, resnet34_imagenet
from hybridkd_lib.models.spikingformer import Spikingformer
from hybridkd_lib.models.timm_teachers import TimmResNet, TimmViT

SPIKING_RESNET = ("width", "in_chans", "T", "neuron_cfg")
CIFAR_RESNET = ("width", "in_chans")


# ---------------------------------------------------------------- spiking students
@register_model("student", SPIKING_RESNET)
def spiking_resnet18(num_classes=10, **kw):
    """ResNet-18 (CIFAR layout), LIF; RateBP reference ``resnet.py``."""
    return resnet18_cifar(True, num_classes, **kw)


@register_model("student", SPIKING_RESNET)
def spiking_resnet19(num_classes=10, **kw):
    """ResNet-19 (CIFAR/DVS: ``in_chans=2``), LIF; RateBP reference ``resnet.py``."""
    return resnet19_cifar(True, num_classes, **kw)


@register_model("student", SPIKING_RESNET)
def sew_resnet34(num_classes=1000, **kw):
    """SEW-ResNet-34 (ImageNet), ADD connection; RateBP reference ``sew_resnet.py``."""
    return resnet34_imagenet(True, "sew", num_classes, **kw)


@register_model("student", SPIKING_RESNET)
def preact_resnet34(num_classes=1000, **kw):
    """Pre-activation spiking ResNet-34 (ImageNet); RateBP reference ``preact_resnet.py``."""
    return resnet34_imagenet(True, "preact", num_classes, **kw)


# ---------------------------------------------------------------- ANN teachers
@register_model("teacher", CIFAR_RESNET)
def cifar_resnet18(num_classes=10, **kw):
    """ANN ResNet-18 with the student's CIFAR stem/stage layout (ReLU)."""
    return resnet18_cifar(False, num_classes, **kw)


@register_model("teacher", CIFAR_RESNET)
def cifar_resnet34(num_classes=10, **kw):
    """ANN ResNet-34, CIFAR layout (ReLU)."""
    return resnet34_cifar(False, num_classes, **kw)


@register_model("teacher", CIFAR_RESNET)
def cifar_resnet19(num_classes=10, **kw):
    """ANN ResNet-19, CIFAR/DVS layout (ReLU)."""
    return resnet19_cifar(False, num_classes, **kw)


@register_model("student", ("dim", "depth", "heads", "mlp_ratio", "in_chans", "T", "neuron_cfg"))
def spikingformer_4_256(num_classes=10, **kw):
    """Spikingformer-4-256 (CIFAR, 32x32 -> 8x8 tokens); zhouchenlin2096/Spikingformer."""
    kw.setdefault("dim", 256)
    kw.setdefault("depth", 4)
    return Spikingformer(num_classes, **kw)


@register_model("teacher")
def resnet34(num_classes=1000, **kw):
    """timm ResNet-34 (ImageNet); weights only from a local ``checkpoint_path``."""
    return TimmResNet("resnet34", num_classes, **kw)


@register_model("teacher")
def resnet50(num_classes=1000, **kw):
    """timm ResNet-50 (ImageNet); weights only from a local ``checkpoint_path``."""
    return TimmResNet("resnet50", num_classes, **kw)


@register_model("teacher")
def vit_small_patch16_224(num_classes=1000, **kw):
    """timm ViT-S/16; 4 stages of 3 blocks. Smaller variants via timm kwargs
    (e.g. ``img_size=32, patch_size=4, depth=4, embed_dim=128, num_heads=2``)."""
    return TimmViT("vit_small_patch16_224", num_classes, **kw)
