"""One trainer for every method: ``ann``, ``bptt``, ``bptt_kd``, ``ratebp``, ``kd``, ``hybrid``.

A run writes, into ``out``: ``checkpoints/epoch_NNNN.pt`` every epoch (atomic,
the last two kept; a rerun resumes from the newest readable one),
``metrics.csv`` (one row per epoch), ``model.pt`` (final weights) and, once at
the very end, ``result.json``. Data order, augmentation RNG and scheduler are
functions of (seed, epoch) and part of the checkpoint, so a killed and resumed
CPU run ends with exactly the weights of an uninterrupted one.

The run's configuration and its checks live in ``config``, what it trains (``Learner``) in
``learner``, where each process trains in ``distributed``; this module is the run itself:
set-up, ``train_one_epoch``, ``evaluate``, the result.

Several processes (``torchrun``, one per GPU, one or several machines): PyTorch
``DistributedDataParallel`` averages the gradients (NCCL on CUDA, gloo on CPU),
every training BN is synchronised (``layers.convert_sync_batchnorm``),
``batch_size`` is the global batch split evenly across processes, evaluation is
sharded, and rank 0 alone reads checkpoints (and broadcasts them) and writes.
``launch`` starts such a run from Python (the notebooks, ``reproduce``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hybridkd_lib.base import checkpoint, children, results
from hybridkd_lib.data import datasets
from hybridkd_lib.tools import spikecosts
from hybridkd_lib.train.config import TrainConfig, check_writable_folder, validate
from hybridkd_lib.train.distributed import Distributed, broadcast_from_main, init_distributed
from hybridkd_lib.train.learner import Learner, make_optimizer
from hybridkd_lib.train.step import TrainingStep, peak_mem_mb, place

# ----------------------------------------------------------------------------- a run's folder
SETTINGS_FILE = "settings.json"
NOT_SETTINGS = ("out", "progress", "num_workers", "data_root")  # where it runs and is shown, not what


def run_settings(cfg: TrainConfig) -> dict:
    """The settings that define a run's result: every field but where it is written and how shown."""
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}


def _with_later_fields(recorded: dict, now: dict, cfg: TrainConfig) -> dict:
    """Recorded settings with every field added to ``TrainConfig`` since they were written set to its default
    (a new field's default keeps the behaviour runs had before it), so an older run still matches."""
    defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                for f in fields(cfg)}
    return {**{k: defaults[k] for k in now if k not in recorded and k in defaults}, **recorded}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


RUN_FILES = ("metrics.csv", "model.pt", "result.json", SETTINGS_FILE)   # what a run writes besides checkpoints/


def remove_run_files(out: Path) -> None:
    """Delete what the library wrote in a run folder (its checkpoints, metrics, model, result, settings),
    nothing else there."""
    checkpoint.remove_written(out / "checkpoints")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _recorded_settings(out: Path) -> dict | None:
    """The settings a run folder was started with: ``settings.json``; where it is missing, those recorded
    in the run's newest checkpoint or readable ``result.json``; None for a folder without a run. A damaged
    ``settings.json`` is an error naming it and the way back (nothing is deleted)."""
    f = out / SETTINGS_FILE
    if f.is_file():
        try:
            recorded = results.read_json_file(f, "settings file")
            if not isinstance(recorded.get("settings"), dict):
                raise results.UnreadableFile(f"settings file {f} is unreadable (no settings recorded in it)")
        except results.UnreadableFile as exc:
            raise ValueError(f"{exc}: delete it and run the same command again; the settings are then checked "
                             f"against those in the run's newest checkpoint or result.json (its model is kept)") from None
        return recorded["settings"]
    _, state = checkpoint.load_latest(out / "checkpoints", log=lambda *_: None, legacy=False)
    if state is not None and isinstance(state.get("settings"), dict):
        return state["settings"]
    try:
        result = results.read_result(out)
    except results.UnreadableFile:
        result = None
    return result.get("settings") if result is not None and isinstance(result.get("settings"), dict) else None


def run_folder_state(cfg: TrainConfig, overwrite: bool = False) -> str:
    """``"new"``, ``"resume"``, ``"finished"`` or ``"restore"`` (finished, its ``model.pt`` gone) for
    ``cfg.out``; a folder that holds a run with other settings (or checkpoints with none recorded) is an
    error naming what differs and the ways forward. ``overwrite`` first removes the files the library
    wrote there (``remove_run_files``). A damaged ``result.json`` does not count as finished."""
    out = Path(cfg.out)
    if overwrite:
        remove_run_files(out)
        return "new"
    recorded = _recorded_settings(out)
    if recorded is None:
        if checkpoint.written(out / "checkpoints", whole_only=False) or (out / "result.json").is_file():
            raise ValueError(f"out={str(out)!r} holds a run whose settings are not recorded; choose another --out, "
                             f"or pass --overwrite to start over there")
        return "new"
    now = run_settings(cfg)
    recorded = _with_later_fields(recorded, now, cfg)
    if settings_hash(recorded) != settings_hash(now):
        diffs = [f"{k}: {recorded.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(recorded) | set(now))
                 if recorded.get(k) != now.get(k)]
        raise ValueError(f"out={str(out)!r} holds a run with other settings ({'; '.join(diffs) or 'code changed'}); "
                         f"choose another --out to keep it, or pass --overwrite to start over there")
    try:
        finished = results.read_result(out) is not None
    except results.UnreadableFile:
        finished = False   # resumed from its last checkpoint: evaluated and written again
    if not finished:
        return "resume"
    return "finished" if (out / "model.pt").is_file() else "restore"


def _write_metrics(path: Path, rows: list[dict]):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    results.atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- set-up
@dataclass
class Session:
    """Everything ``train`` sets up once, before the epoch loop."""

    cfg: TrainConfig
    env: Distributed
    learner: Learner
    step: TrainingStep              # one optimizer step: step(x, y) -> (loss, parts)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: torch.utils.data.distributed.DistributedSampler
    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    num_classes: int
    check_every: int                # steps between two checks for a non-finite loss (each one a host sync)
    bn_batches: list = field(default_factory=list)   # fixed training batches for ``recompute_bn_stats``


def setup(cfg: TrainConfig, env: Distributed, log=print) -> tuple[Session, dict | None]:
    """Data, model, optimizer on ``env``'s device; returns the session and the checkpoint to resume
    from (read by rank 0, broadcast to all), or None."""
    torch.manual_seed(cfg.seed)
    train_set, test_set = _datasets(cfg)
    num_classes = datasets.dataset_info(cfg.dataset).num_classes
    learner = place(Learner(cfg, num_classes, tuple(train_set[0][0].shape[-3:])), env.device, env.world)
    opt = make_optimizer(cfg, learner.trainable())
    per_rank = cfg.batch_size // env.world
    sampler, train_loader, test_loader = _loaders(cfg, env, train_set, test_set, per_rank)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    state = _resume(cfg, env, learner, opt, sched, log)
    step = TrainingStep(learner, opt, env.device, module=_data_parallel(learner, cfg, env), data_parallel=env.world > 1,
                        clip_grad_norm=cfg.clip_grad_norm, compile_spike_pass=cfg.compile_spike_pass,
                        log=log if env.main else (lambda *_: None))
    return Session(cfg, env, learner, step, opt, sched, sampler, train_loader, test_loader, steps, num_classes,
                   check_every=1 if env.device.type == "cpu" else 50,
                   bn_batches=_fixed_batches(train_set, cfg, env, per_rank)), state


def _datasets(cfg: TrainConfig):
    data_kw = dict(cfg.data_kw)
    if datasets.is_sequence(cfg.dataset):
        data_kw.setdefault("T", cfg.T)
    return datasets.get_datasets(cfg.dataset, cfg.data_root, **data_kw)


def _loaders(cfg: TrainConfig, env: Distributed, train_set, test_set, per_rank: int):
    """This process's shard of the training data (order a function of seed and epoch) and of the test set."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world))
    workers = cfg.num_workers if cfg.num_workers is not None else datasets.default_num_workers(cfg.dataset, local_world)
    pin = env.device.type == "cuda"
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, env.world, env.rank, shuffle=True,
                                                              seed=cfg.seed, drop_last=True)
    train_loader = datasets.make_loader(train_set, cfg.dataset, per_rank, True, workers, pin, sampler)
    shard = torch.utils.data.Subset(test_set, range(env.rank, len(test_set), env.world))
    test_loader = datasets.make_loader(shard, cfg.dataset, per_rank, False, workers, pin)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {len(train_set)} training samples "
                         f"of {cfg.dataset!r} (per process: {per_rank} of {len(sampler)})")
    return sampler, train_loader, test_loader


def _resume(cfg: TrainConfig, env: Distributed, learner: Learner, opt, sched, log) -> dict | None:
    """Load the newest readable checkpoint (rank 0 reads, every rank loads); None for a new run."""
    out = Path(cfg.out)   # a run started before the checkpoint index has its settings recorded already
    path, state = (checkpoint.load_latest(out / "checkpoints", log, legacy=(out / SETTINGS_FILE).is_file())
                   if env.main else (None, None))
    path, state = broadcast_from_main((path and str(path), state), env)
    if state is not None:
        state["path"] = path
        learner.load_state_dict(state["learner"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    return state


def _data_parallel(learner: Learner, cfg: TrainConfig, env: Distributed) -> nn.Module:
    """The module a step calls: the learner, or DDP around it (gradients averaged, bucketed and
    overlapped with backward) when there are several processes."""
    if env.world == 1:
        return learner
    return DistributedDataParallel(learner, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                   broadcast_buffers=False,
                                   find_unused_parameters=learner.spec.has_unused_parameters(cfg.loss_cfg))


def _fixed_batches(train_set, cfg: TrainConfig, env: Distributed, per_rank: int) -> list:
    """``cfg.precise_bn`` batches of this process's share of a fixed (seeded) set of training samples."""
    if not cfg.precise_bn:
        return []
    n = min(len(train_set), cfg.precise_bn * per_rank * env.world)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
    shard = torch.utils.data.Subset(train_set, order[env.rank::env.world])
    return list(datasets.make_loader(shard, cfg.dataset, per_rank, False, 0, False))


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
    """Top-1 (%) of the SNN (or the ANN for ``ann``), the teacher and every hybrid M_k, over every
    process's shard of the test set (counts all-reduced; one host sync at the end)."""
    was = learner.training
    learner.eval()
    has_teacher = learner.distiller is not None and with_teacher
    n_hyb = learner.num_hybrids
    counts = torch.zeros(3 + n_hyb, dtype=torch.long, device=env.device)  # n, SNN, teacher, M_0..
    for x, y in loader:
        x, y = env.put(x, y)
        with env.autocast():
            y_s, y_m, y_a = learner.predict(x, has_teacher)
        counts[0] += len(y)
        counts[1] += (y_s.argmax(-1) == y).sum()
        if y_a is not None:
            counts[2] += (y_a.argmax(-1) == y).sum()
        for k, out in enumerate(y_m):
            counts[3 + k] += (out.argmax(-1) == y).sum()
    env.all_reduce(counts)
    learner.train(was)
    n, *hits = counts.tolist()
    pct = lambda h: 100.0 * h / max(n, 1)
    out = {"top1": pct(hits[0])}
    if has_teacher:
        out["teacher_top1"] = pct(hits[1])
    if n_hyb:
        out["hybrid_top1"] = [pct(h) for h in hits[2:]]
    return out


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, on_epoch_end=None, log=print, overwrite: bool = False) -> dict:
    """Run (or resume) one training run; returns the result dict also saved as ``result.json``.

    The run folder is bound to the run's settings (``settings.json``, written once the set-up succeeded,
    so a run refused there leaves the folder free): the same settings resume (or, when finished, return
    the result untouched; a finished run whose ``model.pt`` is gone gets it back from its last
    checkpoint), other settings stop before any work unless ``overwrite`` starts over."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    env = init_distributed(cfg.device)
    try:
        folder = _bind_run_folder(cfg, env, overwrite)
        if folder != "new" and env.main and not (Path(cfg.out) / SETTINGS_FILE).is_file():
            _record_settings(cfg)   # recovered from the run's checkpoint or result: recorded again
        if folder == "finished":
            if env.main:
                log(f"already finished with these settings: {Path(cfg.out) / 'result.json'} (nothing was changed)")
            return broadcast_from_main(results.read_result(cfg.out) if env.main else None, env)
        s, state = setup(cfg, env, log)
        if folder == "new" and env.main:
            _record_settings(cfg)
        if folder == "restore":
            return _restore_model(s, state, log)
        return _run_epochs(s, state, on_epoch_end, log)
    finally:
        env.close()


def _record_settings(cfg: TrainConfig) -> None:
    settings = run_settings(cfg)
    results.write_json(Path(cfg.out) / SETTINGS_FILE, {"hash": settings_hash(settings), "settings": settings})


def _bind_run_folder(cfg: TrainConfig, env: Distributed, overwrite: bool) -> str:
    """Rank 0 checks that the run folder can be written and what it holds; every rank gets the verdict."""
    folder = None
    if env.main:
        try:
            check_writable_folder(cfg.out)
            folder = run_folder_state(cfg, overwrite)
        except ValueError as exc:
            folder = f"error: {exc}"
    folder = broadcast_from_main(folder, env)
    if folder.startswith("error: "):
        raise ValueError(folder[len("error: "):])
    return folder


def _restore_model(s: Session, state: dict | None, log) -> dict:
    """A finished run whose ``model.pt`` is gone: write it again from the last epoch's checkpoint (the
    final weights); the result is kept as it was."""
    out = Path(s.cfg.out)
    if state is None or state["epoch"] + 1 != s.cfg.epochs:
        raise ValueError(f"{out / 'model.pt'} is missing and no checkpoint of the last epoch is left to restore it "
                         f"from; pass --overwrite to train the run again")
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
        train_time += time.perf_counter() - t0
        recompute_bn_stats(s.learner, s.bn_batches, env)
        metrics = evaluate(s.learner, s.test_loader, env, with_teacher=teacher_top1 is None)
        teacher_top1 = metrics.get("teacher_top1", teacher_top1)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": s.sched.get_last_lr()[0],
               "top1": metrics["top1"], "train_time_s": train_time}
        row.update({f"hybrid_top1_M{k}": acc for k, acc in enumerate(metrics.get("hybrid_top1", []))})
        history.append(row)
        if env.main:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}, top1 {row['top1']:.2f}%"
                + (f", hybrids {[round(a, 2) for a in metrics['hybrid_top1']]}" if "hybrid_top1" in metrics else ""))
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
    """What the trained network costs at inference (``spikecosts.learner_costs``): firing rates, synaptic
    operations and energy of the student, or the MACs of a teacher run, counted once on this process's test set
    (the whole test set in a single-process run), in float32 without autocast."""
    learner, was = s.learner, s.learner.training
    learner.eval()
    try:
        return spikecosts.learner_costs(learner, (s.env.put(x, y)[0] for x, y in s.test_loader))
    finally:
        learner.train(was)


def _save_epoch(s: Session, epoch: int, history: list, train_time: float) -> None:
    """``metrics.csv`` and the epoch's checkpoint (all a resumed run needs), each written atomically."""
    out = Path(s.cfg.out)
    _write_metrics(out / "metrics.csv", history)
    checkpoint.save_epoch(out / "checkpoints", epoch, {
        "epoch": epoch, "learner": s.learner.state_dict(), "optimizer": s.opt.state_dict(),
        "scheduler": s.sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
        "train_time_s": train_time, "settings": run_settings(s.cfg)})


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
    student = s.learner.student
    return {
        **{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "settings": run_settings(cfg),
        "loss_config": cfg.loss_cfg.to_dict(),
        "student": cfg.student if "student" in networks else None,
        "teacher": cfg.teacher if "teacher" in networks else None,
        "neuron_config": student.neuron_cfg.to_dict() if student is not None else None,
        "top1": final["top1"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "teacher_top1": final.get("teacher_top1", final["top1"] if student is None else None),
        "hybrid_top1": final.get("hybrid_top1", []),
        "train_time_s": round(train_time, 2),
        "peak_mem_mb": round(peak_mem_mb(dev), 1),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "world_size": s.env.world,
        "batch_size_per_process": cfg.batch_size // s.env.world,
        "git_commit": results.git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }


# ----------------------------------------------------------------------------- launching
def launch(cfg: TrainConfig, nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
           log=print) -> dict:
    """Train ``cfg`` in this process (``nproc * nnodes == 1``) or as ``nproc`` processes per machine
    under ``torchrun`` (``python -m hybridkd_lib train --config ...``); returns the result.

    Several machines: run the same call on each, with ``nnodes`` and the ``rdzv_endpoint``
    (``host:port`` of one of them). ``batch_size`` stays the global batch."""
    for name, v in (("nproc", nproc), ("nnodes", nnodes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} not allowed; an integer >= 1")
    world = nproc * nnodes
    if world == 1:
        return train(cfg, log=log)
    validate(cfg, world)
    if torch.device(cfg.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={nproc} but {torch.cuda.device_count()} visible GPU(s) here: use at most "
                         f"{torch.cuda.device_count()} (reproduce --nproc N)")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint='host:port' of the first machine")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="hybridkd_cfg_", delete=False) as f:
        json.dump(asdict(cfg), f)
    log(f"launching {nproc * nnodes} processes: torchrun --nproc-per-node {nproc} --nnodes {nnodes} ...")
    try:
        rc, tail = _run_logged(_torchrun_command(f.name, cfg, nproc, nnodes, rdzv_endpoint), log)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if rc != 0:
        errors = [l for l in tail if l.startswith("error:")]
        raise RuntimeError(errors[0] if errors else f"torchrun exited with status {rc}: " + " | ".join(tail[-5:]))
    res = results.read_result(cfg.out)
    if res is None:
        raise RuntimeError(f"torchrun finished without writing {Path(cfg.out) / 'result.json'}")
    return res


def _torchrun_command(config_file: str, cfg: TrainConfig, nproc: int, nnodes: int, rdzv_endpoint: str | None) -> list:
    rdzv = (["--standalone"] if nnodes == 1 else
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", Path(cfg.out).name])
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", str(nnodes),
            *rdzv, "-m", "hybridkd_lib", "train", "--config", config_file]


def _run_logged(cmd: list, log) -> tuple[int, list]:
    """Run ``cmd`` (it ends with this process; an interrupt here stops it), passing each output line to
    ``log``; its exit status and last 30 lines."""
    proc = children.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    tail = []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-30:]
            log(line.rstrip())
        return proc.wait(), tail
    except BaseException:
        log(f"stopping torchrun (pid {proc.pid}) and its workers: {children.command_text(cmd)}")
        children.stop(proc, grace_s=30.0)
        raise
