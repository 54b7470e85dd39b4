"""One trainer for every method: ``ann``, ``bptt``, ``bptt_kd``, ``ratebp``, ``kd``, ``hybrid``.

A run writes, into ``out``: ``checkpoints/epoch_NNNN.pt`` every epoch (atomic,
the last two kept; a rerun resumes from the newest readable one),
``metrics.csv`` (one row per epoch), ``model.pt`` (final weights) and, once at
the very end, ``result.json``. Data order, augmentation RNG and scheduler are
functions of (seed, epoch) and part of the checkpoint, so a killed and resumed
CPU run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from hybridkd_lib import checkpoint, data, ratebp, results
from hybridkd_lib.hybrid import HybridDistiller
from hybridkd_lib.layers import _RateBatchNorm
from hybridkd_lib.losses import LossConfig, total_loss
from hybridkd_lib.memory import release_freed_memory
from hybridkd_lib.models import check_model_name, create_model
from hybridkd_lib.models.timm_teachers import load_state_dict_file

METHODS = ("ann", "bptt", "bptt_kd", "ratebp", "kd", "hybrid")
TEACHER_METHODS = ("bptt_kd", "kd", "hybrid")
RATEBP_METHODS = ("ratebp", "kd", "hybrid")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Everything a run depends on (recorded in ``result.json``)."""

    method: str
    dataset: str = "digits"
    student: str = "spiking_resnet18"
    teacher: str = "cifar_resnet18"
    teacher_ckpt: str | None = None
    T: int = 4
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    seed: int = 0
    device: str = "cpu"
    data_root: str | None = None
    out: str = "runs/run"
    student_kw: dict = field(default_factory=dict)
    teacher_kw: dict = field(default_factory=dict)
    data_kw: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    teacher_input_size: int | None = None
    num_workers: int = 0
    max_steps_per_epoch: int | None = None
    progress: bool = True

    @property
    def loss_cfg(self) -> LossConfig:
        return LossConfig(**self.loss)


# ----------------------------------------------------------------------------- validation
def resolve_teacher_ckpt(path: str) -> Path:
    """A run directory (its ``model.pt``) or a ``.pt`` file."""
    p = Path(path)
    return p / "model.pt" if p.is_dir() else p


def check_device(device: str) -> None:
    """``cpu``, or ``cuda``/``cuda:N`` where CUDA is available."""
    valid = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
                       if torch.cuda.is_available() else [])
    if device not in valid:
        raise ValueError(f"device={device!r} not available here; valid: {', '.join(valid)}")


def validate(cfg: TrainConfig) -> None:
    """Refuse bad input before any training, naming the bad value and the valid ones."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; valid: {', '.join(METHODS)}")
    data.dataset_info(cfg.dataset)
    if cfg.method != "ann":
        check_model_name(cfg.student, "student")
    if cfg.method == "ann" or cfg.method in TEACHER_METHODS:
        check_model_name(cfg.teacher, "teacher")
    if not isinstance(cfg.T, int) or cfg.T < 1:
        raise ValueError(f"T={cfg.T!r} not allowed; T must be an integer >= 1")
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise ValueError(f"epochs={cfg.epochs!r} not allowed; epochs must be an integer >= 1")
    check_device(cfg.device)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    unknown = set(cfg.loss) - set(LossConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown loss option(s) {sorted(unknown)}; valid: {', '.join(LossConfig.__dataclass_fields__)}")
    if cfg.method in TEACHER_METHODS:
        if not cfg.teacher_ckpt:
            raise ValueError(f"method {cfg.method!r} needs --teacher-ckpt (a teacher run directory or .pt file)")
        path = resolve_teacher_ckpt(cfg.teacher_ckpt)
        try:
            load_state_dict_file(path)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"unreadable teacher checkpoint {cfg.teacher_ckpt!r}: {exc}") from exc


# ----------------------------------------------------------------------------- building
def build_teacher(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The teacher architecture, with trained weights if ``teacher_ckpt`` is given."""
    kw = dict(cfg.teacher_kw)
    kw.setdefault("in_chans", in_chans)
    if cfg.teacher_ckpt and cfg.method != "ann":
        state = checkpoint.load(resolve_teacher_ckpt(cfg.teacher_ckpt))
        if isinstance(state, dict) and "model" in state and "arch" in state:
            if state["arch"] != cfg.teacher:
                raise ValueError(f"teacher checkpoint holds {state['arch']!r}, not --teacher {cfg.teacher!r}")
            kw = {**state.get("model_kw", {}), **cfg.teacher_kw}
            model = create_model(cfg.teacher, num_classes=num_classes, **kw)
            model.load_state_dict(state["model"])
            return model
        if cfg.teacher.startswith("cifar_"):
            model = create_model(cfg.teacher, num_classes=num_classes, **kw)
            model.load_state_dict(state)
            return model
        return create_model(cfg.teacher, num_classes=num_classes,
                            checkpoint_path=str(resolve_teacher_ckpt(cfg.teacher_ckpt)), **kw)
    return create_model(cfg.teacher, num_classes=num_classes, **kw)


class Learner(nn.Module):
    """The trainable part of a run and its training step (shared with the benchmark)."""

    def __init__(self, cfg: TrainConfig, num_classes: int, input_shape: tuple):
        super().__init__()
        self.method, self.T, self.loss_cfg = cfg.method, cfg.T, cfg.loss_cfg
        in_chans = input_shape[-3]
        self.student = self.teacher = self.distiller = None
        if cfg.method == "ann":
            self.model = build_teacher(cfg, num_classes, in_chans)
            self.model_kw = {"in_chans": in_chans, **cfg.teacher_kw}
            self.arch = cfg.teacher
            return
        skw = dict(cfg.student_kw, T=cfg.T)
        skw.setdefault("in_chans", in_chans)
        self.student = create_model(cfg.student, num_classes=num_classes, **skw)
        self.model, self.arch = self.student, cfg.student
        self.model_kw = {k: v for k, v in skw.items()}
        if cfg.method in TEACHER_METHODS:
            self.teacher = build_teacher(cfg, num_classes, in_chans)
            self.distiller = HybridDistiller(self.student, self.teacher, input_shape, cfg.teacher_input_size)

    def trainable(self) -> list[nn.Parameter]:
        mods = [self.model] + ([self.distiller.aligns] if self.method == "hybrid" else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def step_loss(self, x, y):
        """Loss (with the method's graph), its parts and the SNN/ANN logits."""
        m = self.method
        # the teacher's (graph-free) forward runs where it adds least to the peak: before
        # BPTT's graph is built, after RateBP's spike pass (whose [T, B, ...] maps are the peak)
        y_a = self.distiller.teacher_logits(x) if m == "bptt_kd" else None
        y_m = ()
        if m in ("ann", "bptt", "bptt_kd"):
            y_s = self.model(x)
        elif m in ("ratebp", "kd"):
            y_s = ratebp.rate_forward(self.student, x)
        else:
            y_s, y_m = ratebp.rate_forward(self.student, x, fn=lambda _, xx: self.distiller(xx))
        if m in RATEBP_METHODS and m in TEACHER_METHODS:
            y_a = self.distiller.teacher_logits(x)
        loss, parts = total_loss(m, self.loss_cfg, y, y_s, y_a, y_m)
        if m in RATEBP_METHODS and self.loss_cfg.ratebp_grad_scale:
            loss = ratebp.scale_gradient(loss, self.T)
        return loss, parts, y_s

    @torch.no_grad()
    def evaluate(self, loader, device, amp: bool, with_teacher: bool = True) -> dict:
        """Top-1 (%) of the SNN (or the ANN for ``ann``), the teacher and every hybrid M_k."""
        was = self.training
        self.eval()
        hits = {"top1": 0, "teacher_top1": 0}
        hyb = [0] * (self.distiller.num_hybrids if self.method == "hybrid" else 0)
        n = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                if self.method == "hybrid":
                    y_s, y_m = self.distiller(x)
                    for k, out in enumerate(y_m):
                        hyb[k] += int((out.argmax(-1) == y).sum())
                else:
                    y_s = self.model(x)
                if self.distiller is not None and with_teacher:
                    hits["teacher_top1"] += int((self.distiller.teacher_logits(x).argmax(-1) == y).sum())
            hits["top1"] += int((y_s.argmax(-1) == y).sum())
            n += len(y)
        self.train(was)
        out = {"top1": 100.0 * hits["top1"] / n}
        if self.distiller is not None and with_teacher:
            out["teacher_top1"] = 100.0 * hits["teacher_top1"] / n
        if hyb:
            out["hybrid_top1"] = [100.0 * h / n for h in hyb]
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self


def param_groups(params: list[nn.Parameter], weight_decay: float):
    """No weight decay on BN parameters and biases (1-D tensors)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, params):
    groups = param_groups(params, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


class StepInBackward:
    """Run ``opt``'s update of each parameter inside ``loss.backward()``, as soon as that
    parameter's gradient is complete, then free the gradient, so a step never holds every
    gradient at once (PyTorch's "optimizer step in backward" recipe, using
    ``Tensor.register_post_accumulate_grad_hook``). The update is ``opt.step()`` itself,
    called with only that parameter in its group: same arithmetic, same optimizer state
    (so ``opt.state_dict()``, the LR scheduler and checkpoints are unchanged). With it,
    a training step is ``loss.backward()`` alone; ``remove()`` detaches the hooks.
    Not for data parallel runs, whose gradients must be averaged before any update.
    """

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt
        self._group_of = {p: i for i, g in enumerate(opt.param_groups) for p in g["params"]}
        self._handles = [p.register_post_accumulate_grad_hook(self._update) for p in self._group_of]

    def _update(self, p: torch.Tensor) -> None:
        groups = self.opt.param_groups
        kept = [g["params"] for g in groups]
        try:
            for i, g in enumerate(groups):
                g["params"] = [p] if i == self._group_of[p] else []
            self.opt.step()
        finally:
            for g, params in zip(groups, kept):
                g["params"] = params
        p.grad = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# ----------------------------------------------------------------------------- distributed
def dist_env():
    """(rank, world_size) under torchrun, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("HYBRIDKD_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def enable_sync_bn(learner: "Learner", method: str):
    """SyncBN under torchrun: RateBP students all-reduce the statistics of their spike pass (the
    rate pass reuses them); ANN teachers on CUDA get ``nn.SyncBatchNorm``. BPTT students keep
    per-process statistics (their BN sees ``[T*B]`` folded batches)."""
    if method in RATEBP_METHODS:
        for m in learner.model.modules():
            if isinstance(m, _RateBatchNorm):
                m.sync_stats = True
    elif method == "ann" and next(learner.model.parameters()).device.type == "cuda":
        learner.model = nn.SyncBatchNorm.convert_sync_batchnorm(learner.model)


def average_gradients(params, world: int):
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_metrics(path: Path, rows: list[dict]):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    results.atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, on_epoch_end=None, log=print) -> dict:
    """Run (or resume) one training run; returns the result dict also saved as ``result.json``."""
    validate(cfg)
    rank, world = dist_env()
    device = torch.device(cfg.device)
    amp = device.type == "cuda"
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    main_proc = rank == 0

    torch.manual_seed(cfg.seed)
    data_kw = dict(cfg.data_kw)
    if cfg.dataset == "cifar10dvs":
        data_kw.setdefault("T", cfg.T)
    train_set, test_set = data.get_datasets(cfg.dataset, cfg.data_root, **data_kw)
    num_classes = data.dataset_info(cfg.dataset).num_classes
    sample = train_set[0][0]
    input_shape = tuple(sample.shape[-3:])
    learner = Learner(cfg, num_classes, input_shape).to(device)
    if cfg.method != "ann":  # channels_last: oneDNN/cuDNN convs without layout reorders (CPU ~10-20% faster)
        learner = learner.to(memory_format=torch.channels_last)
    if world > 1:
        enable_sync_bn(learner, cfg.method)
    params = learner.trainable()
    if world > 1:
        for p in params:
            dist.broadcast(p.data, 0)

    gen = torch.Generator()
    sampler = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed)
    pin = device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(train_set, cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                               generator=gen, num_workers=cfg.num_workers, pin_memory=pin)
    test_loader = torch.utils.data.DataLoader(test_set, 256, shuffle=False, num_workers=cfg.num_workers,
                                              pin_memory=pin)
    steps_per_epoch = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader),
                                                                                     cfg.max_steps_per_epoch)
    opt = make_optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    in_backward = StepInBackward(opt) if world == 1 else None  # updates (and frees grads) during backward

    start_epoch, history, train_time = 0, [], 0.0
    path, state = checkpoint.load_latest(ckpt_dir, log=log)
    if state is not None:
        learner.load_state_dict(state["learner"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history, train_time = state["epoch"] + 1, state["history"], state["train_time_s"]
        if main_proc:
            log(f"resuming from {path} (epoch {state['epoch'] + 1} of {cfg.epochs} done)")

    teacher_top1 = None
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 100_003 + epoch)           # data order
        torch.manual_seed(cfg.seed * 100_003 + epoch + 1)     # augmentation, dropout
        if sampler is not None:
            sampler.set_epoch(epoch)
        learner.train()
        t0 = time.perf_counter()
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and main_proc), leave=False)
        loss_sum, n_seen = 0.0, 0
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                loss, parts, _ = learner.step_loss(x, y)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"non-finite loss {float(loss.detach())} at epoch {epoch + 1}, "
                                         f"step {step + 1} (parts: {parts}); stopping the run")
            if in_backward is None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params, world)
                opt.step()
            else:
                loss.backward()  # every parameter is updated as its gradient completes
            sched.step()
            release_freed_memory(device)
            loss_sum += float(loss.detach()) * len(y)
            n_seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}")
        train_time += time.perf_counter() - t0
        metrics = learner.evaluate(test_loader, device, amp, with_teacher=teacher_top1 is None)
        if "teacher_top1" in metrics:
            teacher_top1 = metrics["teacher_top1"]
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "lr": sched.get_last_lr()[0],
               "top1": metrics["top1"], "train_time_s": train_time}
        for k, acc in enumerate(metrics.get("hybrid_top1", [])):
            row[f"hybrid_top1_M{k}"] = acc
        history.append(row)
        if main_proc:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}, top1 {row['top1']:.2f}%"
                + (f", hybrids {[round(a, 2) for a in metrics['hybrid_top1']]}" if "hybrid_top1" in metrics else ""))
            _write_metrics(out / "metrics.csv", history)
            checkpoint.save_epoch(ckpt_dir, epoch, {
                "epoch": epoch, "learner": learner.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
                "train_time_s": train_time})
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if in_backward is not None:
        in_backward.remove()
    final = learner.evaluate(test_loader, device, amp, with_teacher=True)
    result = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "loss_config": cfg.loss_cfg.to_dict(),
        "student": cfg.student if cfg.method != "ann" else None,
        "teacher": cfg.teacher if (cfg.method == "ann" or cfg.method in TEACHER_METHODS) else None,
        "top1": final["top1"],
        "teacher_top1": final.get("teacher_top1", final["top1"] if cfg.method == "ann" else None),
        "hybrid_top1": final.get("hybrid_top1", []),
        "train_time_s": round(train_time, 2),
        "peak_mem_mb": round(_peak_mem_mb(device), 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world,
        "git_commit": results.git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }
    if main_proc:
        checkpoint.atomic_save({"arch": learner.arch, "model_kw": learner.model_kw,
                                "num_classes": num_classes, "model": learner.model.state_dict(),
                                **({"aligns": learner.distiller.aligns.state_dict()} if cfg.method == "hybrid" else {})},
                               out / "model.pt")
        results.write_json(out / "result.json", result)
        log(f"done: top1 {result['top1']:.2f}% -> {out / 'result.json'}")
    return result
