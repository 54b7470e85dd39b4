"""What a trained network costs at inference: firing rates, synaptic operations and energy.

Counted from the real tensors of inference forwards (eval mode, ``[T, B, ...]`` inside a student) with
forward hooks, so max-pooling, strides, padding and residual adds count what they do:

- every LIF layer: its firing rate (spikes per neuron and timestep), its mean over the images and the spread
  (standard deviation) of the images' own rates;
- every Conv1d/Conv2d/Linear and the attention products (``layers.MatMul``) whose input, as seen in that call,
  is events (0/1 spikes, or the non-negative integer spike counts of a SEW ADD): **accumulates** (ACs), each
  event of value ``c`` adding ``c`` times to every output it reaches (the fan-out through the kernel, its stride
  and padding, counted on the real map: ``sum(conv(events summed over channels, ones kernel)) * C_out/groups``);
- every such layer whose input is not events (the first conv on the image, anything after a real-valued
  path or an average pool): dense **multiply-accumulates** (MACs), ``output elements * fan-in``.

BatchNorm is counted as folded into the convolution before it (no operations of its own, as inference runs
it); LIF updates, adds and pooling are not counted, as the usual SNN energy figures count them.
A static image is encoded once (the student's ``encoder``: identical at every step), so its MACs count once.

Checked against the field's counter (``tests/test_opcounter.py``): on every registered student, spikingjelly's
``SynOpCounter`` and ``MACCounter`` give these counts layer by layer, with one difference by design: a SEW ADD's
integer spike counts are dense MACs there (its spike test needs 0/1) and accumulates here (an event of value
``c`` adds ``c`` times), so a SEW student's synaptic operations are larger here and its MACs smaller. The hooks
stay ours because they also give each LIF layer's firing rate and each layer's input kind.

``ann_macs_per_image``: the same network with one timestep, all dense, the ANN it would be.
Energy: ``e_ac * ACs + e_mac * MACs`` with ``EnergyModel``'s per-operation figures: **compute only**, an
estimate, not a chip measurement. Memory accesses (an 8 kB SRAM read of 64 bits costs about 10 pJ at 45 nm,
more than a 32-bit float add), neuron state updates and spike routing are not in it, and counting them can
shrink or reverse an SNN's advantage (Dampfhoffer et al., IEEE TETCI 2023; Lemaire et al., 2022):
``memory_aware_energy`` is the estimate with weight and neuron-state memory counted.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hybridkd_lib.snn.layers import MatMul
from hybridkd_lib.snn.neurons import LIF


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in picojoules. Defaults: 45 nm CMOS, 32-bit floating point, Horowitz (ISSCC 2014,
    "Computing's energy problem"): an add 0.9 pJ (an accumulate), a multiply 3.7 pJ + an add (a MAC, 4.6 pJ);
    the figures most SNN papers use."""

    pj_per_ac: float = 0.9
    pj_per_mac: float = 4.6
    source: str = "Horowitz, ISSCC 2014: 45 nm, 32-bit float (add 0.9 pJ; multiply 3.7 pJ + add)"

    def __post_init__(self):
        for name in ("pj_per_ac", "pj_per_mac"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} not allowed; an energy per operation is a number >= 0 (pJ)")

    def microjoules(self, acs: float, macs: float) -> float:
        return (self.pj_per_ac * acs + self.pj_per_mac * macs) * 1e-6


COUNTED = (nn.Conv1d, nn.Conv2d, nn.Linear, MatMul)


def _events(x: torch.Tensor) -> str:
    """``"spikes"`` (0/1), ``"counts"`` (non-negative integers) or ``"real"``: what a layer's input is."""
    if bool(((x == 0) | (x == 1)).all()):
        return "spikes"
    if bool((x >= 0).all()) and bool((x == x.round()).all()):
        return "counts"
    return "real"


def _conv_acs(m: nn.Module, x: torch.Tensor) -> float:
    """Accumulates of a convolution whose input ``x`` (``[N, C, ...]``) is events: every event times the
    outputs it reaches (through the kernel, stride, padding and dilation), times ``C_out / groups``."""
    if m.padding_mode != "zeros":
        raise ValueError(f"counting a convolution with padding_mode={m.padding_mode!r}; only 'zeros' is counted")
    conv = F.conv2d if isinstance(m, nn.Conv2d) else F.conv1d
    ones = x.new_ones((1, 1) + tuple(m.kernel_size), dtype=torch.float64)
    reach = conv(x.to(torch.float64).sum(1, keepdim=True), ones, None, m.stride, m.padding, m.dilation)
    return float(reach.sum()) * m.out_channels / m.groups


def _dense_macs(m: nn.Module, inputs: tuple, out: torch.Tensor) -> float:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return float(out.numel()) * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
    if isinstance(m, nn.Linear):
        return float(out.numel()) * m.in_features
    return float(out.numel()) * inputs[0].shape[-1]   # a @ b: each output sums over a's last dimension


def _acs(m: nn.Module, inputs: tuple, kinds: list[str]) -> float:
    """Accumulates of a layer whose (first, or for a product either) input is events."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return _conv_acs(m, inputs[0])
    if isinstance(m, nn.Linear):
        return float(inputs[0].to(torch.float64).sum()) * m.out_features
    a, b = inputs   # a [..., n, m] @ b [..., m, p] -> [..., n, p]: an event a_ij adds row b_j (p values) to
    n, p = a.shape[-2], b.shape[-1]   # output row i; an event b_jk adds column a_:j (n values) to output column k
    lead = lambda t: t.numel() // (t.shape[-2] * t.shape[-1])   # broadcast leading dims: the output's count
    out_lead = max(lead(a), lead(b))
    options = []
    if kinds[0] != "real":
        options.append(float(a.to(torch.float64).sum()) * p * out_lead / lead(a))
    if kinds[1] != "real":
        options.append(float(b.to(torch.float64).sum()) * n * out_lead / lead(b))
    return min(options)


class _Counter:
    """Forward hooks that count operations and spikes of one network over the images it is shown."""

    def __init__(self, model: nn.Module):
        self.model, self.images = model, 0
        self.ops: dict[str, dict] = {}
        self.lifs: dict[str, dict] = {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, LIF):
                self.lifs[name] = {"spikes": 0.0, "neuron_steps": 0.0, "rate_sum": 0.0, "rate_sq": 0.0, "neurons": 0}
                self.handles.append(m.register_forward_hook(self._lif_hook(name)))
            elif isinstance(m, COUNTED):
                kind = "matmul" if isinstance(m, MatMul) else type(m).__name__.lower()
                self.ops[name] = {"kind": kind, "input": "spikes", "synops": 0.0, "macs": 0.0, "calls": 0}
                self.handles.append(m.register_forward_hook(self._op_hook(name)))

    def _lif_hook(self, name):
        def hook(m, inputs, out):
            rec = self.lifs[name]
            s = out.detach().to(torch.float64)   # [T, B, ...]
            per_image = s.transpose(0, 1).flatten(1).mean(1)   # [B]: each image's rate over T and neurons
            rec["spikes"] += float(s.sum())
            rec["neuron_steps"] += float(s.numel())
            rec["rate_sum"] += float(per_image.sum())
            rec["rate_sq"] += float(per_image.square().sum())
            rec["neurons"] = s[0, 0].numel()
        return hook

    def _op_hook(self, name):
        def hook(m, inputs, out):
            rec = self.ops[name]
            rec["calls"] += 1
            kinds = [_events(t) for t in inputs[:2]] if isinstance(m, MatMul) else [_events(inputs[0])]
            if all(k == "real" for k in kinds):
                rec["macs"] += _dense_macs(m, inputs, out)
                rec["input"] = "real"
            else:
                rec["synops"] += _acs(m, inputs, kinds)
                if rec["input"] != "real" and "counts" in kinds:
                    rec["input"] = "counts"
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class _FreeProducts(torch.overrides.TorchFunctionMode):
    """Dense MACs of the products of activations that no counted module makes (a timm ViT's attention:
    ``F.scaled_dot_product_attention`` or ``q @ k.T``), counted while no counted module is running."""

    def __init__(self):
        super().__init__()
        self.macs, self.inside = 0.0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside:
            if func is F.scaled_dot_product_attention:   # q [..., N, d] k [..., S, d] v [..., S, e]
                q, k, v = args[:3]
                self.macs += float(q.numel() // q.shape[-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            elif func in (torch.matmul, torch.Tensor.__matmul__, torch.bmm):
                out = func(*args, **kwargs)
                self.macs += float(out.numel()) * args[0].shape[-1]
                return out
        return func(*args, **kwargs)


def _total_dense_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Dense MACs of one forward of ``model`` on ``x`` (its counted layers and any other product of activations),
    per image of the batch."""
    total, handles, free = [0.0], [], _FreeProducts()

    def enter(m, i):
        free.inside += 1

    def leave(m, i, o):
        free.inside -= 1
        total[0] += _dense_macs(m, i, o)

    for m in model.modules():
        if isinstance(m, COUNTED):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with free:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return (total[0] + free.macs) / x.shape[-4 if x.dim() >= 4 else 0]


def ann_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates per image of ``model`` as an ANN: a teacher as it is; a student with one timestep
    (its LIFs acting as activations), on the static batch ``x`` (``[B, C, H, W]``; a frame sequence: its first frame)."""
    was = model.training
    model.eval()
    try:
        if not getattr(model, "spiking", False):
            return _total_dense_macs(model, x)
        T = model.T
        model.T = 1
        try:
            return _total_dense_macs(model, x[:1] if x.dim() == model.input_ndim + 1 else x)
        finally:
            model.T = T
    finally:
        model.train(was)


def _per_layer(counter: _Counter, images: int) -> tuple[list, list]:
    """Per LIF: ``rate``, ``rate_std`` over images and ``neurons``; per counted layer: its input, ``synops``
    and ``macs`` per image."""
    layers = []
    for name, r in counter.lifs.items():
        if not r["neuron_steps"]:
            continue
        mean = r["rate_sum"] / images
        layers.append({"name": name, "neurons": r["neurons"], "rate": r["spikes"] / r["neuron_steps"],
                       "rate_std": max(r["rate_sq"] / images - mean * mean, 0.0) ** 0.5})
    ops = [{"name": n, "kind": r["kind"], "input": r["input"], "synops": r["synops"] / images,
            "macs": r["macs"] / images} for n, r in counter.ops.items() if r["calls"]]
    return layers, ops


@torch.no_grad()
def spike_costs(model: nn.Module, batches, energy: EnergyModel = EnergyModel(), teacher_macs: float | None = None) -> dict:
    """Spike statistics and operation counts of a trained student over ``batches`` (an iterable of input
    tensors ``[B, C, H, W]`` or ``[T, B, C, H, W]``, on the model's device), per image.

    Returns ``firing_rate`` (spikes per neuron-timestep over every LIF layer), ``synops_per_image`` (ACs),
    ``macs_per_image``, ``energy_uj_per_image``, ``ann_macs_per_image`` and its energy, ``energy_vs_ann``,
    with ``teacher_macs`` also ``energy_vs_teacher``; ``layers`` (per LIF: ``rate``, ``rate_std`` over images,
    ``neurons``) and ``ops`` (per counted layer: what its input was, ``synops``, ``macs``)."""
    from hybridkd_lib.snn.ratebp import set_mode

    if not getattr(model, "spiking", False):
        raise ValueError(f"spike_costs counts a spiking student; {type(model).__name__} is an ANN (use ann_macs)")
    was = model.training
    model.eval()
    set_mode(model, "bptt")
    counter, images, first = _Counter(model), 0, None
    try:
        for x in batches:
            first = x if first is None else first
            model(x)
            images += x.shape[1] if x.dim() == model.input_ndim + 1 else x.shape[0]
    finally:
        counter.close()
        model.train(was)
    if not images:
        raise ValueError("spike_costs was given no images")
    layers, ops = _per_layer(counter, images)
    synops, macs = sum(o["synops"] for o in ops), sum(o["macs"] for o in ops)
    spikes = sum(r["spikes"] for r in counter.lifs.values())
    steps = sum(r["neuron_steps"] for r in counter.lifs.values())
    dense = ann_macs(model, first)
    out = {"images": images, "T": model.T, "energy_model": asdict(energy),
           "bn": "folded into the convolution before it (no operations counted)",
           "firing_rate": spikes / steps if steps else 0.0,
           "synops_per_image": synops, "macs_per_image": macs,
           "energy_uj_per_image": energy.microjoules(synops, macs),
           "ann_macs_per_image": dense, "ann_energy_uj_per_image": energy.microjoules(0, dense),
           "layers": layers, "ops": ops}
    out["energy_vs_ann"] = out["energy_uj_per_image"] / out["ann_energy_uj_per_image"] if dense else None
    if teacher_macs is not None:
        out["teacher_macs_per_image"] = teacher_macs
        out["teacher_energy_uj_per_image"] = energy.microjoules(0, teacher_macs)
        out["energy_vs_teacher"] = out["energy_uj_per_image"] / out["teacher_energy_uj_per_image"]
    return out


#: pJ per byte of memory traffic: Horowitz (ISSCC 2014), a 64-bit read from an 8 kB SRAM costs about 10 pJ at 45 nm
SRAM_PJ_PER_BYTE = 10.0 / 8


@contextlib.contextmanager
def _unfused_attention(model: nn.Module):
    """timm's attention computed as matrix products, which spikingjelly's counters see (they have no rule for
    the fused ``scaled_dot_product_attention``), for the duration of the block."""
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in fused:
            m.fused_attn = True


@torch.no_grad()
def memory_aware_energy(model: nn.Module, x: torch.Tensor, energy: EnergyModel = EnergyModel(),
                        pj_per_byte: float = SRAM_PJ_PER_BYTE) -> dict:
    """Energy per image of one inference forward of ``model`` (a spiking student or an ANN) on ``x``
    (``[B, C, H, W]``, or a student's ``[T, B, C, H, W]``), counting memory as well as compute: spikingjelly
    2.0.0's ``op_counter.estimate_simple_energy`` with ``energy``'s pJ per MAC and per accumulate and
    ``pj_per_byte``.

    What it counts (spikingjelly's model, per image: every count is the batch's divided by B):

    - compute: MACs of convolutions and matrix products on real inputs; accumulates (ACs) of those on 0/1
      inputs (a spike's fan-out) **and of every elementwise add** (spikingjelly's ``ACCounter``: each neuron's
      charge and reset at every step, residual adds, BN's arithmetic where it is not folded). So its AC count is
      larger than this module's synaptic operations (``spike_costs``, spike-driven products only), and BN is
      counted unfolded; compare ratios within one counter, never across. The counters see the operations that
      PyTorch dispatches: a CUDA LIF kernel's own adds are not seen, so estimate on the CPU (as runs here do);
      LayerNorm, GELU and softmax are not counted;
    - memory: one weight read per MAC and per spike-driven accumulate (no weight reuse, no caching between
      images or timesteps), one bias read per output element, each neuron's state read and written once per
      timestep, at ``pj_per_byte`` for the tensors' real byte counts.

    Assumptions, to state beside any figure: 45 nm, 32-bit float operations (Horowitz, ISSCC 2014: add 0.9 pJ,
    multiply 3.7 pJ); memory at ``pj_per_byte``, by default ``SRAM_PJ_PER_BYTE`` (an 8 kB SRAM's 64-bit read,
    about 10 pJ: the most optimistic figure; a 1 MB SRAM is about 100 pJ per 64-bit read, DRAM 1.3-2.6 nJ;
    spikingjelly's own default is 24.96 pJ per byte). Not counted: activations and spikes moved between layers,
    spike routing and addressing, leakage and control. An estimate, not a chip measurement: with memory counted
    an SNN's advantage can shrink or reverse (Dampfhoffer et al., IEEE TETCI 2023; Lemaire et al., 2022). Returns
    ``macs``, ``acs``, ``memory_bytes``, ``compute_uj``, ``memory_uj``, ``total_uj``, ``pj_per_byte``, ``source``."""
    from spikingjelly.activation_based.op_counter import (SimpleEnergyConfig, SimpleEnergyCostConfig,
                                                          estimate_simple_energy)
    from hybridkd_lib.snn.ratebp import set_mode

    if isinstance(pj_per_byte, bool) or not isinstance(pj_per_byte, (int, float)) or not 0 <= pj_per_byte < 1e9:
        raise ValueError(f"pj_per_byte={pj_per_byte!r} not allowed; an energy per byte is a finite number >= 0 (pJ)")
    was = model.training
    model.eval()
    if getattr(model, "spiking", False):
        set_mode(model, "bptt")
    costs = SimpleEnergyCostConfig(e_mac_pj=energy.pj_per_mac, e_ac_pj=energy.pj_per_ac,
                                   e_memory_pj_per_byte=float(pj_per_byte))
    try:
        with _unfused_attention(model):
            report = estimate_simple_energy(model, x, config=SimpleEnergyConfig(cost_config=costs))
    finally:
        model.train(was)
    n = x.shape[1] if x.dim() == getattr(model, "input_ndim", x.dim()) + 1 else x.shape[0]
    return {"macs": report.counts["mac"] / n, "acs": report.counts["ac"] / n,
            "memory_bytes": report.counts["memory_access_bytes"] / n,
            "compute_uj": report.energy_compute_pj * 1e-6 / n, "memory_uj": report.energy_memory_pj * 1e-6 / n,
            "total_uj": report.energy_total_pj * 1e-6 / n, "pj_per_byte": float(pj_per_byte),
            "source": f"spikingjelly op_counter.estimate_simple_energy; {energy.source}; memory {pj_per_byte} pJ/byte"}


def ann_twin(model: nn.Module) -> nn.Module:
    """The same network as an ANN: a copy of the spiking ``model`` with one timestep and every LIF a ReLU (the
    network ``ann_macs`` counts, as a module spikingjelly's estimator can run)."""
    import copy

    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, LIF):
            twin.set_submodule(name, nn.ReLU())
    twin.T = 1
    return twin


MEMORY_AWARE_IMAGES = 16   # images per estimate (one forward with every operation counted: slow on big networks)


def memory_aware_costs(student: nn.Module, x: torch.Tensor, teacher: nn.Module | None = None,
                       teacher_x: torch.Tensor | None = None, energy: EnergyModel = EnergyModel(),
                       pj_per_byte: float = SRAM_PJ_PER_BYTE) -> dict:
    """``memory_aware_energy`` of the student, of the same network as an ANN (``ann_twin``) and of the teacher
    (on ``teacher_x``, its view of the images), on the first ``MEMORY_AWARE_IMAGES`` images of ``x``, with the
    ratios ``vs_ann`` and ``vs_teacher`` of the totals (compute and memory) and ``compute_vs_ann``,
    ``compute_vs_teacher`` of spikingjelly's compute part alone (its counter, not ``spike_costs``')."""
    k, sequence = MEMORY_AWARE_IMAGES, x.dim() == student.input_ndim + 1
    sx = x[:, :k] if sequence else x[:k]
    out = {"estimator": "spikingjelly 2.0.0 op_counter.estimate_simple_energy", "pj_per_byte": float(pj_per_byte),
           "images": int(sx.shape[1] if sequence else sx.shape[0]),
           "student": memory_aware_energy(student, sx, energy, pj_per_byte),   # one frame: the ANN's one step
           "ann": memory_aware_energy(ann_twin(student), sx[:1] if sequence else sx, energy, pj_per_byte)}
    if teacher is not None:
        out["teacher"] = memory_aware_energy(teacher, teacher_x[:k], energy, pj_per_byte)
    for other in ("ann", "teacher"):
        if other in out:
            out[f"vs_{other}"] = out["student"]["total_uj"] / out[other]["total_uj"]
            out[f"compute_vs_{other}"] = out["student"]["compute_uj"] / out[other]["compute_uj"]
    return out
