"""The stage protocol shared by every student and teacher.

A model is ``encoder -> stem -> stages[0..K-1] -> head``. ``feature_info[k]``
gives the channels (``num_chs``), spatial reduction and kind (``"map"`` for
``[B, C, H, W]`` maps, ``"tokens"`` for ``[B, C, N]`` tokens) of stage k's output.
Hybrid block-wise replacement needs exactly two things from a model:
``forward_intermediates(x)`` (the output of every stage, a list, as timm's method of that name) and
``forward_from(k, feature)`` (run stages k..K-1 and the head on a feature).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from hybridkd_lib.snn.neurons import NeuronConfig


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
    """The base of every spiking student: static ``[B, C, H, W]`` or sequence ``[T, B, C, H, W]`` input.

    The contract a student keeps (checked when it is built, ``check_student``):

    - ``T`` (int >= 1, timesteps of a static input) and ``neuron_cfg`` (``neurons.NeuronConfig``, the
      LIF settings it was built with), set in ``__init__``; its builder takes ``T`` and ``neuron_cfg``;
    - the stage protocol: ``encoder``, ``stem``, ``stages``, ``head`` and one ``feature_info`` entry per stage;
    - every module whose forward depends on the propagation mode is rate-aware (a class attribute
      ``rate_aware = True``: ``neurons.LIF``, ``layers.RateBatchNorm1d/2d``, ``layers.SpikeMeanValue``);
      ``rate_aware_modules()`` lists them and ``ratebp.set_mode`` switches exactly those. A plain BatchNorm
      inside a student is an error: RateBP's rate pass would normalise it over the batch of rates instead
      of with the spike pass's statistics.

    ``mode`` (set by ``ratebp.set_mode``) is ``bptt``/``spike`` (temporal tensors
    ``[T, B, ...]`` inside, logits averaged over T) or ``rate`` (one batch-B pass on
    the time-averaged input). A static image is encoded once (``encoder`` = the
    first conv + BN, identical at every step) and repeated over ``T``.
    """

    spiking = True
    mode = "bptt"
    input_ndim = 4  # a static batch [B, C, H, W]
    T: int
    neuron_cfg: NeuronConfig

    def __init_subclass__(cls, **kw):
        """Every student class is checked once its own ``__init__`` (the outermost one) has run."""
        super().__init_subclass__(**kw)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__

        def checked_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self).__init__ is checked_init:
                check_student(self)

        checked_init.__doc__, checked_init.__wrapped__ = init.__doc__, init
        cls.__init__ = checked_init

    def rate_aware_modules(self) -> list[nn.Module]:
        """The student itself and every module of it whose forward follows the propagation mode."""
        return [m for m in self.modules() if m is self or getattr(m, "rate_aware", False)]

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


def check_student(model: SpikingStageModel) -> None:
    """The student contract (``SpikingStageModel``), or an error naming what breaks it."""
    from hybridkd_lib.snn.neurons import NeuronConfig

    name = type(model).__name__
    T = getattr(model, "T", None)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"spiking student {name} sets T={T!r}; a student keeps its timesteps as an integer T >= 1")
    if not isinstance(getattr(model, "neuron_cfg", None), NeuronConfig):
        raise ValueError(f"spiking student {name} has no neuron_cfg (a neurons.NeuronConfig, the LIF settings it "
                         f"was built with)")
    missing = [a for a in ("encoder", "stem", "stages", "head") if not isinstance(getattr(model, a, None), nn.Module)]
    if missing:
        raise ValueError(f"spiking student {name} lacks the stage protocol's {', '.join(missing)} (modules)")
    if len(getattr(model, "feature_info", [])) != len(model.stages):
        raise ValueError(f"spiking student {name} has {len(model.stages)} stages but "
                         f"{len(getattr(model, 'feature_info', []))} feature_info entries (one per stage)")
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "rate_aware", False):
            raise ValueError(f"spiking student {name}: module {path!r} is a plain {type(m).__name__}, which RateBP's "
                             f"rate pass would normalise over the batch of rates; use hybridkd_lib.snn.layers."
                             f"RateBatchNorm{'1d' if isinstance(m, nn.BatchNorm1d) else '2d'} (rate-aware)")
