"""What a run sets up once, before its epoch loop (``Session``): data and loaders sharded over the
processes, the learner on its device, the optimizer, the schedule, the step, and the checkpoint it resumes from."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hybridkd_lib.base import checkpoint
from hybridkd_lib.data import datasets
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.distributed import Distributed, broadcast_from_main
from hybridkd_lib.training.learner import Learner, make_optimizer
from hybridkd_lib.training.runfolder import SETTINGS_FILE
from hybridkd_lib.training.step import TrainingStep, place


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
    # the cosine schedule advances every step, or once per epoch as the RateBP reference's (``lr_step``)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * (steps if cfg.lr_step == "step" else 1))
    state = _resume(cfg, env, learner, opt, sched, log)
    step = TrainingStep(learner, opt, env.device, module=_data_parallel(learner, cfg, env), data_parallel=env.world > 1,
                        clip_grad_norm=cfg.clip_grad_norm, compile_spike_pass=cfg.compile_spike_pass,
                        precision=cfg.precision,
                        log=log if env.main else (lambda *_: None))
    if state is not None and step.scaler is not None and "grad_scaler" in state:   # fp16: its loss scale too
        step.scaler.load_state_dict(state["grad_scaler"])
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
