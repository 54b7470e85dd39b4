"""LIF neurons (spikingjelly ``LIFNode``, multi-step) with three propagation modes.

Shapes: temporal input ``[T, B, ...]`` -> spikes ``[T, B, ...]``; rate input ``[B, ...]``.

Modes (set with ``hybridkd_lib.snn.ratebp.set_mode``):

- ``"bptt"``: spikingjelly's autograd through time (surrogate gradients); also inference.
- ``"spike"``: graph-free simulation that records, per element, the firing rate
  ``r = mean_t s_t`` and the eligibility ``e = mean_t ef_t * sg_t``.
- ``"rate"``: one batch-B pass: forward value ``r``, gradient ``dL/dx = dL/dr * e``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

from hybridkd_lib.base.checks import check_keys

MODES = ("bptt", "spike", "rate")
# how the spike pass runs: "fused" (the in-place eager loop), "plain" (the readable charge / fire / reset loop,
# ``spike_equations``), "compiled" (those equations as one compiled kernel); every one gives the same records
SPIKE_LOOPS = ("fused", "plain", "compiled")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of LIF state, BN statistics and the spike pass's records for input of ``dtype``:
    float64 stays float64; float32, bf16 and fp16 (autocast) get float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class NeuronConfig:
    """Every LIF setting in one place; the defaults are the RateBP reference's.

    The reference (Tab-ct/rate-based-backpropagation, ``--decay 0.2`` through ``warp_decay``
    and a sigmoid) has the decay ``lambda = 0.2``, i.e. ``tau = 1.25`` (``lambda = 1 - 1/tau``),
    threshold 1.0, soft reset (``v_reset=None``; a float is the hard reset to that value),
    detached reset and a sigmoid surrogate with ``alpha = 4``. A model whose own source uses
    other constants says so (``Spikingformer``: tau 2.0).
    """

    tau: float = 1.25
    v_threshold: float = 1.0
    v_reset: float | None = None
    detach_reset: bool = True
    surrogate_alpha: float = 4.0
    decay_input: bool = False   # True: charge u = lambda*v + x/tau (spikingjelly's default), as Spikingformer

    def __post_init__(self):
        for name in ("tau", "v_threshold", "surrogate_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}={value!r} not allowed; expected a number")
            object.__setattr__(self, name, float(value))  # an int (tau=2) is the float it names
        if self.tau <= 1.0:
            raise ValueError(f"tau={self.tau!r} not allowed; tau must be a number > 1 (decay = 1 - 1/tau)")
        if self.v_threshold <= 0 or self.surrogate_alpha <= 0:
            raise ValueError(f"v_threshold={self.v_threshold!r}, surrogate_alpha={self.surrogate_alpha!r} not "
                             f"allowed; both must be > 0")
        if self.v_reset is not None and (isinstance(self.v_reset, bool) or not isinstance(self.v_reset, (int, float))):
            raise ValueError(f"v_reset={self.v_reset!r} not allowed; expected None (soft reset) or a number")
        for name in ("detach_reset", "decay_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} not allowed; expected true or false")

    @property
    def decay(self) -> float:
        """``lambda = 1 - 1/tau``: the fraction of the membrane potential a neuron keeps from one step to the
        next (the decay factor; ``1/tau`` is what leaks away). ``tau = 1.25`` keeps 0.2, ``tau = 4`` keeps 0.75."""
        return 1.0 - 1.0 / self.tau

    @property
    def in_scale(self) -> float:
        """``du_t/dx_t``: how the input charges the membrane (``1/tau`` with ``decay_input``, else 1)."""
        return 1.0 / self.tau if self.decay_input else 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def with_overrides(cls, base: "NeuronConfig", overrides: dict | None) -> "NeuronConfig":
        """``base`` with the fields in ``overrides`` replaced (the ``neuron`` parameter of a run);
        an unknown key is an error listing the fields."""
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"neuron={overrides!r} not allowed: expected a dict of {', '.join(NEURON_FIELDS)}")
        check_keys(overrides, NEURON_FIELDS, "neuron setting")
        return cls(**{**base.to_dict(), **overrides})


DEFAULT_NEURON = NeuronConfig()
NEURON_FIELDS = tuple(DEFAULT_NEURON.to_dict())


class LIF(nn.Module):
    """Multi-step LIF layer; ``mode`` selects BPTT, recording spike pass or rate pass."""

    rate_aware = True   # its forward follows the propagation mode (ratebp.set_mode)

    def __init__(self, cfg: NeuronConfig = DEFAULT_NEURON, v_threshold: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.v_threshold = cfg.v_threshold if v_threshold is None else float(v_threshold)
        self.node = neuron.LIFNode(
            tau=cfg.tau, decay_input=cfg.decay_input, v_threshold=self.v_threshold, v_reset=cfg.v_reset,
            surrogate_function=surrogate.Sigmoid(alpha=cfg.surrogate_alpha),
            detach_reset=cfg.detach_reset, step_mode="m")
        self.mode = "bptt"
        self.spike_loop = "fused"        # SPIKE_LOOPS; a whole model's: ratebp.set_spike_pass(model, loop=...)
        self.writes_over_input = False   # spike pass: spikes over the input (ratebp.set_spike_pass(in_place=True))
        self.rate: torch.Tensor | None = None  # [B, ...] recorded by the spike pass
        self.elig: torch.Tensor | None = None  # [B, ...]

    def extra_repr(self) -> str:
        return f"mode={self.mode}, v_threshold={self.v_threshold}"

    def clear(self):
        self.rate = self.elig = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "rate":
            return self.rate_forward(x)
        if self.mode == "spike":
            if torch.is_grad_enabled():
                raise RuntimeError("a LIF in 'spike' mode runs RateBP's graph-free spike pass: call it under "
                                   "torch.no_grad() (ratebp.spike_pass does), or set mode 'bptt' to train through time")
            if self.spike_loop == "fused":
                return self.spike_forward(x)
            return self.spike_forward_plain(x, compiled=self.spike_loop == "compiled")
        # the membrane potential is fp32 for bf16/fp16 input (autocast): spikingjelly's CUDA kernel
        # runs only for fp32 state, and 2^-7 steps at the threshold would change spikes; float64 stays
        self.node.reset()
        out = self.node(x.to(state_dtype(x.dtype)))
        self.node.reset()  # do not keep the last membrane potential alive between calls
        return out.to(x.dtype)  # spikes are 0/1: exact in bf16

    @torch.no_grad()
    def spike_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...]`` -> spikes; records ``self.rate`` and ``self.elig`` (``[B, ...]``, in ``x[t]``'s layout).

        Per step: charge ``u = lambda * v + x_t`` (``x_t / tau`` with ``decay_input``); ``sg = surrogate'(u - theta)``;
        ``e += ef * sg``; spike ``s = u >= theta``; eligibility factor update
        (soft reset, detached: ``ef <- 1 + lambda * ef``); reset. On the CPU the elements of a step run in blocks of
        ``CPU_BLOCK`` (the whole T loop per block, so its temporaries stay in the L2 cache: ~1/3 less time
        than whole-map passes on the full-width maps); only block-sized temporaries are allocated, whatever T; with
        ``writes_over_input`` (``ratebp.set_spike_pass(in_place=True)``) the spikes of step t go into ``x[t]`` (read once, before),
        so not even the output is new memory. The same records as ``spike_equations`` (tests/test_ratebp.py).
        """
        T = x.shape[0]
        if not _steps_dense(x):
            x = x.contiguous()
        spikes = x if self.writes_over_input else torch.empty_like(x)   # same strides: the flat views align
        n = x[0].numel()
        x_flat, s_flat = _flat_steps(x), _flat_steps(spikes)            # [T, n]
        # state in fp32 for bf16 x (autocast), float64 for float64
        rate = torch.empty(n, dtype=state_dtype(x.dtype), device=x.device)
        elig = torch.empty_like(rate)
        block = min(n, self.CPU_BLOCK if x.device.type == "cpu" else n)
        v_buf, p_buf = torch.empty(block, dtype=rate.dtype, device=x.device), torch.empty_like(rate[:block])
        # -alpha * theta as a 0-dim tensor: a fill kernel, no host copy
        bias = torch.full((), -self.cfg.surrogate_alpha * self.v_threshold, dtype=rate.dtype, device=x.device)
        in_scale = self.cfg.in_scale   # du_t/dx_t
        for a in range(0, n, block):
            b = min(n, a + block)
            self._spike_block(x_flat[:, a:b], s_flat[:, a:b], v_buf[:b - a], p_buf[:b - a], elig[a:b], bias, in_scale)
            torch.sum(s_flat[:, a:b], 0, dtype=rate.dtype, out=rate[a:b])   # rate = (sum_t s_t) / T
        # every path from x into u starts with the factor du/dx = in_scale and the ef recursion is
        # linear in it, so the eligibility of decay_input is the plain one times 1/tau
        self.rate = rate.div_(T).as_strided(x[0].shape, x[0].stride())
        self.elig = elig.mul_(in_scale / T).as_strided(x[0].shape, x[0].stride())
        return spikes

    CPU_BLOCK = 131072   # elements per block of the fused loop on the CPU (512 KB of fp32 per temporary)

    def _spike_block(self, x, spikes, v, p, elig, bias, in_scale: float) -> None:
        """The T steps of one block of elements: ``x``, ``spikes`` ``[T, m]``; ``v``, ``p``, ``elig`` ``[m]``
        (``elig`` gets the sum of ``ef_t * sg_t``); ``bias`` is ``-alpha * theta``, ``in_scale`` is ``du_t/dx_t``."""
        T = x.shape[0]
        lam, thr, alpha = self.cfg.decay, self.v_threshold, self.cfg.surrogate_alpha
        v_reset, detach_reset = self.cfg.v_reset, self.cfg.detach_reset
        ef: float | torch.Tensor = 1.0
        for t in range(T):                 # 7 elementwise passes per step in the common case
            if t == 0:
                v.copy_(x[0])                              # u_0 = x_0 (v_{-1} = 0)
                if in_scale != 1.0:
                    v.mul_(in_scale)
            elif in_scale == 1.0:
                torch.add(x[t], v, alpha=lam, out=v)       # u_t = lambda * v_{t-1} + x_t
            else:
                torch.add(x[t], v, alpha=lam / in_scale, out=v).mul_(in_scale)  # lambda * v + x_t / tau
            torch.add(bias, v, alpha=alpha, out=p).sigmoid_()   # sigmoid(alpha * (u_t - theta))
            p.addcmul_(p, p, value=-1.0)   # sig * (1 - sig); the surrogate derivative is alpha * p
            s = spikes[t]
            torch.ge(v, thr, out=s)
            if t == 0:                     # ef_0 = 1
                torch.mul(p, alpha, out=elig)
            elif isinstance(ef, float):
                elig.add_(p, alpha=ef * alpha)
            else:
                elig.addcmul_(ef, p, value=alpha)
            if t + 1 < T:  # ef for the next step (not needed after the last one)
                if v_reset is not None and detach_reset:  # hard reset: ef <- 1 + lam*ef*(1-s)
                    ef = 1.0 + lam * ef * (1.0 - s)
                elif v_reset is not None:   # hard reset: ef <- 1 + ef*(lam*(1-s) - lam*(u-v_reset)*sg)
                    ef = 1.0 + ef * (lam * (1.0 - s) - lam * (v - v_reset) * (alpha * p))
                elif not detach_reset:      # soft reset, gradient through reset
                    ef = 1.0 + ef * (lam - lam * thr * (alpha * p))
                else:                       # soft reset, detached: a scalar recursion
                    ef = 1.0 + lam * ef
            if v_reset is None:
                v.sub_(s, alpha=thr)
            else:
                v.mul_(1.0 - s).add_(s, alpha=v_reset)

    @torch.no_grad()
    def spike_forward_plain(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """``spike_forward`` written plainly (``spike_equations``); ``compiled``: the same equations as one
        compiled kernel (``compiled_spike_equations``)."""
        equations = compiled_spike_equations() if compiled else spike_equations
        cfg = self.cfg
        spikes, self.rate, self.elig = equations(x, cfg.decay, self.v_threshold, cfg.surrogate_alpha,
                                                 cfg.in_scale, cfg.v_reset,
                                                 cfg.detach_reset)
        return spikes

    def rate_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` -> recorded rate as value, ``x * e`` as the gradient path."""
        if self.rate is None or self.elig is None:
            raise RuntimeError("rate pass without a spike pass: run the model in mode 'spike' first")
        if self.rate.shape != x.shape:
            raise RuntimeError(f"rate pass input {tuple(x.shape)} does not match the spike pass "
                               f"{tuple(self.rate.shape)}")
        return _RateLIF.apply(x, self.rate, self.elig)


def _steps_dense(x: torch.Tensor) -> bool:
    """Whether each step ``x[t]`` of ``[T, ...]`` fills one dense block of memory (contiguous in some order of its
    dims, e.g. channels_last), so that ``_flat_steps`` can view it as ``[T, n]``."""
    step = x[0]
    if step.numel() == 0:
        return False
    order = sorted(range(step.dim()), key=lambda d: step.stride(d))
    expected = 1
    for d in order:
        if step.shape[d] != 1 and step.stride(d) != expected:
            return False
        expected *= step.shape[d]
    return x.stride(0) == expected or x.shape[0] == 1


def _flat_steps(x: torch.Tensor) -> torch.Tensor:
    """``[T, ...]`` with dense steps -> the ``[T, n]`` view of the same memory (element order: memory order)."""
    return x.as_strided((x.shape[0], x[0].numel()), (x.stride(0), 1))


class _RateLIF(torch.autograd.Function):
    """Value: the recorded rate (a view of it, no copy); gradient: ``dL/dx = dL/dr * e``.

    Saves only the eligibility the spike pass recorded, so the rate pass keeps no
    tensor of its own per LIF; the next layer saves the rate itself.
    """

    @staticmethod
    def forward(ctx, x, rate, elig):
        ctx.save_for_backward(elig)
        return rate.view_as(rate)

    @staticmethod
    def backward(ctx, grad_rate):
        (elig,) = ctx.saved_tensors
        return grad_rate * elig, None, None


def spike_equations(x: torch.Tensor, lam: float, thr: float, alpha: float, in_scale: float,
                    v_reset: float | None, detach_reset: bool):
    """The spike pass of one LIF layer, one equation a line: ``x`` ``[T, B, ...]`` -> ``(spikes [T, B, ...],
    rate [B, ...], eligibility [B, ...])``, with the state in ``state_dtype(x.dtype)``.

    Per step: charge ``u_t = lambda * v_{t-1} + in_scale * x_t``; surrogate derivative
    ``sg_t = alpha * sig * (1 - sig)``, ``sig = sigmoid(alpha * (u_t - theta))``; eligibility ``e += ef_t * sg_t``
    with ``ef_t = du_t/dx`` along the kept path (the RateBP derivation; Tutorial 2); fire ``s_t = H(u_t - theta)``;
    reset: soft ``v_t = u_t - theta * s_t``, hard ``v_t = u_t * (1 - s_t) + v_reset * s_t``. ``rate = (sum_t s_t) / T``,
    ``e`` is divided by T; the records are in ``x[t]``'s layout (channels_last stays channels_last)."""
    T = x.shape[0]
    v = torch.zeros_like(x[0], dtype=state_dtype(x.dtype))   # [B, ...] in x[t]'s layout, as every record
    ef, elig, count, spikes = torch.full_like(v, in_scale), torch.zeros_like(v), torch.zeros_like(v), []
    for t in range(T):
        u = lam * v + in_scale * x[t].to(v.dtype)
        sig = torch.sigmoid(alpha * (u - thr))
        sg = alpha * sig * (1 - sig)
        elig = elig + ef * sg
        s = (u >= thr).to(u.dtype)
        if v_reset is None:   # d v_t / d u_t along the kept path (the reset's own term only if not detached)
            dv = 1.0 if detach_reset else 1.0 - thr * sg
            v = u - thr * s
        else:
            dv = (1.0 - s) if detach_reset else (1.0 - s) - (u - v_reset) * sg
            v = u * (1 - s) + v_reset * s
        ef = in_scale + lam * dv * ef      # d u_{t+1} / dx through v_t
        count = count + s
        spikes.append(s)
    return torch.stack(spikes).to(x.dtype), count / T, elig / T


_COMPILED = None


def compiled_spike_equations():
    """``spike_equations`` compiled (``torch.compile``, inductor: C++ on the CPU, Triton on CUDA), built on
    first use; shapes are dynamic, so one kernel serves every layer of a T."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(spike_equations, dynamic=True)
    return _COMPILED
