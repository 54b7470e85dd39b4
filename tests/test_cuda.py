"""CUDA variants (skipped without a GPU; scripts/gpu_check.sh runs them on a GPU machine)."""
import pytest
import torch

from hybridkd_lib.snn import ratebp
from hybridkd_lib.models import create_model
from hybridkd_lib.training.config import TrainConfig, check_device
from hybridkd_lib.training.learner import Learner

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_device_refused_clearly_without_gpu():
    if torch.cuda.is_available():
        check_device("cuda")
    else:
        with pytest.raises(ValueError, match="device='cuda' not available here; valid: cpu"):
            check_device("cuda")


@cuda
def test_rate_logits_match_spike_logits_on_cuda():
    torch.manual_seed(0)
    m = create_model("spiking_resnet18", width=16, T=4).cuda().train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    spike = ratebp.spike_pass(m, x)
    ratebp.set_mode(m, "rate")
    rate = m(x)
    ratebp.set_mode(m, "bptt")
    torch.testing.assert_close(rate.detach(), spike, atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.parametrize("method", ["bptt", "ratebp", "kd", "hybrid"])
def test_bf16_training_step_on_cuda(method):
    torch.manual_seed(0)
    cfg = TrainConfig(method=method, student_kw={"width": 16}, teacher_kw={"width": 16}, T=4)
    learner = Learner(cfg, 10, (3, 32, 32)).cuda().to(memory_format=torch.channels_last).train()
    params = learner.trainable()
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    x = torch.randn(32, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(10, (32,), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", torch.bfloat16):
            loss, _, _ = learner.step_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@cuda
def test_compiled_spike_pass_on_cuda_records_what_the_plain_loop_records():
    """The compiled spike pass on CUDA (Triton) against the plain loop: the same spikes and rates; the
    eligibility to float32 rounding (Triton's sigmoid need not be ATen's to the last bit)."""
    from hybridkd_lib.snn.neurons import compiled_spike_equations, spike_equations

    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, 8, 8, device="cuda") * 1.5
    got = compiled_spike_equations()(x, 0.2, 1.0, 4.0, 1.0, None, True)
    want = spike_equations(x, 0.2, 1.0, 4.0, 1.0, None, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], atol=1e-6, rtol=1e-5)


@cuda
def test_lif_choice_on_cuda_names_a_bound_implementation_that_agrees():
    from hybridkd_lib.snn import lif_backend

    choice = lif_backend.choose("cuda", shape=(4, 8, 16, 8, 8), log=print)
    assert choice["implementation"] in ("cuda", "triton", "torch") and "torch" in choice["checked"]
