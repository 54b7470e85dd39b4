"""Which spikingjelly multi-step LIF implementation BPTT runs on a device, and the fastest correct one.

spikingjelly 2.0 binds its multi-step LIF per CUDA device to ``"cuda"`` (its native kernels),
``"triton"`` or ``"torch"`` (the Python loop over T; the only one on the CPU, ``"torch-reference"``).
``SJ_LIF_CUDA_IMPLEMENTATION``, read when spikingjelly is imported, forces one;
``functional.neuron_implementation("lif", device)`` names the bound one (``bound``).

``choose(device)`` makes BPTT, the baseline of Fig. 4, as fast as it fairly can be: each CUDA candidate runs
in its own process (the variable must be set before the import) one forward and backward of a multi-step
LIF on the same random input; a candidate counts only if spikingjelly bound it, its spikes equal the
``torch`` implementation's and its input gradient agrees to 1e-5; the fastest of those wins, else
``torch`` (a value of the variable the user set is kept). The bench sets the variable for its configurations' processes, and every record names the
implementation that ran.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIABLE = "SJ_LIF_CUDA_IMPLEMENTATION"
CANDIDATES = ("cuda", "triton")        # spikingjelly 2.0's CUDA kernels, tried before its torch loop
CHECK_SHAPE = (8, 32, 64, 16, 16)      # [T, B, C, H, W]: a ResNet-18 stage at T=8, batch 32
CHECK_TIMEOUT_S = 600.0                # a candidate's process (a first Triton or CUDA build compiles)


def bound(device: torch.device | str) -> str:
    """The implementation spikingjelly has bound the multi-step LIF to on ``device`` in this process."""
    from spikingjelly.activation_based.functional import neuron_implementation

    return str(neuron_implementation("lif", torch.device(device))["implementation"])


def _run_check(device: str, shape: tuple, repeats: int, out: Path) -> dict:
    """In this process: one LIF forward/backward (saved to ``out``), then the median of ``repeats`` timed ones."""
    from hybridkd_lib.snn.neurons import LIF

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(shape, generator=g) * 1.5).to(dev)
    c = torch.randn(shape, generator=g).to(dev)
    lif = LIF().to(dev)

    def step():
        x = x0.clone().requires_grad_(True)
        spikes = lif(x)
        (spikes * c).sum().backward()
        return spikes, x.grad

    spikes, grad = step()
    torch.save({"spikes": spikes.cpu(), "grad": grad.cpu()}, out)
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return {"implementation": bound(dev), "time_s": round(statistics.median(times), 6)}


def check(name: str, device: str, folder: Path, shape: tuple = CHECK_SHAPE, repeats: int = 10,
          timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """Implementation ``name`` on ``device`` in its own process: ``{"implementation": what spikingjelly bound,
    "time_s": median forward+backward, "tensors": the saved file}``, or ``{"error": ...}``."""
    from hybridkd_lib.base import children

    out = Path(folder) / f"lif_{name}.pt"
    cmd = [sys.executable, "-m", "hybridkd_lib.snn.lif_backend", device, json.dumps(list(shape)), str(repeats), str(out)]
    try:
        p = children.run(cmd, f"LIF implementation check {name!r}", timeout_s,
                         env={**os.environ, VARIABLE: name})
    except children.ChildTimeout as e:
        return {"error": str(e)}
    if p.returncode != 0:
        lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
        return {"error": lines[-1][:300] if lines else f"exit status {p.returncode}"}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "tensors": str(out)}


def agrees(result: dict, reference: dict) -> bool:
    """The candidate's spikes equal the reference's and its input gradient is within 1e-5."""
    a = torch.load(result["tensors"], weights_only=True)
    b = torch.load(reference["tensors"], weights_only=True)
    return torch.equal(a["spikes"], b["spikes"]) and torch.allclose(a["grad"], b["grad"], rtol=1e-5, atol=1e-5)


def pick(results: dict[str, dict], reference: dict) -> str:
    """The fastest candidate that spikingjelly bound as asked and that ``agrees`` with ``reference``; else torch."""
    ok = {n: r for n, r in results.items()
          if "error" not in r and r.get("implementation") == n and agrees(r, reference)}
    return min(ok, key=lambda n: ok[n]["time_s"]) if ok else "torch"


def choose(device: torch.device | str, shape: tuple = CHECK_SHAPE, candidates: tuple = CANDIDATES,
           log=print) -> dict:
    """``{"implementation": the choice, "checked": {name: time, or why it was not taken}}``. On the CPU
    spikingjelly has one implementation and nothing is checked."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return {"implementation": "torch", "checked": {}}
    if os.environ.get(VARIABLE, "auto") != "auto":   # the user's own choice is kept
        log(f"BPTT's LIF on {dev}: {os.environ[VARIABLE]} (set by {VARIABLE})")
        return {"implementation": os.environ[VARIABLE], "checked": {}, "set_by": VARIABLE}
    return check_and_pick(dev, shape, candidates, log)


def check_and_pick(dev: torch.device, shape: tuple, candidates: tuple, log=print) -> dict:
    """``choose``'s checks on ``dev``: the torch reference, then each candidate, each in its own process."""
    with tempfile.TemporaryDirectory(prefix="hybridkd_lif_") as folder:
        reference = check("torch", str(dev), Path(folder), shape)
        if "error" in reference:
            raise RuntimeError(f"the torch LIF implementation failed on {dev}: {reference['error']}")
        results = {n: check(n, str(dev), Path(folder), shape) for n in candidates}
        choice = pick(results, reference)
        checked = {"torch": f"{reference['time_s']} s"}
        for n, r in results.items():
            if "error" in r:
                checked[n] = f"not taken: {r['error']}"
            elif r.get("implementation") != n:
                checked[n] = f"not taken: spikingjelly bound {r.get('implementation')!r} instead"
            else:
                checked[n] = f"{r['time_s']} s" + ("" if agrees(r, reference) else ", not taken: differs from torch")
    log(f"BPTT's LIF on {dev}: {choice} ({'; '.join(f'{k}: {v}' for k, v in checked.items())})")
    return {"implementation": choice, "checked": checked}


if __name__ == "__main__":   # one check: DEVICE SHAPE_JSON REPEATS OUT_FILE; JSON on the last stdout line
    dev_arg, shape_arg, repeats_arg, out_arg = sys.argv[1:5]
    print(json.dumps(_run_check(dev_arg, tuple(json.loads(shape_arg)), int(repeats_arg), Path(out_arg))))
