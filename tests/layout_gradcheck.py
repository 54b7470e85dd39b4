"""Child of ``test_layout.py``: one RateBP and one BPTT step of every registered student, built and laid
out as the trainer does (``speed.to_layout``), against the same step in float64 (contiguous, no oneDNN
kernel); prints one JSON line ``{"errors": {case: largest relative error of a weight gradient}}``.

A deep spiking network is chaotic in its thresholds: one membrane potential within float32 rounding of
the threshold spikes in one precision and not in the other, and the flip spreads. Such a draw compares
two different networks, so each case takes the first input seed whose spikes (every LIF output) agree
exactly in both precisions. A kernel that computes wrong weight gradients leaves the forward spikes alone,
so it fails on that seed too. Run as ``python tests/layout_gradcheck.py [--channels-last]``."""
import json
import sys

import torch

from hybridkd_lib.training import speed
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.learner import Learner
from hybridkd_lib.models import list_models, model_facts
from hybridkd_lib.snn.neurons import LIF

CASES = [(name, model_facts(name).small) for name in list_models("student")] + [("spiking_resnet18", {"width": 4})]
SEEDS = range(8)


def step(cfg: TrainConfig, dtype: torch.dtype, x: torch.Tensor, y: torch.Tensor, channels_last: bool = False):
    """The weight gradients (float64) and every LIF output of one training step in ``dtype``."""
    torch.manual_seed(0)
    learner = Learner(cfg, 10, tuple(x.shape[1:])).to(dtype).train()
    if dtype == torch.float32:   # the trainer's layout; float64 is the contiguous reference
        learner = learner.to(memory_format=torch.channels_last) if channels_last else speed.to_layout(learner, "cpu")
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().double()))
             for m in learner.modules() if isinstance(m, LIF)]
    loss, _, _ = learner.step_loss(x.to(dtype), y)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.double() for n, p in learner.model.named_parameters() if p.grad is not None and p.ndim > 1}
    return grads, outputs


def case_error(name: str, small: dict, method: str, channels_last: bool) -> dict:
    cfg = TrainConfig(method=method, student=name, T=2, student_kw=small)
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=gen), torch.tensor([seed % 10, 3])
        g32, out32 = step(cfg, torch.float32, x, y, channels_last)
        g64, out64 = step(cfg, torch.float64, x, y)
        assert g32.keys() == g64.keys() and g32, (name, method)
        if all(torch.equal(a, b) for a, b in zip(out32, out64)):
            err = max(((g32[k] - g64[k]).norm() / g64[k].norm().clamp_min(1e-30)).item() for k in g64)
            return {"error": err, "seed": seed}
    return {"error": None, "seed": None}


def main() -> None:
    channels_last = "--channels-last" in sys.argv   # force the layout the guard avoids (to show the bug)
    errors = {f"{name} {json.dumps(small)} {method}": case_error(name, small, method, channels_last)
              for name, small in CASES for method in ("ratebp", "bptt")}
    print(json.dumps({"threads": torch.get_num_threads(), "errors": errors}))


if __name__ == "__main__":
    main()
