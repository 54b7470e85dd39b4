"""Time and memory per training step vs T (the paper's Fig. 4), every method in one run.

Each (method, T) runs in a fresh process so that the CPU peak RSS belongs to
that configuration alone (CUDA: ``torch.cuda.max_memory_allocated``). Inputs
are synthetic CIFAR-shaped tensors: these are speed/memory figures, never accuracy.

Methods: ``forward_only`` (graph-free forward over T, no training: the floor's
first part), ``bptt``, ``bptt_ckpt`` (BPTT with per-stage gradient
checkpointing), ``bptt_kd``, ``ratebp``, ``kd``, ``hybrid`` (ours). Every
method's step is a trainer step: channels_last tensors, the optimizer update of
each parameter inside backward (``trainer.StepInBackward``) and, on the CPU, the
heap pages the step freed returned to the OS (``memory.release_freed_memory``).
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

BENCH_METHODS = ("forward_only", "bptt", "bptt_ckpt", "bptt_kd", "ratebp", "kd", "hybrid")


def _bptt_ckpt_logits(student, x):
    """BPTT whose blocks are recomputed in backward (only block boundaries ``[T, B, ...]`` are kept)."""
    h = student.forward_stem(x)
    for stage in student.stages:
        for block in (stage.children() if isinstance(stage, torch.nn.Sequential) else [stage]):
            h = grad_checkpoint(block, h, use_reentrant=False)
    return student.forward_head(h)


def run_one(method: str, T: int, student: str, teacher: str, batch_size: int, input_size: int,
            device: str, steps: int = 3, warmup: int = 1, student_kw=None, teacher_kw=None) -> dict:
    """Median step time and peak memory of one configuration, in this process."""
    from hybridkd_lib.memory import release_freed_memory
    from hybridkd_lib.trainer import Learner, StepInBackward, TrainConfig, make_optimizer

    if method not in BENCH_METHODS:
        raise ValueError(f"unknown bench method {method!r}; valid: {', '.join(BENCH_METHODS)}")
    dev = torch.device(device)
    torch.manual_seed(0)
    train_method = {"forward_only": "bptt", "bptt_ckpt": "bptt"}.get(method, method)
    cfg = TrainConfig(method=train_method, student=student, teacher=teacher, T=T,
                      student_kw=student_kw or {}, teacher_kw=teacher_kw or {})
    learner = Learner(cfg, 10, (3, input_size, input_size)).to(dev).train()
    amp = dev.type == "cuda"
    learner = learner.to(memory_format=torch.channels_last)  # as the trainer: faster convs on CPU and GPU
    opt = make_optimizer(cfg, learner.trainable())
    StepInBackward(opt)  # as the trainer: each parameter is updated (and its gradient freed) during backward
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    y = torch.randint(10, (batch_size,), device=dev)
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            if method == "forward_only":
                with torch.no_grad():
                    learner.student(x)
                release_freed_memory(dev)
                return
            if method == "bptt_ckpt":
                loss = torch.nn.functional.cross_entropy(_bptt_ckpt_logits(learner.student, x).float(), y)
            else:
                loss, _, _ = learner.step_loss(x, y)
        loss.backward()
        release_freed_memory(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    med = statistics.median(times)
    return {"method": method, "T": T, "step_time_s": round(med, 4), "step_times_s": [round(t, 4) for t in times],
            "peak_mem_mb": round(peak, 1), "images_per_s": round(batch_size / med, 2), "device": device_name(dev),
            "batch_size": batch_size, "input_size": input_size, "student": student, "teacher": teacher,
            "student_kw": student_kw or {}, "threads": torch.get_num_threads()}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench(methods, Ts, student="spiking_resnet18", teacher="cifar_resnet18", batch_size=32, input_size=32,
          device="cpu", steps=3, warmup=1, student_kw=None, teacher_kw=None, log=print) -> dict:
    """Every (method, T) in a fresh process; returns ``{"machine": ..., "records": [...]}``."""
    from hybridkd_lib.results import git_commit

    for m in methods:
        if m not in BENCH_METHODS:
            raise ValueError(f"unknown bench method {m!r}; valid: {', '.join(BENCH_METHODS)}")
    records = []
    for T in Ts:
        for m in methods:
            spec = dict(method=m, T=T, student=student, teacher=teacher, batch_size=batch_size,
                        input_size=input_size, device=device, steps=steps, warmup=warmup,
                        student_kw=student_kw, teacher_kw=teacher_kw)
            p = subprocess.run([sys.executable, "-m", "hybridkd_lib.efficiency", json.dumps(spec)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"bench {m} T={T} failed:\n{p.stderr[-2000:]}")
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            records.append(rec)
            log(f"{m:>12} T={T}: {rec['step_time_s']:.3f} s/step, {rec['peak_mem_mb']:.0f} MB, "
                f"{rec['images_per_s']:.1f} img/s")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "torch": torch.__version__,
               "git_commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for r in records:
        r["git_commit"] = machine["git_commit"]
    return {"machine": machine, "records": records}


if __name__ == "__main__":  # one configuration, JSON on the last stdout line
    spec = json.loads(sys.argv[1])
    print(json.dumps(run_one(**spec)))
