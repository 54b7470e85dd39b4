"""The stage protocol shared by every student and teacher.

A model is ``encoder -> stem -> stages[0..K-1] -> head``. ``feature_info[k]``
gives the channels (``num_chs``), spatial reduction and kind (``"map"`` for
``[B, C, H, W]`` maps, ``"tokens"`` for ``[B, C, N]`` tokens) of stage k's output.
Hybrid block-wise replacement needs exactly two things from a model:
``forward_intermediates(x)`` (the output of every stage, a list, as timm's method of that name) and
``forward_from(k, feature)`` (run stages k..K-1 and the head on a feature).
"""
from __future__ import annotations

import torch
from torch import nn


class StageModel(nn.Module):
    """ANN form of the protocol: ``[B, C, H, W]`` -> logits ``[B, classes]``."""

    spiking = False
    encoder: nn.Module
    stem: nn.Module
    stages: nn.ModuleList
    head: nn.Module
    feature_info: list[dict]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.encoder(x))

    def forward_stages(self, h: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for stage in self.stages[start:end]:
            h = stage(h)
        return h

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stages(self.forward_stem(x)))

    def forward_intermediates(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages 0..upto-1 (all stages by default)."""
        h, feats = self.forward_stem(x), []
        for stage in self.stages[:upto]:
            h = stage(h)
            feats.append(h)
        return feats

    def forward_from(self, k: int, feature: torch.Tensor) -> torch.Tensor:
        """Run stages k..K-1 and the head on ``feature`` (shape of stage k's input)."""
        return self.forward_head(self.forward_stages(feature, start=k))


class SpikingStageModel(StageModel):
    """Spiking form: static ``[B, C, H, W]`` or sequence ``[T, B, C, H, W]`` input.

    ``mode`` (set by ``ratebp.set_mode``) is ``bptt``/``spike`` (temporal tensors
    ``[T, B, ...]`` inside, logits averaged over T) or ``rate`` (one batch-B pass on
    the time-averaged input). A static image is encoded once (``encoder`` = the
    first conv + BN, identical at every step) and repeated over ``T``.
    """

    spiking = True
    mode = "bptt"
    input_ndim = 4  # a static batch [B, C, H, W]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.dim() == self.input_ndim + 1
        if self.mode == "rate":
            return self.stem(self.encoder(x.mean(0) if sequence else x))
        h = self.encoder(x)
        if not sequence:
            h = h.unsqueeze(0).expand(self.T, *h.shape)
        return self.stem(h)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        y = self.head(h)
        return y if self.mode == "rate" else y.mean(0)

    def rate_feature(self, h: torch.Tensor) -> torch.Tensor:
        """A stage output as a rate ``[B, ...]``: the rate pass value, or the spike mean over T."""
        return h if self.mode == "rate" else h.mean(0)
