"""The training methods as data: what each needs and does, read by validation, the learner, the loss,
evaluation, the benchmark and the plan. Adding a method is one entry here plus its loss terms.
"""
from __future__ import annotations

from dataclasses import dataclass

PROPAGATIONS = ("ann", "bptt", "rate")   # an ANN's backprop, BPTT through time, RateBP's rate pass


@dataclass(frozen=True)
class Method:
    """``trains``: "teacher" (the run trains an ANN) or "student" (an SNN); ``teacher``: needs a trained
    teacher; ``propagation``: how the trained network's gradient is computed; ``hybrids``: builds the
    hybrids M_k and their alignment modules; ``terms``: the loss terms it uses (``losses.LossConfig``)."""

    name: str
    trains: str
    teacher: bool
    propagation: str
    hybrids: bool
    terms: tuple[str, ...]
    title: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ann", "teacher", False, "ann", False, ("ce",), "ANN teacher"),
    Method("bptt", "student", False, "bptt", False, ("ce",), "BPTT"),
    Method("bptt_kd", "student", True, "bptt", False, ("ce", "kd"), "BPTT + KD"),
    Method("ratebp", "student", False, "rate", False, ("ce",), "RateBP"),
    Method("kd", "student", True, "rate", False, ("ce", "kd"), "Vanilla KD"),
    Method("hybrid", "student", True, "rate", True, ("ce", "kd", "hybrid_ce", "hybrid_kd"), "Ours"),
)}


def get_method(name: str) -> Method:
    """The method called ``name``, or an error listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def methods_where(**facts) -> tuple[str, ...]:
    """Names of the methods with these facts, e.g. ``methods_where(trains="student", teacher=True)``."""
    return tuple(n for n, m in METHODS.items() if all(getattr(m, k) == v for k, v in facts.items()))


# benchmark variants of a training method (Fig. 4): the forward pass alone, BPTT with recomputed blocks
BENCH_VARIANTS = {"forward_only": "bptt", "bptt_ckpt": "bptt"}
# every student method, with the variants next to the method they vary
BENCH_METHODS = ("forward_only", "bptt", "bptt_ckpt") + tuple(m for m in methods_where(trains="student") if m != "bptt")
