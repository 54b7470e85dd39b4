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
    """Weights from a checkpoint file through timm's own loader (``weights_only=True``): safetensors
    or torch files; ``state_dict_ema``/``model_ema``/``state_dict``/``model`` keys; ``module.`` prefixes."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} not found")
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:
        raise ValueError(f"teacher checkpoint {str(path)!r} is not a readable torch/safetensors file: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"teacher checkpoint {str(path)!r} holds no state dict of tensors")
    return state


def check_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """One-line error naming missing/unexpected keys and the first shape mismatch (e.g. another
    architecture, width or number of classes) instead of PyTorch's key dump."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    few = lambda keys: ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
    parts = []
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{k} has shape {list(got)} in the checkpoint, the model expects {list(want)}"
                     + (f" (+{len(shapes) - 1} more mismatches)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    raise ValueError(f"checkpoint {source!r} does not fit {type(model).__name__}: " + "; ".join(parts))


def load_checked(model: nn.Module, path: str | Path) -> nn.Module:
    state = load_state_dict_file(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model


def _timm(name, num_classes, pretrained, checkpoint_path, init_checkpoint=None, **kw):
    """A timm model. ``checkpoint_path``: its own trained weights (every key must fit);
    ``init_checkpoint``: weights to start fine-tuning from (e.g. ImageNet ViT-S/16 for a
    CIFAR teacher), loaded by timm's pretrained path, which drops a classifier of
    another size and resamples position embeddings to ``img_size``."""
    import timm

    if pretrained and not (checkpoint_path or init_checkpoint):
        raise ValueError(f"pretrained weights for {name!r} need a local checkpoint: pass "
                         f"checkpoint_path=... (no model hub is reachable from this machine)")
    if init_checkpoint:
        if not Path(init_checkpoint).is_file():
            raise FileNotFoundError(f"init checkpoint {str(init_checkpoint)!r} for {name!r} not found")
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": str(init_checkpoint)}, **kw)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    if checkpoint_path:
        load_checked(model, checkpoint_path)
    return model


class TimmResNet(StageModel):
    def __init__(self, name, num_classes=1000, pretrained=False, checkpoint_path=None, init_checkpoint=None, **kw):
        super().__init__()
        m = _timm(name, num_classes, pretrained, checkpoint_path, init_checkpoint, **kw)
        self.net = m
        self.encoder = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
        self.stem = nn.Identity()
        self.stages = nn.ModuleList([m.layer1, m.layer2, m.layer3, m.layer4])
        self.head = _Call(lambda h: m.forward_head(h))
        self.feature_info = [{"num_chs": f["num_chs"], "reduction": f["reduction"], "kind": "map"}
                             for f in m.feature_info[1:]]


class TimmViT(StageModel):
    def __init__(self, name, num_classes=1000, pretrained=False, checkpoint_path=None, init_checkpoint=None,
                 num_stages=4, **kw):
        super().__init__()
        m = _timm(name, num_classes, pretrained, checkpoint_path, init_checkpoint, **kw)
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
