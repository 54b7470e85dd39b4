"""Rate-based backpropagation against spikingjelly BPTT."""
import pytest
import torch
from torch import nn

from hybridkd_lib.snn import ratebp
from hybridkd_lib.snn.layers import RateBatchNorm2d
from hybridkd_lib.models import create_model, list_models, model_facts
from hybridkd_lib.snn.neurons import LIF, NeuronConfig


class LinearLIF(nn.Module):
    """Linear -> one LIF layer; static input repeated over T in temporal modes."""

    def __init__(self, cfg, T):
        super().__init__()
        self.fc, self.lif, self.T = nn.Linear(6, 9), LIF(cfg), T

    def forward(self, x):
        h = self.fc(x)
        if self.lif.mode == "rate":
            return self.lif(h)
        return self.lif(h.unsqueeze(0).expand(self.T, *h.shape)).mean(0)


def _grads(net, x, c, mode):
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    if mode == "bptt":
        out = net(x)
    else:
        ratebp.spike_pass(net, x)
        ratebp.set_mode(net, "rate")
        out = net(x)
        ratebp.set_mode(net, "bptt")
    (out * c).sum().backward()
    return x.grad, net.fc.weight.grad.clone(), net.fc.bias.grad.clone()


@pytest.mark.parametrize("T", [1, 2, 4, 8])
@pytest.mark.parametrize("tau", [1.5, 2.0, 4.0])
def test_single_lif_matches_bptt(T, tau):
    torch.manual_seed(T * 10 + int(tau * 2))
    net = LinearLIF(NeuronConfig(tau=tau), T)
    with torch.no_grad():
        net.fc.weight.mul_(3.0)  # drive the neurons across threshold
    x, c = torch.randn(16, 6), torch.randn(16, 9)
    for g_bptt, g_rate in zip(_grads(net, x, c, "bptt"), _grads(net, x, c, "rate")):
        assert g_bptt.abs().max() > 0
        torch.testing.assert_close(g_rate, g_bptt, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [NeuronConfig(v_reset=0.0, detach_reset=True),
                                 NeuronConfig(v_reset=0.0, detach_reset=False),
                                 NeuronConfig(v_reset=None, detach_reset=False),
                                 NeuronConfig(tau=2.0, v_reset=0.0, decay_input=True)])  # Spikingformer's
def test_other_resets_match_bptt(cfg):
    torch.manual_seed(1)
    net = LinearLIF(cfg, 6)
    with torch.no_grad():
        net.fc.weight.mul_(3.0)
    x, c = torch.randn(16, 6), torch.randn(16, 9)
    for g_bptt, g_rate in zip(_grads(net, x, c, "bptt"), _grads(net, x, c, "rate")):
        torch.testing.assert_close(g_rate, g_bptt, atol=1e-5, rtol=1e-5)


def test_rate_logits_equal_time_averaged_spike_logits():
    torch.manual_seed(0)
    m = create_model("spiking_resnet18", width=8, T=4).train()
    x = torch.randn(4, 3, 32, 32)
    spike_logits = ratebp.spike_pass(m, x)
    ratebp.set_mode(m, "rate")
    rate_logits = m(x)
    ratebp.set_mode(m, "bptt")
    assert rate_logits.requires_grad
    torch.testing.assert_close(rate_logits.detach(), spike_logits, atol=1e-5, rtol=1e-5)


def test_bn_rate_pass_uses_spike_statistics_and_ordinary_gradients():
    torch.manual_seed(0)
    bn = RateBatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x_seq = torch.randn(4, 5, 3, 6, 6) * 2 + 1          # [T, B, C, H, W]
    bn.mode = "spike"
    with torch.no_grad():
        y_spk = bn(x_seq)
    ref = torch.nn.functional.batch_norm(x_seq.flatten(0, 1), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    torch.testing.assert_close(y_spk.flatten(0, 1), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.spk_mean, x_seq.mean(dim=(0, 1, 3, 4)))
    # rate pass: forward value normalised with the spike-pass statistics
    bn.mode = "rate"
    x_rate = x_seq.mean(0).requires_grad_(True)
    y = bn(x_rate)
    shp = (1, 3, 1, 1)
    expect = (x_rate - bn.spk_mean.view(shp)) / torch.sqrt(bn.spk_var.view(shp) + bn.eps) * bn.weight.view(shp) \
        + bn.bias.view(shp)
    torch.testing.assert_close(y, expect.detach(), atol=1e-5, rtol=1e-5)
    # gradient: ordinary BN gradient when the spike statistics are the batch's own (T=1)
    bn2 = RateBatchNorm2d(3).train()
    bn2.load_state_dict(bn.state_dict())
    x1 = torch.randn(1, 5, 3, 6, 6)
    bn2.mode = "spike"
    with torch.no_grad():
        bn2(x1)
    bn2.mode = "rate"
    xa = x1[0].clone().requires_grad_(True)
    xb = x1[0].clone().requires_grad_(True)
    g = torch.randn(5, 3, 6, 6)
    (bn2(xa) * g).sum().backward()
    (torch.nn.functional.batch_norm(xb, None, None, bn2.weight, bn2.bias, True, 0.0, bn2.eps) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["ratebp", "bptt"])
def test_running_stats_update_once_per_step(method):
    m = create_model("spiking_resnet18", width=8, T=3).train()
    bns = [b for b in m.modules() if isinstance(b, RateBatchNorm2d)]
    before = [int(b.num_batches_tracked) for b in bns]
    means = [b.running_mean.clone() for b in bns]
    x = torch.randn(4, 3, 16, 16)
    logits = ratebp.rate_forward(m, x) if method == "ratebp" else m(x)
    logits.sum().backward()
    assert [int(b.num_batches_tracked) for b in bns] == [n + 1 for n in before]
    assert all(not torch.equal(b.running_mean, mu) for b, mu in zip(bns, means))


def _saved_bytes(model, x, method):
    """Bytes of activations saved for backward (parameters excluded, shared storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ratebp.rate_forward(model, x) if method == "ratebp" else model(x)
    out.sum().backward()
    return sum(seen.values())


def test_ratebp_graph_does_not_grow_with_T():
    torch.manual_seed(0)
    m = create_model("spiking_resnet18").train()
    x = torch.randn(2, 3, 32, 32)
    sizes = {}
    for method in ("ratebp", "bptt"):
        for T in (2, 8):
            m.T = T
            sizes[method, T] = _saved_bytes(m, x, method)
    assert sizes["ratebp", 8] == sizes["ratebp", 2]
    assert 3.0 < sizes["bptt", 8] / sizes["bptt", 2] < 4.5
    assert sizes["ratebp", 8] < sizes["bptt", 8] / 4


def test_scale_gradient_keeps_value_scales_gradient():
    w = torch.tensor(2.0, requires_grad=True)
    loss = ratebp.scale_gradient(w * 3, T=4)
    loss.backward()
    assert float(loss.detach()) == 6.0 and float(w.grad) == pytest.approx(0.75)


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="unknown propagation mode 'foo'; valid: bptt, spike, rate"):
        ratebp.set_mode(nn.Linear(1, 1), "foo")


@pytest.mark.parametrize("affine", [True, False])
def test_bn_rate_backward_equals_autograd_of_the_defining_formula(affine):
    """The fused rate-pass BN equals autograd through mu_spk + (mu_x - sg(mu_x)), same for var."""
    torch.manual_seed(3)
    bn = RateBatchNorm2d(4, affine=affine).train()
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    x_seq = torch.randn(4, 6, 4, 5, 5) * 2 + 0.5
    bn.mode = "spike"
    with torch.no_grad():
        bn(x_seq)
    bn.mode = "rate"
    x_rate = (x_seq.mean(0) + 0.3).requires_grad_(True)  # mean(x_rate) != spike mean: every term matters
    g = torch.randn(6, 4, 5, 5)
    (bn(x_rate) * g).sum().backward()
    got = [x_rate.grad] + ([bn.weight.grad, bn.bias.grad] if affine else [])

    xr = x_rate.detach().clone().requires_grad_(True)
    w = bn.weight.detach().clone().requires_grad_(True) if affine else None
    b = bn.bias.detach().clone().requires_grad_(True) if affine else None
    shp, dims = (1, -1, 1, 1), (0, 2, 3)
    mu_x = xr.mean(dims)
    mu = bn.spk_mean + (mu_x - mu_x.detach())
    xc = xr - mu.view(shp)
    var_x = xc.square().mean(dims)
    var = bn.spk_var + (var_x - var_x.detach())
    y = xc * torch.rsqrt(var + bn.eps).view(shp)
    if affine:
        y = y * w.view(shp) + b.view(shp)
    (y * g).sum().backward()
    want = [xr.grad] + ([w.grad, b.grad] if affine else [])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_lif_state_stays_fp32_under_bf16_autocast_and_spikes_match_spikingjelly_fp32():
    """bf16 autocast (``precision="bf16"`` on CUDA) must not put the membrane potential or the eligibility in
    bf16: spikingjelly's CUDA kernel needs fp32 state, and 2^-7 steps at the threshold change spikes."""
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    x = (torch.randn(6, 4, 32) * 1.5).to(torch.bfloat16)  # a conv output under autocast
    lif = LIF()
    seen = []
    lif.node.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, m.v.dtype)))
    with torch.autocast("cpu", torch.bfloat16):
        bptt_spikes = lif(x)
    assert seen == [(torch.float32, torch.float32)] and bptt_spikes.dtype == torch.bfloat16
    ref = neuron.LIFNode(tau=lif.cfg.tau, decay_input=False, v_threshold=1.0, v_reset=None, detach_reset=True,
                         surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")(x.float())
    assert torch.equal(bptt_spikes.float(), ref)
    ratebp.set_mode(lif, "spike")
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        spikes = lif(x)
    assert lif.rate.dtype == torch.float32 and lif.elig.dtype == torch.float32
    assert torch.equal(spikes.float(), ref)
    torch.testing.assert_close(lif.rate, ref.mean(0))


@pytest.mark.parametrize("cfg", [NeuronConfig(), NeuronConfig(tau=2.0), NeuronConfig(v_reset=0.0),
                                 NeuronConfig(v_reset=0.0, detach_reset=False), NeuronConfig(detach_reset=False),
                                 NeuronConfig(tau=2.0, v_reset=0.0, decay_input=True)])
def test_plain_charge_fire_reset_step_records_what_the_fused_loop_records(cfg):
    """The readable spike step (the tutorial's equations) and the fused loop: same spikes, rate, eligibility."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 5, 5) * 1.5
    records = []
    for loop in ("fused", "plain"):
        lif = LIF(cfg)
        ratebp.set_spike_pass(lif, loop=loop)
        ratebp.set_mode(lif, "spike")
        with torch.no_grad():
            spikes = lif(x.clone())
        records.append((spikes, lif.rate, lif.elig))
    (s1, r1, e1), (s2, r2, e2) = records
    assert torch.equal(s1, s2) and torch.equal(r1, r2)
    assert e1.abs().max() > 0
    torch.testing.assert_close(e1, e2, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- float64
class TwoLayer(nn.Module):
    """Linear -> LIF -> Linear -> LIF, static input repeated over T in the temporal modes."""

    def __init__(self, T):
        super().__init__()
        self.fc1, self.lif1, self.fc2, self.lif2, self.T = nn.Linear(5, 7), LIF(), nn.Linear(7, 3), LIF(), T

    def forward(self, x):
        if self.lif1.mode != "rate":
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        out = self.lif2(self.fc2(self.lif1(self.fc1(x))))
        return out if self.lif1.mode == "rate" else out.mean(0)


def _hand_ratebp(net: TwoLayer, x, c):
    """RateBP written out by hand for ``sum(c * rate_2)``: the spike pass's rates and eligibilities
    (soft, detached reset: ``ef_t = 1 + lambda * ef_{t-1}``), then ``dW = (dL/dr * e)^T r_in``."""
    lam, alpha, T = net.lif1.cfg.decay, net.lif1.cfg.surrogate_alpha, net.T

    def lif(z_t):   # z_t: [T, B, N] -> spikes [T, B, N], rate, eligibility
        v, ef, elig, spikes = torch.zeros_like(z_t[0]), 1.0, torch.zeros_like(z_t[0]), []
        for t in range(T):
            u = lam * v + z_t[t]
            sig = torch.sigmoid(alpha * (u - 1.0))
            elig = elig + ef * alpha * sig * (1 - sig)
            s = (u >= 1.0).to(u.dtype)
            v, ef = u - s, 1.0 + lam * ef
            spikes.append(s)
        spikes = torch.stack(spikes)
        return spikes, spikes.mean(0), elig / T

    W1, b1, W2, b2 = net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias
    with torch.no_grad():
        s1, r1, e1 = lif((x @ W1.T + b1).expand(T, *x.shape[:1], W1.shape[0]))
        _, r2, e2 = lif(s1 @ W2.T + b2)
        dz2 = c * e2
        dz1 = (dz2 @ W2) * e1
    return {"fc1.weight": dz1.T @ x, "fc1.bias": dz1.sum(0), "fc2.weight": dz2.T @ r1, "fc2.bias": dz2.sum(0)}


@pytest.mark.parametrize("T", [1, 3, 6])
def test_float64_ratebp_equals_a_hand_written_two_layer_ratebp(T):
    torch.manual_seed(T)
    net = TwoLayer(T).double()
    with torch.no_grad():
        net.fc1.weight.mul_(3.0)
        net.fc2.weight.mul_(3.0)
    x, c = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    out = ratebp.rate_forward(net, x)
    assert out.dtype == torch.float64
    (out * c).sum().backward()
    want = _hand_ratebp(net, x, c)
    assert want["fc1.weight"].abs().max() > 0 and want["fc2.weight"].abs().max() > 0
    for name, p in net.named_parameters():
        assert p.grad.dtype == torch.float64
        torch.testing.assert_close(p.grad, want[name], atol=1e-12, rtol=1e-12)


def test_float64_bptt_at_T1_is_spikingjelly_bitwise():
    """BPTT keeps float64 (no float32 membrane potential): output and every gradient bitwise spikingjelly's."""
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    x = (torch.randn(1, 8, 13, dtype=torch.float64) * 2).requires_grad_()
    lif = LIF()
    seen = []
    lif.node.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, m.v.dtype)))
    out = lif(x)
    (out * torch.arange(13.0, dtype=torch.float64)).sum().backward()
    assert seen == [(torch.float64, torch.float64)] and out.dtype == torch.float64
    x_ref = x.detach().clone().requires_grad_()
    ref = neuron.LIFNode(tau=lif.cfg.tau, decay_input=False, v_threshold=1.0, v_reset=None, detach_reset=True,
                         surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")(x_ref)
    (ref * torch.arange(13.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(out, ref) and torch.equal(x.grad, x_ref.grad) and x.grad.abs().max() > 0


@pytest.mark.parametrize("name", list_models("student"))
@pytest.mark.parametrize("method", ["ratebp", "bptt"])
def test_float64_step_on_every_student(name, method):
    """A float64 step keeps float64 everywhere: logits, LIF records, every gradient."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=2, **model_facts(name).small).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    logits = ratebp.rate_forward(m, x) if method == "ratebp" else m(x)
    assert logits.dtype == torch.float64
    logits.sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and g.dtype == torch.float64 for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


# ----------------------------------------------------------------------------- T=1: RateBP is BPTT
def _param_grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list_models("student"))
def test_two_pass_ratebp_at_T1_gives_bptt_gradients_on_every_student(name):
    """The fact behind ``ratebp.rate_is_bptt``: at T=1 the spike pass plus the rate pass give BPTT's logits
    and every parameter's gradient (float64, to rounding), so a step may take BPTT's single pass."""
    assert ratebp.rate_is_bptt(1) and not ratebp.rate_is_bptt(2)
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=1, **model_facts(name).small).double().train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    c = torch.randn(4, 10, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    (ratebp.rate_forward(m, x) * c).sum().backward()
    two_pass = _param_grads(m)
    m.zero_grad(set_to_none=True)
    m.load_state_dict(state)   # the same BN running statistics before the BPTT step
    (m(x) * c).sum().backward()
    bptt = _param_grads(m)
    assert two_pass.keys() == bptt.keys() and any(g.abs().max() > 0 for g in bptt.values())
    for n in bptt:
        torch.testing.assert_close(two_pass[n], bptt[n], atol=1e-10, rtol=1e-9, msg=n)


@pytest.mark.parametrize("method", ["ratebp", "hybrid"])
def test_ratebp_step_at_T1_takes_one_pass(method, monkeypatch):
    """A RateBP-based step at T=1 runs no spike pass (BPTT's one pass) and gives the two-pass step's loss and
    gradients (float64, to rounding); at T=2 it runs the spike pass."""
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner

    spike_passes = []
    real_spike_pass = ratebp.spike_pass
    monkeypatch.setattr(ratebp, "spike_pass", lambda *a, **k: spike_passes.append(1) or real_spike_pass(*a, **k))

    def step(T, two_pass=False):
        torch.manual_seed(0)
        cfg = TrainConfig(method=method, student="spiking_resnet18", teacher="cifar_resnet18", T=T,
                          student_kw={"width": 8}, teacher_kw={"width": 8})
        learner = Learner(cfg, 10, (3, 16, 16)).double().train()
        x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(10, (4,))
        spike_passes.clear()
        with monkeypatch.context() as mp:
            if two_pass:
                mp.setattr(ratebp, "rate_is_bptt", lambda T: False)
            loss, _, _ = learner(x, y)
        loss.backward()
        grads = {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}
        return float(loss.detach()), grads, len(spike_passes)

    loss1, grads1, passes1 = step(1)
    loss2, grads2, passes2 = step(1, two_pass=True)
    assert (passes1, passes2, step(2)[2]) == (0, 1, 1)
    assert abs(loss1 - loss2) < 1e-12 and grads1.keys() == grads2.keys()
    for n in grads1:
        torch.testing.assert_close(grads1[n], grads2[n], atol=1e-10, rtol=1e-9, msg=n)


# ----------------------------------------------------------------------------- the compiled spike pass
def _spike_records(m, x, loop):
    for lif in m.modules():
        if isinstance(lif, LIF):
            ratebp.set_spike_pass(lif, loop=loop)
    logits = ratebp.spike_pass(m, x)
    return logits, [(lif.rate.clone(), lif.elig.clone()) for lif in m.modules() if isinstance(lif, LIF)]


@pytest.mark.parametrize("name", list_models("student"))
def test_compiled_spike_pass_records_what_the_plain_loop_records(name):
    """``spike_loop = "compiled"`` (``ratebp.set_spike_pass(loop="compiled")``, which
    ``speed.apply(compile_spike_pass=True)`` calls) is the plain equations as one
    compiled kernel: the same spikes (so every later layer's input), rates and eligibilities, bitwise in float32."""
    from hybridkd_lib.training import speed

    if speed.compiler_works("cpu") is not None:
        pytest.skip(f"no working compiler here: {speed.compiler_works('cpu')}")
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, T=3, **model_facts(name).small).train()
    x = torch.randn(4, 3, 32, 32)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    plain_logits, plain = _spike_records(m, x, "plain")
    m.load_state_dict(state)
    compiled_logits, compiled = _spike_records(m, x, "compiled")
    assert len(plain) == len(compiled) > 0 and any(r.sum() > 0 for r, _ in plain)
    assert torch.equal(plain_logits, compiled_logits)
    for (r1, e1), (r2, e2) in zip(plain, compiled):
        assert torch.equal(r1, r2) and torch.equal(e1, e2)


@pytest.mark.parametrize("loop", ["fused", "plain", "compiled"])
def test_spike_records_keep_the_input_layout(loop):
    """Rate and eligibility ``[B, C, H, W]`` come out in ``x[t]``'s layout (channels_last stays channels_last, so the
    rate pass's convolutions get them without a reorder), with the values of contiguous input."""
    from hybridkd_lib.training import speed

    if loop == "compiled" and speed.compiler_works("cpu") is not None:
        pytest.skip(f"no working compiler here: {speed.compiler_works('cpu')}")
    torch.manual_seed(0)
    x = torch.randn(5 * 4, 8, 6, 6) * 1.5
    records = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        lif = LIF()
        ratebp.set_spike_pass(lif, loop=loop)
        ratebp.set_mode(lif, "spike")
        with torch.no_grad():
            spikes = lif(x.contiguous(memory_format=fmt).unflatten(0, (5, 4)))
        records[fmt] = spikes, lif.rate, lif.elig
        for r in (lif.rate, lif.elig):
            assert r.shape == (4, 8, 6, 6) and r.is_contiguous(memory_format=fmt), (loop, fmt, r.stride())
    (s1, r1, e1), (s2, r2, e2) = records.values()
    assert torch.equal(s1, s2) and torch.equal(r1, r2) and torch.equal(e1, e2) and r1.sum() > 0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted", "strided steps", "tokens transposed"])
@pytest.mark.parametrize("over_input", [False, True])
def test_fused_loop_in_blocks_records_what_the_plain_equations_record(layout, over_input):
    """The fused loop runs the elements of a step in blocks (``LIF.CPU_BLOCK``; here 7, which divides no map): the
    spikes, rates and eligibilities of ``spike_equations`` in every memory layout, written over the input or not,
    with the records in the input step's layout."""
    from hybridkd_lib.snn.neurons import spike_equations

    torch.manual_seed(0)
    base = torch.randn(6, 4, 8, 5, 5) * 1.5
    x = {"contiguous": base,
         "channels_last": base.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (6, 4)),
         "permuted": base.permute(0, 3, 1, 2, 4).contiguous().permute(0, 2, 3, 1, 4),
         "strided steps": torch.randn(12, 4, 8, 5, 5)[::2] * 1.5,
         "tokens transposed": torch.randn(6, 4, 8, 7).transpose(-1, -2) * 1.5}[layout]
    spikes, rate, elig = spike_equations(x, 0.2, 1.0, 4.0, 1.0, None, True)
    lif = LIF()
    lif.CPU_BLOCK, lif.writes_over_input = 7, over_input
    ratebp.set_mode(lif, "spike")
    with torch.no_grad():
        got = lif(x.clone() if over_input else x)
    assert torch.equal(got, spikes) and torch.equal(lif.rate, rate) and rate.sum() > 0
    torch.testing.assert_close(lif.elig, elig, atol=1e-6, rtol=1e-5)
    assert lif.rate.stride() == rate.stride() == lif.elig.stride()


def test_the_spike_pass_is_set_for_a_whole_model_and_refuses_gradients():
    """``ratebp.set_spike_pass`` is the one switch for a model's loop and in-place options; a LIF in ``spike``
    mode with autograd on is an error, not a silent BPTT."""
    m = create_model("spiking_resnet18", num_classes=10, T=2, width=4, in_chans=1)
    lifs = [x for x in m.modules() if isinstance(x, LIF)]
    assert ratebp.set_spike_pass(m, loop="plain") == len(lifs)
    assert {lif.spike_loop for lif in lifs} == {"plain"}
    assert ratebp.set_spike_pass(m, in_place=True) > 0
    with pytest.raises(ValueError, match=r"spike loop 'eager' not allowed; valid: fused, plain, compiled"):
        ratebp.set_spike_pass(m, loop="eager")
    ratebp.set_mode(lifs[0], "spike")
    with pytest.raises(RuntimeError, match=r"'spike' mode runs RateBP's graph-free spike pass"):
        lifs[0](torch.rand(2, 3, 4, requires_grad=True))
