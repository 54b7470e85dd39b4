"""Hybrid block-wise replacement (the paper's method).

With a student of K stages, hybrid ``M_k`` (k = 0..K-2) runs the SNN's encoder,
stem and stages 0..k, takes the rate feature ``r_k`` of stage k (the rate-pass
value, or the spike mean over T at inference), maps it with a learnable
alignment module ``A_k`` to the teacher's feature after its paired stage j_k,
and runs the frozen teacher's stages j_k+1.. and head. ``M_0`` is the most
ANN-like hybrid. The teacher is frozen and in eval mode but differentiable, so
gradients reach ``A_k`` and the SNN prefix; in a RateBP step all of it is one
batch-B graph.

Pairing: student stage k is paired with the last teacher stage whose output has
the same spatial size (maps) or, failing that, with stage
``round((k+1) * K_t / K_s) - 1``; shapes are read off one probe forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridkd_lib.data.datasets import ann_view
from hybridkd_lib.snn.layers import RateBatchNorm2d
from hybridkd_lib.models.stages import StageModel


def teacher_input(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """What the ANN teacher is given: ``datasets.ann_view`` of ``x`` (a frame sequence's mean frame),
    resized to ``size`` x ``size`` when set (e.g. 224 for a ViT-S/16 teacher on 32x32 CIFAR)."""
    x = ann_view(x)
    if size and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class MapAlign(nn.Module):
    """``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``: 1x1 conv + BN, then resize if needed."""

    def __init__(self, c_in, c_out, out_hw):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), RateBatchNorm2d(c_out))
        self.out_hw = tuple(out_hw)

    def forward(self, r):
        y = self.proj(r)
        if tuple(y.shape[-2:]) != self.out_hw:
            y = (F.adaptive_avg_pool2d(y, self.out_hw) if y.shape[-1] > self.out_hw[-1]
                 else F.interpolate(y, size=self.out_hw, mode="bilinear", align_corners=False))
        return y


class TokenAlign(nn.Module):
    """Student tokens ``[B, D_s, N_s]`` (channels first, square grid) -> teacher tokens
    ``[B, P + N_t, D_t]`` (token-major, P prefix/class tokens first).

    Linear D_s -> D_t (+ LayerNorm), bilinear resize of the token grid to the
    teacher's grid (8x8 Spikingformer tokens -> e.g. 14x14 ViT-S/16 tokens at 224),
    and a learnable class token (initialised to zero) in front.
    """

    def __init__(self, d_in, d_out, out_grid, prefix_tokens=1):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out)
        self.out_grid = tuple(out_grid)
        self.prefix = nn.Parameter(torch.zeros(1, prefix_tokens, d_out)) if prefix_tokens else None

    def forward(self, r):
        B, D, N = r.shape
        side = int(round(N ** 0.5))
        y = self.norm(self.proj(r.transpose(1, 2)))          # [B, N, D_t]
        if (side, side) != self.out_grid:
            grid = y.transpose(1, 2).reshape(B, -1, side, side)
            grid = F.interpolate(grid, size=self.out_grid, mode="bilinear", align_corners=False)
            y = grid.flatten(2).transpose(1, 2)
        if self.prefix is not None:
            y = torch.cat([self.prefix.expand(B, -1, -1), y], dim=1)
        return y


def _probe_shapes(model: StageModel, x: torch.Tensor) -> list[tuple]:
    was = model.training
    model.eval()
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        if model.spiking:
            feats = [model.rate_feature(f) for f in feats]
    model.train(was)
    return [tuple(f.shape[1:]) for f in feats]


def pair_stages(student_shapes, teacher_shapes) -> list[int]:
    """Teacher stage index paired with each student stage 0..K_s-2."""
    ks, kt = len(student_shapes), len(teacher_shapes)
    pairs = []
    for k in range(ks - 1):
        same = [j for j, s in enumerate(teacher_shapes[:-1])
                if len(s) == 3 and len(student_shapes[k]) == 3 and s[-2:] == student_shapes[k][-2:]]
        j = same[-1] if same else min(max(round((k + 1) * kt / ks) - 1, 0), kt - 2)
        pairs.append(j)
    return pairs


class HybridDistiller(nn.Module):
    """Student SNN + frozen teacher + alignment modules ``A_k``; builds every ``M_k``.

    ``forward(x)`` returns ``(y_S, [y_M0, ..., y_M{K-2}])`` in the student's current
    mode; ``teacher_logits(x)`` the teacher's (no graph). ``hybrid_logits(x, k)`` runs one M_k.
    ``aligns=False``: the student and the frozen teacher only (Vanilla KD), no ``A_k``.

    Attributes:
        student: the SNN student.
        teacher: the frozen teacher.
        pairs: per student stage k < K-1, the index of the teacher stage it meets (``pair_stages``): M_k runs
            the teacher from stage ``pairs[k] + 1`` on.
        aligns: the alignment modules A_0, ..., A_{K-2} (an ``nn.ModuleList``; empty with ``aligns=False``).
        num_hybrids: the number of hybrids M_k (``len(aligns)``).
    """

    def __init__(self, student: StageModel, teacher: StageModel, input_shape, teacher_input_size=None,
                 aligns: bool = True):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher_input_size = teacher_input_size
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        x = torch.zeros(1, *input_shape)
        s_shapes = _probe_shapes(student, x)
        t_shapes = _probe_shapes(teacher, self._teacher_input(x))
        self.pairs = pair_stages(s_shapes, t_shapes)
        modules = []
        for k, j in enumerate(self.pairs if aligns else []):
            s, t = s_shapes[k], t_shapes[j]
            if teacher.feature_info[j]["kind"] == "tokens":
                info = teacher.feature_info[j]
                modules.append(TokenAlign(s[0], t[-1], info["grid"], info.get("prefix_tokens", 1)))
            else:
                modules.append(MapAlign(s[0], t[0], t[-2:]))
        self.aligns = nn.ModuleList(modules)

    @property
    def num_hybrids(self) -> int:
        """The number of hybrids M_k: one per alignment module (K-1 for K student stages; 0 without A_k)."""
        return len(self.aligns)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BN statistics and dropout stay in inference form
        return self

    def _teacher_input(self, x):
        return teacher_input(x, self.teacher_input_size)

    def teacher_logits(self, x):
        with torch.no_grad():
            return self.teacher(self._teacher_input(x))

    def hybrid_from_feature(self, k: int, feature: torch.Tensor) -> torch.Tensor:
        """``M_k``'s logits from the student's stage-k output (temporal or rate)."""
        r = self.student.rate_feature(feature)
        return self.teacher.forward_from(self.pairs[k] + 1, self.aligns[k](r))

    def teacher_logits_and_features(self, x):
        """The teacher's logits and its stage outputs (no graph)."""
        with torch.no_grad():
            feats = self.teacher.forward_intermediates(self._teacher_input(x))
            return self.teacher.forward_head(feats[-1]), feats

    def forward_features(self, x, rates: bool = True):
        """``(y_S, [y_M0, ...], [r_0, ..., r_{K-1}])``: ``forward``'s logits and the student's stage outputs
        as rates ``[B, ...]`` (``rates=False``: ``[]``)."""
        feats = self.student.forward_intermediates(x)
        y_s = self.student.forward_head(feats[-1])
        y_m = [self.hybrid_from_feature(k, feats[k]) for k in range(self.num_hybrids)]
        return y_s, y_m, [self.student.rate_feature(f) for f in feats] if rates else []

    def forward(self, x):
        y_s, y_m, _ = self.forward_features(x, rates=False)
        return y_s, y_m

    def hybrid_logits(self, x, k: int):
        feats = self.student.forward_intermediates(x, upto=k + 1)
        return self.hybrid_from_feature(k, feats[k])
