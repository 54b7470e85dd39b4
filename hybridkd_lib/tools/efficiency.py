"""Time and memory per training step vs T (the paper's Fig. 4), every method in one run.

Each (method, T) runs in a fresh process so that the CPU peak RSS belongs to
that configuration alone (CUDA: ``torch.cuda.max_memory_allocated``). Inputs
are synthetic CIFAR-shaped tensors: these are speed/memory figures, never accuracy.

Methods: ``forward_only`` (graph-free forward over T, no training), ``conv_floor`` (the
convolutions and linear layers of one ``ratebp`` step, timed alone: ``floor``), ``bptt``,
``bptt_ckpt`` (BPTT with per-stage gradient checkpointing), ``bptt_memopt`` (BPTT under spikingjelly's
memopt: checkpointing with spike compression, ``MEMOPT_LEVEL``), ``bptt_kd``, ``ratebp``, ``kd``,
``hybrid`` (ours). Every record also carries its own step's floor (``conv_floor_s``: the dense
products of one step of that method, timed alone in the same process) and ``floor_ratio``, its
step time over that floor. Every method's step is the trainer's step (``step.TrainingStep``: the layout of ``speed.layout``, the ``precision``
asked for on CUDA, and the CPU memory tricks of ``speed.apply``: the optimizer update of each parameter inside
backward, block temporaries overwritten, freed heap pages returned to the OS).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from hybridkd_lib.base import children
from hybridkd_lib.tools import floor
from hybridkd_lib.tools.defaults import (BENCH_BATCH_SIZE, BENCH_DEVICE, BENCH_INPUT_SIZE, BENCH_STEPS, BENCH_STUDENT,
                                         BENCH_PRECISION, BENCH_TEACHER, BENCH_TS, BENCH_WARMUP, CHILD_TIMEOUT_S)
from hybridkd_lib.snn import lif_backend
from hybridkd_lib.training import speed
from hybridkd_lib.method.methods import BENCH_VARIANTS, bench_methods
from hybridkd_lib.training.distributed import autocast
from hybridkd_lib.training.step import TrainingStep, peak_mem_mb, place, reset_peak


def _bptt_ckpt_logits(student, x):
    """BPTT whose blocks are recomputed in backward (only block boundaries ``[T, B, ...]`` are kept)."""
    h = student.forward_stem(x)
    for stage in student.stages:
        for block in (stage.children() if isinstance(stage, torch.nn.Sequential) else [stage]):
            h = grad_checkpoint(block, h, use_reentrant=False)
    return student.forward_head(h)


# spikingjelly's memopt (``optimize_memory``: selective gradient checkpointing with spike compression, then, on
# CUDA, spatial/temporal splitting and greedy unwrapping searched by measuring peak memory) at the strongest level
# each device runs: the search of levels 2-4 measures CUDA memory, so the CPU runs level 1
MEMOPT_LEVEL = {"cpu": 1, "cuda": 4}
MEMOPT_OPTIONS = dict(checkpoint_budget="memory", compress=True)


def _apply_memopt(student, x, dev: torch.device) -> dict:
    """Wrap the BPTT student's blocks with spikingjelly's memopt (``MEMOPT_LEVEL``, ``MEMOPT_OPTIONS``; the
    blocks of every stage are the candidates), probed on the bench batch ``x``; returns what was applied."""
    from spikingjelly.activation_based.memopt import optimize_memory

    blocks = tuple({type(b) for stage in student.stages
                    for b in (stage.children() if isinstance(stage, torch.nn.Sequential) else [stage])})
    level = MEMOPT_LEVEL.get(dev.type, 1)

    def probe(model):   # level 1 only reads the blocks' inputs: no graph, so the CPU's peak RSS is the steps' own
        with torch.set_grad_enabled(level > 1):
            return model(x)
    optimize_memory(student, blocks, probe, level=level, **MEMOPT_OPTIONS)
    wrapped = sum(type(m).__name__ == "CheckpointWrapper" for m in student.modules())
    return {"level": level, **MEMOPT_OPTIONS, "targets": sorted(b.__name__ for b in blocks),
            "checkpointed_modules": wrapped}


def run_one(method: str, T: int, student: str, teacher: str, batch_size: int, input_size: int,
            device: str, steps: int = BENCH_STEPS, warmup: int = BENCH_WARMUP, student_kw=None, teacher_kw=None,
            compile: bool = False, precision: str = BENCH_PRECISION) -> dict:
    """Median step time and peak memory of one configuration, in this process (``precision``: a CUDA step's, as
    ``TrainConfig.precision``); ``compile``: the spike pass as
    compiled kernels (``speed.apply``), whose build time (the first warm-up step's excess over the median
    step; 0 for ``conv_floor``, which times no steps) is reported apart as ``compile_s``. Peak memory is read after
    ``steps`` timed steps; then the step's conv floor is timed ``steps`` times, each followed by one more timed
    step, and the record gives the medians (``step_times_s``: all ``2 * steps`` steps)."""
    if method not in bench_methods():
        raise ValueError(f"unknown bench method {method!r}; valid: {', '.join(bench_methods())}")
    dev = torch.device(device)
    torch.manual_seed(0)
    learner, train_step = _bench_learner(BENCH_VARIANTS.get(method, method), T, student, teacher, input_size, dev,
                                         student_kw, teacher_kw, compile, precision)
    compiled = any(getattr(m, "spike_loop", None) == "compiled" for m in learner.modules())
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    y = torch.randint(10, (batch_size,), device=dev)
    x = x.contiguous(memory_format=speed.layout(learner, dev))
    memopt = _apply_memopt(learner.student, x, dev) if method == "bptt_memopt" else None
    step = _bench_step(method, learner, train_step, x, y, dev, precision)
    if compiled:
        warmup = max(warmup, 1)   # the kernels are built in the first step, never a timed one
    warmup_times = [_timed(step, dev) for _ in range(warmup)]
    reset_peak(dev)
    times, peak, calls, floor_s = _steps_and_floor(method, step, learner, dev, steps)
    med = statistics.median(times) if times else floor_s
    return {"method": method, "T": T, "step_time_s": round(med, 4), "step_times_s": [round(t, 4) for t in times],
            "peak_mem_mb": peak, "images_per_s": round(batch_size / med, 2), "device": device_name(dev),
            "conv_floor_s": round(floor_s, 4), "floor_ratio": round(med / floor_s, 3), "dense_calls": len(calls),
            "lif_implementation": lif_backend.bound(dev), "spike_loop": "compiled" if compiled else "fused",
            "compile_s": round(max(warmup_times[0] - med, 0.0), 2) if compiled and times else 0.0,
            "batch_size": batch_size, "input_size": input_size, "student": student, "teacher": teacher,
            "student_kw": student_kw or {}, "threads": torch.get_num_threads(), "precision": precision,
            **({"memopt": memopt} if memopt else {})}


def _bench_learner(train_method: str, T: int, student: str, teacher: str, input_size: int, dev: torch.device,
                   student_kw, teacher_kw, compile: bool, precision: str):
    """The learner and its training step for ``train_method``, built and placed as the trainer does."""
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner, make_optimizer

    cfg = TrainConfig(method=train_method, student=student, teacher=teacher, T=T,
                      student_kw=student_kw or {}, teacher_kw=teacher_kw or {}, compile_spike_pass=compile,
                      precision=precision)
    learner = place(Learner(cfg, 10, (3, input_size, input_size)).train(), dev)   # as the trainer
    opt = make_optimizer(cfg, learner.trainable())
    return learner, TrainingStep(learner, opt, dev, compile_spike_pass=cfg.compile_spike_pass,
                                 precision=precision)   # as the trainer


def _bench_step(method: str, learner, train_step, x, y, dev: torch.device, precision: str):
    """One step of ``method`` on the batch ``(x, y)``: a graph-free forward, a checkpointed BPTT step, or the
    trainer's step."""
    def step():
        if method == "forward_only":
            with autocast(dev, precision), torch.no_grad():
                learner.student(x)
            train_step.tricks.after_step()
        elif method == "bptt_ckpt":
            with autocast(dev, precision):
                loss = torch.nn.functional.cross_entropy(_bptt_ckpt_logits(learner.student, x).float(), y)
            train_step.backward_and_step(loss)
        else:
            train_step(x, y)
    return step


def _timed(step, dev: torch.device) -> float:
    """Seconds one call of ``step`` takes, CUDA work included."""
    t0 = time.perf_counter()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def _steps_and_floor(method: str, step, learner, dev: torch.device, steps: int):
    """``steps`` timed steps and the peak memory after them (none for ``conv_floor``), then the step's dense calls
    timed alone ``steps`` times, each followed by one more timed step; returns ``(step times, peak MB, the dense
    calls, the floor's median seconds)``."""
    times, peak = [], None
    if method != "conv_floor":   # the floor's record is its timed products alone (no memory figure)
        times += [_timed(step, dev) for _ in range(steps)]
        peak = round(peak_mem_mb(dev), 1)   # before the floor's own tensors exist
    calls = floor.record(step, learner)   # one more step, its dense calls listed (not timed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    # the floor and more steps in turns: on a shared machine a slower minute then slows both sides of the ratio
    floor_times = []
    for i in range(steps):
        floor_times.append(floor.time_calls(calls, dev, repeats=1, warmup=i == 0))
        if method != "conv_floor":
            times.append(_timed(step, dev))
    return times, peak, calls, statistics.median(floor_times)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_bench_args(methods, Ts, steps=1, warmup=0, batch_size=1, input_size=32, out=None, precision="fp32",
                     device="cpu", timeout_s=None) -> None:
    """Refuse bad bench input before anything is measured (and check ``out`` can be written); a method
    registered under a variant's name (a plug-in's ``conv_floor``) is refused, never silently timed as the
    variant."""
    from hybridkd_lib.base.checks import check_number
    from hybridkd_lib.method.methods import methods_where
    from hybridkd_lib.training.config import check_precision

    check_precision(precision, device)
    if timeout_s is not None:
        check_number("timeout", timeout_s, low=0, low_open=True)
    taken = [m for m in methods_where() if m in BENCH_VARIANTS]
    if taken:
        raise ValueError(f"method {taken[0]!r} is registered (by a plug-in) under the name of bench's variant of "
                         f"{BENCH_VARIANTS[taken[0]]!r}; give the method a name of its own")
    bad = [m for m in methods if m not in bench_methods()]
    if bad or not methods:
        raise ValueError(f"unknown bench method(s) {bad or methods}; valid: {', '.join(bench_methods())}")
    for name, values, low in (("T", Ts, 1), ("steps", [steps], 1), ("warmup", [warmup], 0),
                              ("batch_size", [batch_size], 1), ("input_size", [input_size], 1)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise ValueError(f"{name}={values if name == 'T' else values[0]!r} not allowed; "
                             f"integers >= {low}")
    if out is not None:
        from hybridkd_lib.base.results import check_writable_folder

        out = Path(out)
        if out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a folder; expected a JSON file path, e.g. {out / 'bench.json'}")
        check_writable_folder(out.parent, "the folder of --out")


OUT_OF_MEMORY = ("can't allocate memory", "CUDA out of memory", "OutOfMemoryError", "MemoryError")


def _child_failure(method: str, T: int, rc: int, stderr: str) -> str:
    """One line for a bench configuration whose process failed: out of memory, killed, or its error."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    if rc == -9 or any(m in stderr for m in OUT_OF_MEMORY):
        said = next((l for l in reversed(lines) if any(m in l for m in OUT_OF_MEMORY)), "killed (SIGKILL)")
        return (f"bench {method} T={T} ran out of memory ({said.strip()[:300]}); use a smaller --batch-size, "
                f"--input-size or T")
    return f"bench {method} T={T} failed (exit status {rc}): {lines[-1][:500] if lines else 'no message'}"


def _child_record(stdout: str, said: set, log) -> dict:
    """The record on a configuration's last stdout line; the lines before it (what the step said, e.g. that
    the compiled spike pass fell back to the fused loop, and why) are passed to ``log``, each once per bench."""
    lines = stdout.strip().splitlines()
    for line in lines[:-1]:
        if line.strip() and line not in said:
            said.add(line)
            log(line)
    return json.loads(lines[-1])


def bench(methods, Ts=BENCH_TS, student=BENCH_STUDENT, teacher=BENCH_TEACHER, batch_size=BENCH_BATCH_SIZE,
          input_size=BENCH_INPUT_SIZE, device=BENCH_DEVICE, steps=BENCH_STEPS, warmup=BENCH_WARMUP, student_kw=None,
          teacher_kw=None, log=print, fresh_process: bool = True, out: str | Path | None = None,
          timeout_s: float | None = CHILD_TIMEOUT_S, compile: bool = False, precision: str = BENCH_PRECISION) -> dict:
    """Every (method, T); returns ``{"machine": ..., "records": [...]}``. ``fresh_process`` runs each configuration in its own process: on the CPU because peak RSS cannot be reset, on CUDA because
    spikingjelly reads the LIF implementation ``lif_backend.choose`` picked (``machine["lif_choice"]``)
    when it is imported (``False``: one process, with the implementation this process has bound). ``out``:
    a JSON file rewritten (atomically) after every configuration, so a later failure keeps the earlier ones.
    ``timeout_s``: a configuration's process still running after that long is stopped (an error naming it).
    ``compile``: the spike pass as compiled kernels; ``precision``: a CUDA step's (``run_one``)."""
    check_bench_args(methods, Ts, steps, warmup, batch_size, input_size, out, precision, device, timeout_s)
    from hybridkd_lib.models import check_model_kwargs, check_model_name

    check_model_name(student, "student")
    check_model_name(teacher, "teacher")
    check_model_kwargs(student, student_kw or {}, "student_kw", also={"T": 1})
    check_model_kwargs(teacher, teacher_kw or {}, "teacher_kw")
    from hybridkd_lib.base.results import git_commit, write_json

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "torch": torch.__version__,
               "git_commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    choice = lif_backend.choose(device, log=log)   # CUDA: the fastest correct kernels for BPTT's LIF
    machine["lif_choice"] = choice
    child_env = {**os.environ, lif_backend.VARIABLE: choice["implementation"]}
    records, said = [], set()
    for T in Ts:
        for m in methods:
            spec = dict(method=m, T=T, student=student, teacher=teacher, batch_size=batch_size,
                        input_size=input_size, device=device, steps=steps, warmup=warmup,
                        student_kw=student_kw, teacher_kw=teacher_kw, compile=compile, precision=precision)
            if fresh_process:
                p = children.run([sys.executable, "-m", "hybridkd_lib.tools.efficiency", json.dumps(spec)],
                                 f"bench configuration {m} T={T}", timeout_s, env=child_env)
                if p.returncode != 0:
                    raise RuntimeError(_child_failure(m, T, p.returncode, p.stderr))
                rec = _child_record(p.stdout, said, log)
            else:
                rec = run_one(**spec)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            rec["git_commit"] = machine["git_commit"]
            records.append(rec)
            if out is not None:
                write_json(out, {"machine": machine, "records": records})
            mem = "" if rec.get("peak_mem_mb") is None else f", {rec['peak_mem_mb']:.0f} MB"
            ratio = "" if rec.get("floor_ratio") is None else f", {rec['floor_ratio']:.2f}x its conv floor"
            log(f"{m:>12} T={T}: {rec['step_time_s']:.3f} s/step{mem}, {rec['images_per_s']:.1f} img/s{ratio}")
    return {"machine": machine, "records": records}


def two_step_check(spec: dict, device: str, batch_size: int = 8, steps: int = 2) -> dict:
    """Two training steps of one set-up (``book.plan.plan_setups``) at full size on random inputs of the dataset's
    shape, in fp32 as the full profile trains; teachers are randomly initialised (no checkpoint is read)."""
    from hybridkd_lib.data.datasets import dataset_info
    from hybridkd_lib.training.config import TrainConfig
    from hybridkd_lib.training.learner import Learner, make_optimizer

    from hybridkd_lib.models import WEIGHT_OPTIONS

    dev = torch.device(device)
    torch.manual_seed(0)
    info = dataset_info(spec["dataset"])
    cfg = TrainConfig(method=spec["method"], dataset=spec["dataset"], student=spec["student"],
                      teacher=spec["teacher"] or "cifar_resnet18", T=spec["T"], student_kw=spec["student_kw"],
                      teacher_kw={k: v for k, v in spec["teacher_kw"].items() if k not in WEIGHT_OPTIONS},
                      teacher_input_size=spec["teacher_input_size"])
    shape = tuple(spec["T"] if d == "T" else d for d in info.input_shape)
    sample_shape = shape[1:] if info.input_shape[0] == "T" else shape
    learner = place(Learner(cfg, info.num_classes, sample_shape).train(), dev)   # as the trainer
    train_step = TrainingStep(learner, make_optimizer(cfg, learner.trainable()), dev)
    # a frame sequence is time-major [T, B, ...], as the loader batches it
    x = (torch.randn(shape[0], batch_size, *shape[1:], device=dev) if info.input_shape[0] == "T"
         else torch.randn(batch_size, *shape, device=dev))
    y = torch.randint(info.num_classes, (batch_size,), device=dev)
    reset_peak(dev)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss, _ = train_step(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = peak_mem_mb(dev)
    return {**{k: spec[k] for k in ("name", "method", "dataset", "student", "teacher", "T")},
            "input": list(x.shape), "batch_size": batch_size, "step_times_s": [round(t, 4) for t in times],
            "losses": losses, "finite": all(l == l and abs(l) != float("inf") for l in losses),
            "peak_mem_mb": round(peak, 1), "device": device_name(dev)}


if __name__ == "__main__":  # one configuration, JSON on the last stdout line
    spec = json.loads(sys.argv[1])
    print(json.dumps(run_one(**spec)))


def run_bench(methods, Ts, out: str | Path, **kw) -> dict:
    """Fig. 4's run: ``bench`` every (method, T) into ``out/bench.json`` (rewritten after each
    configuration), then ``out/result.json``; returns ``bench``'s output. ``kw``: ``bench``'s options."""
    from hybridkd_lib.base.results import write_json

    out = Path(out)
    bench_out = bench(methods, Ts, out=out / "bench.json", **kw)
    write_json(out / "result.json", {"kind": "efficiency", "records": len(bench_out["records"]),
                                     "device": bench_out["records"][0]["device"], **bench_out["machine"],
                                     "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return bench_out
