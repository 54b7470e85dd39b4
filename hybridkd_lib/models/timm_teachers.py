"""timm teachers (ImageNet ResNet-34/50, ViT-S/16) on the stage protocol.

No model hub is reachable here: pretrained weights come only from a local
checkpoint (``checkpoint_path``); ``pretrained=True`` without one is an error.
ViT stages are equal groups of encoder blocks; its tokens are token-major
``[B, 1 + N, C]`` (class token first), see ``hybrid.TokenAlign`` for how a
student's ``[B, D, N]`` tokens are matched to them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hybridkd_lib.models.stages import StageModel


class _Call(nn.Module):
    """Wrap a function of the teacher as a module (keeps the stage protocol uniform)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def load_state_dict_file(path: str | Path) -> dict:
    """Weights from a ``.safetensors``/``.pt``/``.pth`` file, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"teacher checkpoint {str(path)!r} is not a readable torch file: {exc}") from exc
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def _timm(name, num_classes, pretrained, checkpoint_path, **kw):
    import timm

    if pretrained and not checkpoint_path:
        raise ValueError(f"pretrained weights for {name!r} need a local checkpoint: pass "
                         f"checkpoint_path=... (no model hub is reachable from this machine)")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    if checkpoint_path:
        model.load_state_dict(load_state_dict_file(checkpoint_path))
    return model


class TimmResNet(StageModel):
    def __init__(self, name, num_classes=1000, pretrained=False, checkpoint_path=None, **kw):
        super().__init__()
        m = _timm(name, num_classes, pretrained, checkpoint_path, **kw)
        self.net = m
        self.encoder = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
        self.stem = nn.Identity()
        self.stages = nn.ModuleList([m.layer1, m.layer2, m.layer3, m.layer4])
        self.head = _Call(lambda h: m.forward_head(h))
        self.feature_info = [{"num_chs": f["num_chs"], "reduction": f["reduction"], "kind": "map"}
                             for f in m.feature_info[1:]]


class TimmViT(StageModel):
    def __init__(self, name, num_classes=1000, pretrained=False, checkpoint_path=None,
                 num_stages=4, **kw):
        super().__init__()
        m = _timm(name, num_classes, pretrained, checkpoint_path, **kw)
        depth = len(m.blocks)
        if depth % num_stages:
            raise ValueError(f"num_stages={num_stages} must divide the ViT depth {depth}")
        g = depth // num_stages
        self.net = m
        self.encoder = _Call(lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))))
        self.stem = nn.Identity()
        self.stages = nn.ModuleList(nn.Sequential(*m.blocks[i * g:(i + 1) * g]) for i in range(num_stages))
        self.head = _Call(lambda h: m.forward_head(m.norm(h)))
        grid = m.patch_embed.grid_size
        self.feature_info = [{"num_chs": m.embed_dim, "reduction": m.patch_embed.patch_size[0],
                              "kind": "tokens", "grid": tuple(grid), "prefix_tokens": m.num_prefix_tokens}
                             for _ in range(num_stages)]
