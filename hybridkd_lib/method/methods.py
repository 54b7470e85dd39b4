"""The training methods, each one registered object (``Method``): what it needs (a trained teacher,
the hybrids M_k and their alignment modules A_k, the stage features), how the trained network's
gradient propagates (an ANN's backprop, BPTT, RateBP's rate pass), and its named loss terms,
computed from one step's outputs (``losses.StepOutputs``).

This module is the only place that reads those facts to decide what a step does. A method says what a
run builds (``networks``, ``distiller``); the learner (``training.learner``) builds and owns those modules,
steps through ``Method.step`` and predicts through ``Method.predict``; validation, the bench, the plan
and the report read the registry (``get_method``, ``methods_where``, ``bench_methods``).

A new method is one object, from any file (``--plugin FILE_OR_MODULE``)::

    @dataclass(frozen=True)
    class Hint(Method):                      # e.g. FitNets: A_k(r_k) regresses the teacher's stage j_k
        def loss_terms(self, out, cfg):
            return {"ce": ..., "hint": ...}  # named 0-dim tensors

    register_method(Hint("hint", trains="student", propagation="rate", teacher=True, aligns=True,
                         features=True, terms=("ce", "hint"), title="FitNets hint"))

Registration refuses a combination nothing implements (e.g. hybrids with BPTT).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hybridkd_lib.method.losses import TERMS, StepOutputs

if TYPE_CHECKING:   # this module imports no torch (the command line's --help reads it)
    import torch
    from torch import nn

ROLES = ("teacher", "student")          # what a run trains: an ANN teacher or a spiking student
PROPAGATIONS = ("ann", "bptt", "rate")  # an ANN's backprop, BPTT through time, RateBP's rate pass


@dataclass(frozen=True)
class Method:
    """``trains``: ``"teacher"`` (the run trains an ANN) or ``"student"`` (an SNN); ``propagation``: how the
    trained network's gradient is computed (``PROPAGATIONS``); ``teacher``: needs a trained teacher;
    ``hybrids``: builds the hybrids M_k (implies ``aligns``); ``aligns``: builds the alignment modules A_k
    (trained with the student); ``features``: the step's outputs carry the stage features; ``terms``: the
    names of its loss terms (the built-in ones are ``losses.TERMS``; a subclass computing its own overrides
    ``loss_terms``)."""

    name: str
    trains: str
    propagation: str
    teacher: bool = False
    hybrids: bool = False
    aligns: bool = False
    features: bool = False
    terms: tuple[str, ...] = ("ce",)
    title: str = ""

    def __post_init__(self):
        if self.hybrids and not self.aligns:
            object.__setattr__(self, "aligns", True)
        _check_combination(self)

    # ---------------------------------------------------------------- what the run builds
    @property
    def networks(self) -> tuple[str, ...]:
        """The networks a run of this method builds: ``("teacher",)``, ``("student",)`` or both."""
        return ("teacher",) if self.trains == "teacher" else ("student",) + (("teacher",) if self.teacher else ())

    def distiller(self, student: nn.Module | None, teacher: nn.Module | None, input_shape: tuple,
                  teacher_input_size: int | None = None):
        """The ``HybridDistiller`` a student run with a teacher steps through (with the alignment modules A_k
        where ``aligns``), or None; ``input_shape`` is one sample's ``[C, H, W]``."""
        from hybridkd_lib.method.hybrid import HybridDistiller

        if not self.teacher or student is None:
            return None
        return HybridDistiller(student, teacher, input_shape, teacher_input_size, aligns=self.aligns)

    def num_hybrids(self, learner: nn.Module) -> int:
        """How many hybrids M_k a run of this method evaluates."""
        return learner.distiller.num_hybrids if self.hybrids else 0

    def uses_spike_pass(self, T: int) -> bool:
        """True where a step runs RateBP's graph-free spike pass (not BPTT, an ANN, or RateBP at T=1, which takes
        BPTT's single pass: ``ratebp.rate_is_bptt``)."""
        from hybridkd_lib.snn import ratebp

        return self.propagation == "rate" and not ratebp.rate_is_bptt(T)

    def has_unused_parameters(self, loss_cfg) -> bool:
        """True where some trained parameter gets no gradient (A_k whose every term is switched off): DDP must
        then look for unused parameters. A term other than ``ce``/``kd`` is taken to use A_k."""
        return self.aligns and not any(t not in ("ce", "kd") and getattr(loss_cfg, t, 1.0) for t in self.terms)

    # ---------------------------------------------------------------- one step
    def outputs(self, learner: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutputs:
        """The step's forward, with the graph its propagation needs; ``x`` ``[B, C, H, W]`` or
        ``[T, B, C, H, W]``. The teacher's graph-free forward runs where it adds least to the peak: before
        BPTT's graph is built, after RateBP's spike pass (whose ``[T, B, ...]`` maps are the peak)."""
        from hybridkd_lib.snn import ratebp
        from hybridkd_lib.method.hybrid import teacher_input

        if self.propagation == "ann":
            return StepOutputs(y, learner.model(teacher_input(x, learner.teacher_input_size)), learner=learner)
        single_pass = not self.uses_spike_pass(learner.T)   # BPTT; RateBP at T=1
        teacher = None
        if self.teacher and single_pass:
            teacher = self._teacher_outputs(learner, x)
        if single_pass:   # BPTT; RateBP at T=1, whose rate pass gives BPTT's gradients (ratebp.rate_is_bptt)
            y_s, y_m, feats = self._student_outputs(learner, x)
        else:   # RateBP: the spike pass, then the rate pass (with hybrids: the teacher suffixes on its features)
            y_s, y_m, feats = ratebp.rate_forward(learner.student, x, fn=lambda _, xx: self._student_outputs(learner, xx),
                                                  value=learner.rate_value, between_passes=learner.between_passes)
        if self.teacher and not single_pass:
            teacher = self._teacher_outputs(learner, x)
        y_a, t_feats = teacher if teacher is not None else (None, [])
        return StepOutputs(y, y_s, y_a, list(y_m), list(feats), list(t_feats), learner)

    def _student_outputs(self, learner, x):
        """``(logits, hybrid logits, rate features)`` of the student in its current mode."""
        if self.hybrids:
            return learner.distiller.forward_features(x)
        if self.features:
            feats = learner.student.forward_intermediates(x)
            return learner.student.forward_head(feats[-1]), [], [learner.student.rate_feature(f) for f in feats]
        return learner.student(x), [], []

    def _teacher_outputs(self, learner, x):
        """``(teacher logits, teacher stage features or [])``, no graph."""
        if self.features:
            return learner.distiller.teacher_logits_and_features(x)
        return learner.distiller.teacher_logits(x), []

    def loss_terms(self, out: StepOutputs, loss_cfg) -> dict[str, torch.Tensor]:
        """The named loss terms (0-dim tensors) of ``out``; a term switched off (weight 0) is left out."""
        terms = {name: TERMS[name].compute(out, loss_cfg) for name in self.terms}
        return {name: value for name, value in terms.items() if value is not None}

    def loss(self, out: StepOutputs, loss_cfg) -> tuple[torch.Tensor, dict]:
        """The summed loss and its parts (detached 0-dim tensors: reading them is a host sync)."""
        parts = self.loss_terms(out, loss_cfg)
        if not parts:
            raise ValueError(f"every loss term of method {self.name!r} is switched off")
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    def step(self, learner: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """``(loss, parts, logits)`` of one training step: ``outputs``, then ``loss`` (RateBP: the reference's
        1/T gradient scale where ``ratebp_grad_scale``)."""
        from hybridkd_lib.snn import ratebp

        out = self.outputs(learner, x, y)
        loss, parts = self.loss(out, learner.loss_cfg)
        if self.propagation == "rate" and learner.loss_cfg.ratebp_grad_scale:
            loss = ratebp.scale_gradient(loss, learner.T)
        return loss, parts, out.logits

    def predict(self, learner: nn.Module, x: torch.Tensor, with_teacher: bool = True):
        """Inference logits ``(y_S, [y_M0, ...], y_A or None)`` (a teacher run: the ANN's as ``y_S``)."""
        from hybridkd_lib.method.hybrid import teacher_input

        if self.trains == "teacher":
            return learner.model(teacher_input(x, learner.teacher_input_size)), [], None
        y_s, y_m = learner.distiller(x) if self.hybrids else (learner.model(x), [])
        y_a = learner.distiller.teacher_logits(x) if self.teacher and with_teacher else None
        return y_s, y_m, y_a

    # ---------------------------------------------------------------- what a run reports
    def metric_names(self, learner: nn.Module, with_teacher: bool = True) -> tuple[str, ...]:
        """The test accuracies a run reports, each the top-1 of one network's logits: ``top1`` (the trained
        network), ``teacher_top1`` (a student run's teacher, where ``with_teacher``), ``hybrid_top1_M{k}``."""
        teacher = ("teacher_top1",) if self.teacher and with_teacher else ()
        return ("top1",) + teacher + tuple(f"hybrid_top1_M{k}" for k in range(self.num_hybrids(learner)))

    def named_predictions(self, learner: nn.Module, x: torch.Tensor, with_teacher: bool = True) -> dict:
        """``predict``'s logits ``[B, classes]`` under their ``metric_names``."""
        y_s, y_m, y_a = self.predict(learner, x, with_teacher)
        return dict(zip(self.metric_names(learner, with_teacher), [y_s, *([y_a] if y_a is not None else []), *y_m]))

    def result_fields(self, metrics: dict) -> dict:
        """``teacher_top1`` (a teacher run's own ``top1``; None without a teacher) and the list ``hybrid_top1``
        of a run's final ``metrics``, as ``result.json`` records them."""
        own = metrics["top1"] if self.trains == "teacher" else None
        return {"teacher_top1": metrics.get("teacher_top1", own),
                "hybrid_top1": [v for k, v in metrics.items() if k.startswith("hybrid_top1_M")]}

    def inference_costs(self, learner: nn.Module, batches) -> dict:
        """What the trained network costs at inference: ``spikecosts.spike_costs`` of the student (with its
        teacher's MACs where the run has a teacher; compute only) and, under ``memory_aware``,
        ``spikecosts.memory_aware_costs`` (compute and memory, spikingjelly's estimator); for a teacher run, the
        ANN's ``ann_macs_per_image``, its energy and its memory-aware estimate; ``batches``: input tensors
        ``[B, C, H, W]`` or ``[T, B, C, H, W]`` on the device."""
        from dataclasses import asdict
        from itertools import chain

        from hybridkd_lib.method.hybrid import teacher_input
        from hybridkd_lib.snn.spikecosts import (MEMORY_AWARE_IMAGES, EnergyModel, ann_macs, memory_aware_costs,
                                                 memory_aware_energy, spike_costs)

        energy, batches = EnergyModel(), iter(batches)
        first = next(batches, None)
        if first is None:
            raise ValueError("inference_costs was given no images")
        if self.trains == "teacher":   # an ANN run: what the teacher costs
            seen = teacher_input(first, learner.teacher_input_size)
            macs = ann_macs(learner.model, seen)
            return {"energy_model": asdict(energy), "ann_macs_per_image": macs,
                    "ann_energy_uj_per_image": energy.microjoules(0, macs),
                    "memory_aware": {"ann": memory_aware_energy(learner.model, seen[:MEMORY_AWARE_IMAGES])}}
        seen = teacher_input(first, learner.teacher_input_size) if self.teacher else None
        t_macs = ann_macs(learner.teacher, seen) if self.teacher else None
        costs = spike_costs(learner.student, chain([first], batches), energy, t_macs)
        costs["memory_aware"] = memory_aware_costs(learner.student, first, learner.teacher if self.teacher else None,
                                                   seen, energy)
        return costs


def _check_combination(m: Method) -> None:
    """Refuse a method nothing implements, naming the fact that does not fit."""
    def refuse(why):
        raise ValueError(f"method {m.name!r} cannot be registered: {why}")

    if not isinstance(m.name, str) or not m.name.isidentifier():
        refuse(f"its name must be an identifier (letters, digits, _), not {m.name!r}")
    if m.trains not in ROLES:
        refuse(f"trains={m.trains!r}; valid: {', '.join(ROLES)}")
    if m.propagation not in PROPAGATIONS:
        refuse(f"propagation={m.propagation!r}; valid: {', '.join(PROPAGATIONS)}")
    if (m.trains == "teacher") != (m.propagation == "ann"):
        refuse("a teacher (ANN) run propagates as an ANN (propagation='ann') and a student run does not")
    if m.trains == "teacher" and (m.teacher or m.aligns or m.features):
        refuse("a teacher run uses no teacher, alignment modules or stage features")
    if m.aligns and not m.teacher:
        refuse("alignment modules (aligns/hybrids) map to a teacher's features: it needs teacher=True")
    if m.hybrids and m.propagation != "rate":
        refuse(f"hybrids are implemented with RateBP's rate pass only (propagation='rate'), not {m.propagation!r}")
    if not m.terms or not all(isinstance(t, str) for t in m.terms):
        refuse(f"terms={m.terms!r}: a tuple of loss term names")
    if type(m).loss_terms is Method.loss_terms:
        unknown = [t for t in m.terms if t not in TERMS]
        if unknown:
            refuse(f"unknown loss term(s) {unknown}; built-in: {', '.join(TERMS)} (or override loss_terms)")
        for t in m.terms:
            missing = [need for need in TERMS[t].needs if not getattr(m, need)]
            if missing:
                refuse(f"loss term {t!r} needs {' and '.join(f'{n}=True' for n in missing)}")


# benchmark variants of a training method (Fig. 4): the forward pass alone, the dense products of a RateBP
# step timed alone (``floor``), BPTT with recomputed blocks, BPTT under spikingjelly's memopt
BENCH_VARIANTS = {"forward_only": "bptt", "conv_floor": "ratebp", "bptt_ckpt": "bptt", "bptt_memopt": "bptt"}
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (built-in or from a plug-in) and return it; a name taken by another
    method is an error."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method expects a hybridkd_lib.method.methods.Method, got {type(method).__name__}")
    if method.name in BENCH_VARIANTS:
        raise ValueError(f"method {method.name!r} cannot be registered: it is the name of bench's variant of "
                         f"{BENCH_VARIANTS[method.name]!r}; give the method a name of its own")
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is already registered ({METHODS[method.name].title or 'built in'})")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a plug-in's method from the registry (a built-in one stays)."""
    if name in BUILT_IN:
        raise ValueError(f"method {name!r} is built in and stays registered")
    METHODS.pop(name, None)


for _m in (
    Method("ann", trains="teacher", propagation="ann", title="ANN teacher"),
    Method("bptt", trains="student", propagation="bptt", title="BPTT"),
    Method("bptt_kd", trains="student", propagation="bptt", teacher=True, terms=("ce", "kd"), title="BPTT + KD"),
    Method("ratebp", trains="student", propagation="rate", title="RateBP"),
    Method("kd", trains="student", propagation="rate", teacher=True, terms=("ce", "kd"), title="Vanilla KD"),
    Method("hybrid", trains="student", propagation="rate", teacher=True, hybrids=True,
           terms=("ce", "kd", "hybrid_ce", "hybrid_kd"), title="Ours"),
):
    register_method(_m)
BUILT_IN = tuple(METHODS)   # the paper's methods (the plan and the book use these)


def get_method(name: str) -> Method:
    """The method called ``name``, or an error listing the valid ones."""
    from hybridkd_lib.base import plugins

    plugins.load_from_environment()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def methods_where(**facts) -> tuple[str, ...]:
    """Names of the methods with these facts, e.g. ``methods_where(trains="student", teacher=True)``."""
    from hybridkd_lib.base import plugins

    plugins.load_from_environment()
    return tuple(n for n, m in METHODS.items() if all(getattr(m, k) == v for k, v in facts.items()))




def bench_methods(built_in_only: bool = False) -> tuple[str, ...]:
    """What ``bench`` measures: every student method (``built_in_only``: the paper's), with the variants
    next to the method they vary."""
    students = [m for m in methods_where(trains="student") if m != "bptt" and (m in BUILT_IN or not built_in_only)]
    return ("forward_only", "conv_floor", "bptt", "bptt_ckpt", "bptt_memopt") + tuple(students)


BENCH_METHODS = bench_methods(built_in_only=True)   # Fig. 4's methods
