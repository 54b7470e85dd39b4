"""Losses of the four methods; every term and weight is a parameter::

    L = ce*CE(y_S, y) + hybrid_ce*sum_k CE(y_Mk, y)
        + kappa^2 * [kd*KL(y_A||y_S) + hybrid_kd*sum_k KL(y_A||y_Mk)]

where ``kappa`` is the KD temperature (``LossConfig.temperature``; the soft targets are ``softmax(y/kappa)``).
Hinton et al. (2015) call it ``T``, a letter this book keeps for the number of timesteps, as it keeps ``tau``
for the membrane time constant; the factor ``kappa^2`` is theirs (soft-target gradients shrink as
``1/kappa^2``). ``hybrid_reduction="mean"``: the two sums over k become means.

Each term is a function of one step's outputs (``StepOutputs``) and the weights, listed once in ``TERMS``
with the method facts it needs; which terms a method uses is its ``terms`` (``hybridkd_lib.method.methods``).
The supplementary states no loss weights, temperature or reduction over k: each is a project choice (the
book's page "What the paper leaves open"). No torch is imported until a term is computed (the command
line's ``--help`` reads this module).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from hybridkd_lib.base.checks import check_keys

if TYPE_CHECKING:
    import torch
    from torch import nn

HYBRID_REDUCTIONS = ("sum", "mean")


@dataclass
class StepOutputs:
    """What one training forward gives a method's loss terms (``B``: batch, ``K``: student stages).

    ``labels`` ``[B]``; ``logits`` ``[B, classes]`` of the trained network (its graph per the method's
    propagation); ``teacher_logits`` ``[B, classes]`` of the frozen teacher (no graph; methods with a
    teacher); ``hybrid_logits``: ``[B, classes]`` of each M_k (methods with hybrids); ``features``: the
    student's K stage outputs as rates ``[B, ...]`` (methods with ``features``); ``teacher_features``:
    the teacher's stage outputs (no graph; ``features`` and a teacher); ``learner``: the learner (its
    ``aligns`` A_k and ``distiller.pairs``, the teacher stage paired with each student stage)."""

    labels: torch.Tensor
    logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    hybrid_logits: list = field(default_factory=list)
    features: list = field(default_factory=list)
    teacher_features: list = field(default_factory=list)
    learner: nn.Module | None = None


@dataclass
class LossConfig:
    """Weights (0 switches a term off) and the KD temperature (kappa).

    Defaults: ``ce=1`` (labels always anchor the SNN); ``kd=1`` and
    ``temperature=4`` (Hinton KD's common CIFAR value; the supplementary states no temperature);
    ``hybrid_ce=1`` and ``hybrid_kd=1`` (each hybrid M_k is trained like the SNN itself,
    so the prefix features serve both the SNN and the teacher's suffix).
    ``hybrid_reduction``: ``"sum"`` or ``"mean"`` of the hybrid terms over k (a project choice).
    ``ratebp_grad_scale``: RateBP reference's 1/T gradient scale of the loss.
    """

    ce: float = 1.0
    kd: float = 1.0
    hybrid_ce: float = 1.0
    hybrid_kd: float = 1.0
    temperature: float = 4.0
    hybrid_reduction: str = "sum"
    ratebp_grad_scale: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def check_loss_options(loss: dict) -> None:
    """Loss options (``--loss`` / the ``loss`` parameter): known keys, weights >= 0, temperature > 0."""
    names = list(LossConfig.__dataclass_fields__)
    if not isinstance(loss, dict):
        raise ValueError(f"loss={loss!r} not allowed: expected a dict of {', '.join(names)}")
    check_keys(loss, names, "loss option")
    for k, v in loss.items():
        if k == "hybrid_reduction":
            if v not in HYBRID_REDUCTIONS:
                raise ValueError(f"loss option hybrid_reduction={v!r} not allowed; valid: {', '.join(HYBRID_REDUCTIONS)}")
        elif k == "ratebp_grad_scale":
            if not isinstance(v, bool):
                raise ValueError(f"loss option ratebp_grad_scale={v!r} not allowed: expected true or false")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "temperature" and v == 0):
            raise ValueError(f"loss option {k}={v!r} not allowed: expected a number "
                             + ("> 0" if k == "temperature" else ">= 0 (0 switches the term off)"))


def kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """``kappa^2 * KL(softmax(y_A/kappa) || softmax(y_S/kappa))``, batch mean, with ``kappa = temperature``
    (the KD temperature)."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def ce_term(out, cfg: LossConfig):
    """``ce * CE(y_S, y)``."""
    import torch.nn.functional as F

    return cfg.ce * F.cross_entropy(out.logits.float(), out.labels) if cfg.ce else None


def kd_term(out, cfg: LossConfig):
    """``kd * kappa^2 KL(y_A || y_S)`` at the KD temperature ``kappa`` (``cfg.temperature``)."""
    return cfg.kd * kd_loss(out.logits, out.teacher_logits, cfg.temperature) if cfg.kd else None


def _per_hybrid(out, cfg: LossConfig) -> float:
    return 1.0 / len(out.hybrid_logits) if cfg.hybrid_reduction == "mean" else 1.0


def hybrid_ce_term(out, cfg: LossConfig):
    """``hybrid_ce * sum_k CE(y_Mk, y)`` (mean over k with ``hybrid_reduction="mean"``)."""
    import torch.nn.functional as F

    if not (cfg.hybrid_ce and len(out.hybrid_logits)):
        return None
    return cfg.hybrid_ce * _per_hybrid(out, cfg) * sum(F.cross_entropy(m.float(), out.labels) for m in out.hybrid_logits)


def hybrid_kd_term(out, cfg: LossConfig):
    """``hybrid_kd * kappa^2 sum_k KL(y_A || y_Mk)`` at the KD temperature ``kappa`` (``cfg.temperature``); mean
    over k with ``hybrid_reduction="mean"``."""
    if not (cfg.hybrid_kd and len(out.hybrid_logits)):
        return None
    return cfg.hybrid_kd * _per_hybrid(out, cfg) * sum(kd_loss(m, out.teacher_logits, cfg.temperature)
                                                       for m in out.hybrid_logits)


@dataclass(frozen=True)
class Term:
    """A built-in loss term: ``compute(out, cfg)`` (a 0-dim tensor, or None where its weight is 0) and the
    method facts it needs (``Method`` attributes that must be true)."""

    compute: Callable
    needs: tuple[str, ...] = ()


TERMS = {"ce": Term(ce_term), "kd": Term(kd_term, ("teacher",)),
         "hybrid_ce": Term(hybrid_ce_term, ("hybrids",)), "hybrid_kd": Term(hybrid_kd_term, ("hybrids",))}
