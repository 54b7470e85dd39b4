"""One trainer for every method: ``ann``, ``bptt``, ``bptt_kd``, ``ratebp``, ``kd``, ``hybrid``.

A run writes, into ``out``: ``checkpoints/epoch_NNNN.pt`` every epoch (atomic,
the last two kept; a rerun resumes from the newest readable one),
``metrics.csv`` (one row per epoch), ``model.pt`` (final weights) and, once at
the very end, ``result.json``. Data order, augmentation RNG and scheduler are
functions of (seed, epoch) and part of the checkpoint, so a killed and resumed
CPU run ends with exactly the weights of an uninterrupted one.

The run's configuration and its checks live in ``config``, what it trains (``Learner``) in ``learner``,
where each process trains in ``distributed``, the folder bound to the run's settings in ``runfolder``, the
set-up in ``session`` and starting several processes in ``launch``; this module is the run itself: the
epoch loop (``train_one_epoch``, ``evaluate``), the final model and the result.

Several processes (``torchrun``, one per GPU, one or several machines): PyTorch
``DistributedDataParallel`` averages the gradients (NCCL on CUDA, gloo on CPU),
every training BN is synchronised (``layers.convert_sync_batchnorm``),
``batch_size`` is the global batch split evenly across processes, evaluation is
sharded, and rank 0 alone reads checkpoints (and broadcasts them) and writes.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from hybridkd_lib.base import checkpoint, results
from hybridkd_lib.training.config import TrainConfig, validate
from hybridkd_lib.training.distributed import Distributed, broadcast_from_main, init_distributed
from hybridkd_lib.training.learner import Learner
from hybridkd_lib.training.runfolder import (SETTINGS_FILE, bind_run_folder, record_settings, run_settings,
                                          write_metrics)
from hybridkd_lib.training.session import Session, setup
from hybridkd_lib.training.step import peak_mem_mb


@torch.no_grad()
def recompute_bn_stats(learner: Learner, batches: list, env: Distributed) -> None:
    """Replace the BN running statistics of the trained model (and the alignment modules) by their
    average over ``batches``, each passed as in a training step (weights unchanged): the statistics
    evaluation uses then no longer drift with the last few batches' sampling noise, which spiking
    thresholds turn into flipped spikes (precise BN, as in pycls/detectron2)."""
    if not batches:
        return
    bns = [m for mod in learner.trained_modules() for m in mod.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    was = learner.training
    learner.train()
    try:
        for k, (x, y) in enumerate(batches):
            for m in bns:
                m.momentum = 1.0 / (k + 1)      # a cumulative average over the batches
            with env.autocast():
                learner.step_loss(*env.put(x, y))
    finally:
        for m, momentum in zip(bns, kept):
            m.momentum = momentum
        learner.train(was)


# ----------------------------------------------------------------------------- the loop
def train_one_epoch(s: Session, epoch: int) -> float:
    """One epoch of training steps; returns the mean training loss (over every process)."""
    cfg, env = s.cfg, s.env
    s.sampler.set_epoch(epoch)                                      # data order: f(seed, epoch)
    torch.manual_seed(cfg.seed * 100_003 + epoch + 1 + 1_000_003 * env.rank)  # augmentation, dropout
    s.learner.train()
    bar = tqdm(s.train_loader, total=s.steps_per_epoch, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and env.main), leave=False)
    loss_sum, n_seen, pending, parts = torch.zeros((), device=env.device), 0, [], {}
    for step, (x, y) in enumerate(bar):
        if step >= s.steps_per_epoch:
            break
        loss, parts = s.step(*env.put(x, y))
        if cfg.lr_step == "step":
            s.sched.step()
        loss_sum += loss.detach() * len(y)
        n_seen += len(y)
        pending.append(loss.detach())
        if len(pending) == s.check_every or step + 1 == s.steps_per_epoch:
            _check_finite(pending, step + 1 - len(pending), epoch, parts, env)
            pending = []
            bar.set_postfix(loss=f"{float(loss_sum) / n_seen:.3f}")
    totals = env.all_reduce(torch.stack([loss_sum.float(), torch.tensor(float(n_seen), device=env.device)]))
    return float(totals[0] / totals[1].clamp_min(1))


def _check_finite(losses: list, first_step: int, epoch: int, parts: dict, env: Distributed):
    """Stop the run (on every process alike) at a non-finite loss, naming the first such step."""
    values = torch.stack(losses)
    finite = env.all_reduce(torch.isfinite(values).all().to(torch.int32), op="min")
    if int(finite):
        return
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise FloatingPointError(f"non-finite loss {float(values[i])} at epoch {epoch + 1}, step {first_step + i + 1} "
                                 f"(parts: { {k: float(v) for k, v in parts.items()} }); stopping the run")
    raise FloatingPointError(f"non-finite loss on another process at epoch {epoch + 1}; stopping the run")


@torch.no_grad()
def evaluate(learner: Learner, loader, env: Distributed, with_teacher: bool = True) -> dict:
    """Top-1 (%) of every network the method names (``Method.metric_names``: the SNN, or the ANN of a teacher
    run; the teacher; each hybrid M_k) over every process's shard of the test set (counts all-reduced; one
    host sync at the end)."""
    was = learner.training
    learner.eval()
    names = learner.spec.metric_names(learner, with_teacher)
    counts = torch.zeros(1 + len(names), dtype=torch.long, device=env.device)  # n, then one per name
    for x, y in loader:
        x, y = env.put(x, y)
        with env.autocast():
            logits = learner.spec.named_predictions(learner, x, with_teacher)
        counts[0] += len(y)
        for k, name in enumerate(names):
            counts[1 + k] += (logits[name].argmax(-1) == y).sum()
    env.all_reduce(counts)
    learner.train(was)
    n, *hits = counts.tolist()
    return {name: 100.0 * h / max(n, 1) for name, h in zip(names, hits)}


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, on_epoch_end=None, log=print, overwrite: bool = False) -> dict:
    """Run (or resume) one training run; returns the result dict also saved as ``result.json``.

    The run folder is bound to the run's settings (``settings.json``, written once the set-up succeeded,
    so a run refused there leaves the folder free): the same settings resume (or, when finished, return
    the result untouched; a finished run whose ``model.pt`` is gone gets it back from its last
    checkpoint), other settings stop before any work unless ``overwrite`` starts over."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    env = init_distributed(cfg.device, cfg.precision)
    try:
        folder = bind_run_folder(cfg, env, overwrite)
        if folder != "new" and env.main and not (Path(cfg.out) / SETTINGS_FILE).is_file():
            record_settings(cfg)   # recovered from the run's checkpoint or result: recorded again
        if folder == "finished":
            if env.main:
                log(f"already finished with these settings: {Path(cfg.out) / 'result.json'} (nothing was changed)")
            return broadcast_from_main(results.read_result(cfg.out) if env.main else None, env)
        s, state = setup(cfg, env, log)
        if folder == "new" and env.main:
            record_settings(cfg)
        if folder == "restore":
            return _restore_model(s, state, log)
        return _run_epochs(s, state, on_epoch_end, log)
    finally:
        env.close()


def _restore_model(s: Session, state: dict | None, log) -> dict:
    """A finished run whose ``model.pt`` is gone: write it again from the last epoch's checkpoint (the
    final weights); the result is kept as it was."""
    out = Path(s.cfg.out)
    if state is None or state["epoch"] + 1 != s.cfg.epochs:
        raise ValueError(f"{out / 'model.pt'} is missing or unreadable and no checkpoint of the last epoch is left "
                         f"to restore it from; pass --overwrite to train the run again")
    if s.env.main:
        _save_model(s)
        log(f"restored {out / 'model.pt'} from {state['path']} (the result was kept)")
    s.env.barrier()
    return broadcast_from_main(results.read_result(out) if s.env.main else None, s.env)


def _run_epochs(s: Session, state: dict | None, on_epoch_end, log) -> dict:
    """The epoch loop (train, evaluate, checkpoint) from ``state``, then the final model and result."""
    cfg, env, out = s.cfg, s.env, Path(s.cfg.out)
    start_epoch, history, train_time = 0, [], 0.0
    if state is not None:
        start_epoch, history, train_time = state["epoch"] + 1, state["history"], state["train_time_s"]
        if env.main:
            log(f"resuming from {state['path']} (epoch {state['epoch'] + 1} of {cfg.epochs} done)")
    teacher_top1 = None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(s, epoch)
        if cfg.lr_step == "epoch":
            s.sched.step()
        train_time += time.perf_counter() - t0
        recompute_bn_stats(s.learner, s.bn_batches, env)
        metrics = evaluate(s.learner, s.test_loader, env, with_teacher=teacher_top1 is None)
        teacher_top1 = metrics.get("teacher_top1", teacher_top1)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": s.sched.get_last_lr()[0],
               "top1": metrics["top1"], "train_time_s": train_time}
        row.update({k: v for k, v in metrics.items() if k not in ("top1", "teacher_top1")})   # the method's own
        history.append(row)
        if env.main:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}, "
                + ", ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if k != "teacher_top1"))
            _save_epoch(s, epoch, history, train_time)
        env.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    s.step.close()
    final = evaluate(s.learner, s.test_loader, env, with_teacher=True)
    result = _result(s, final, history, train_time)
    if env.main:
        result["spike_costs"] = inference_costs(s)
        _save_final(s, result)
        log(f"done: top1 {result['top1']:.2f}% -> {out / 'result.json'}")
    env.barrier()
    return result


def inference_costs(s: Session) -> dict:
    """What the trained network costs at inference (``Method.inference_costs``): firing rates, synaptic
    operations and energy of the student, or the MACs of a teacher run, counted once on this process's test set
    (the whole test set in a single-process run), in float32 without autocast."""
    learner, was = s.learner, s.learner.training
    learner.eval()
    try:
        return learner.spec.inference_costs(learner, (s.env.put(x, y)[0] for x, y in s.test_loader))
    finally:
        learner.train(was)


def _save_epoch(s: Session, epoch: int, history: list, train_time: float) -> None:
    """``metrics.csv`` and the epoch's checkpoint (all a resumed run needs), each written atomically."""
    out = Path(s.cfg.out)
    write_metrics(out / "metrics.csv", history)
    checkpoint.save_epoch(out / "checkpoints", epoch, {
        "epoch": epoch, "learner": s.learner.state_dict(), "optimizer": s.opt.state_dict(),
        "scheduler": s.sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
        "train_time_s": train_time, "settings": run_settings(s.cfg),
        **({"grad_scaler": s.step.scaler.state_dict()} if s.step.scaler is not None else {})})


def _save_model(s: Session) -> None:
    """``model.pt``: architecture, keywords and weights, enough to rebuild the model."""
    learner = s.learner
    checkpoint.atomic_save({"arch": learner.arch, "model_kw": learner.model_kw, "num_classes": s.num_classes,
                            "model": learner.model.state_dict(),
                            **({"aligns": learner.aligns.state_dict()} if learner.aligns is not None else {})},
                           Path(s.cfg.out) / "model.pt")


def _save_final(s: Session, result: dict) -> None:
    """``model.pt``, then ``result.json``."""
    _save_model(s)
    results.write_json(Path(s.cfg.out) / "result.json", result)


def _result(s: Session, final: dict, history: list, train_time: float) -> dict:
    """``top1`` is the final epoch's test accuracy; ``best_top1`` the best epoch's (what the RateBP
    reference logs), at ``best_epoch``."""
    cfg, dev, networks = s.cfg, s.env.device, s.learner.spec.networks
    best = max(history, key=lambda r: r["top1"]) if history else {"top1": final["top1"], "epoch": cfg.epochs}
    return {
        **{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "settings": run_settings(cfg),
        "loss_config": cfg.loss_cfg.to_dict(),
        "student": cfg.student if "student" in networks else None,
        "teacher": cfg.teacher if "teacher" in networks else None,
        "neuron_config": s.learner.student.neuron_cfg.to_dict() if "student" in networks else None,
        "top1": final["top1"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        **s.learner.spec.result_fields(final),
        "train_time_s": round(train_time, 2),
        "peak_mem_mb": round(peak_mem_mb(dev), 1),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "world_size": s.env.world,
        "batch_size_per_process": cfg.batch_size // s.env.world,
        "git_commit": results.git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }


