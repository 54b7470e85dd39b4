"""A run's configuration (``TrainConfig``) and its validation.

``TrainConfig`` is the one place a run's settings are written: the ``train`` command's options
(``cli.add_train_options``) and the training notebooks' parameters are built from or checked
against its fields and help texts. ``validate`` refuses bad input before any work, naming the
bad value and the valid ones.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from hybridkd_lib.data.catalog import DATASETS
from hybridkd_lib.method.methods import BUILT_IN, get_method, methods_where
from hybridkd_lib.base.checks import check_keys, check_number, is_of_type, non_finite
from hybridkd_lib.base.results import check_writable_folder

if TYPE_CHECKING:
    from hybridkd_lib.method.losses import LossConfig

# TrainConfig imports no torch (the command line's --help is built from it); validation imports what it checks

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")   # a CUDA step's compute precision (autocast); the CPU computes in fp32
LR_STEPS = ("step", "epoch")             # when the cosine schedule advances


def _opt(default=None, help: str = "", student_only: bool = False, factory=None):
    """A ``TrainConfig`` field with its help text (the CLI's and the notebooks', from this one place);
    ``student_only``: meaningless for a teacher (``ann``) run."""
    meta = {"help": help, "student_only": student_only}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run depends on (recorded in ``result.json``). Each field's help text is the
    ``train`` command's option help (``cli.py`` builds the options from these fields)."""

    method: str = field(metadata={"help": " | ".join(BUILT_IN) + " or a plug-in's (what each does: hybridkd_lib.method.methods)",
                                  "student_only": False})
    dataset: str = _opt("digits", " | ".join(DATASETS) + " (hybridkd_lib.data.catalog)")
    student: str = _opt("spiking_resnet18", "student architecture (a registered student model)", True)
    teacher: str = _opt("cifar_resnet18", "teacher architecture (the model trained by method ann)")
    teacher_ckpt: str | None = _opt(None, "teacher run directory or .pt file (bptt_kd, kd, hybrid)", True)
    T: int = _opt(4, "timesteps (frames for cifar10dvs)")
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(64, "global batch: split evenly across the processes of a torchrun launch")
    lr: float = _opt(0.1, "learning rate (cosine schedule over the run)")
    weight_decay: float = _opt(5e-4, "weight decay (not on BN parameters and biases)")
    momentum: float = _opt(0.9, "SGD momentum")
    optimizer: str = _opt("sgd", "sgd | adamw")
    seed: int = _opt(0, "seed of the model, the data order and the augmentation")
    device: str = _opt("cpu", "cpu | cuda | cuda:N")
    data_root: str | None = _opt(None, "data folder (default: $HYBRIDKD_DATA or ./data)")
    out: str = _opt("runs/run", "run directory: checkpoints/, metrics.csv, model.pt, result.json")
    student_kw: dict = _opt(help='student keywords, e.g. {"width": 16}', student_only=True, factory=dict)
    teacher_kw: dict = _opt(help='teacher keywords, e.g. {"width": 16}; {"init_checkpoint": PATH} fine-tunes timm '
                                 "weights", factory=dict)
    data_kw: dict = _opt(help='dataset options, e.g. {"image_size": 16} for digits (the reader\'s keywords: '
                              'hybridkd_lib.data.datasets)', factory=dict)
    loss: dict = _opt(help='loss weights, e.g. {"kd": 1.0, "hybrid_ce": 1.0, "temperature": 4.0} '
                           "(losses.LossConfig)", student_only=True, factory=dict)
    neuron: dict = _opt(help="LIF settings over the student's own, e.g. {\"tau\": 2.0} (neurons.NeuronConfig)",
                        student_only=True, factory=dict)
    rate_value: str = _opt("rate", "rate pass after max-pooling of spikes: rate (the reference) | spike_mean", True)
    clip_grad_norm: float | None = _opt(None, "clip the global L2 norm of the trained gradients to this value before "
                                              "each update (timm's --clip-grad); None: off")
    compile_spike_pass: bool = _opt(False, "run each LIF's spike pass as one compiled kernel (torch.compile: C++ on "
                                           "the CPU, Triton on CUDA; same records); off: the fused eager loop", True)
    precise_bn: int = _opt(0, "before each evaluation, recompute the trained model's BN running statistics from "
                              "this many fixed training batches (weights unchanged); 0: keep the running averages")
    teacher_input_size: int | None = _opt(None, "resize inputs for the teacher (e.g. 224 for ViT-S/16 on CIFAR)")
    num_workers: int | None = _opt(None, "loader processes per training process (None: 0 for in-memory data, else "
                                         "from the CPUs)")
    max_steps_per_epoch: int | None = _opt(None, "cap the steps of an epoch (smoke runs)")
    precision: str = _opt("fp32", "fp32 | bf16 | fp16: a CUDA step's compute precision (bf16/fp16: autocast, the LIF "
                                  "state stays fp32; fp16 with a gradient scaler); the RateBP reference trains in fp32. "
                                  "The CPU computes in fp32")
    lr_step: str = _opt("step", "step | epoch: when the cosine schedule advances (the RateBP reference: once per epoch; "
                                "the CPU profiles: every step)")
    progress: bool = _opt(True, "show progress bars")

    @property
    def loss_cfg(self) -> LossConfig:
        from hybridkd_lib.method.losses import LossConfig

        return LossConfig(**self.loss)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The configuration from a dict holding (at least) its fields, e.g. a ``result.json``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_settings(settings: dict, what: str = "settings") -> None:
    """A dict of ``TrainConfig`` fields, or an error naming ``what``, the unknown keys and the valid ones."""
    names = [f.name for f in fields(TrainConfig)]
    if not isinstance(settings, dict):
        raise ValueError(f"{what}={settings!r} not allowed: expected a dict of TrainConfig fields ({', '.join(names)})")
    check_keys(settings, names, "setting", where=f"{what}: ")


def config_from_settings(settings: dict, what: str = "settings") -> TrainConfig:
    """The ``TrainConfig`` of a dict of its fields (a training notebook's ``config`` parameter, a ``--config``
    file): a field left out takes the dataclass default (the only defaults); an unknown one is an error naming
    ``what`` and the valid fields."""
    check_settings(settings, what)
    if "method" not in settings:
        raise ValueError(f"{what} needs a method ({' | '.join(BUILT_IN)} or a plug-in's)")
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- validation
def check_device(device: str) -> None:
    """``cpu``, or ``cuda``/``cuda:N`` where CUDA is available."""
    import torch

    valid = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
                       if torch.cuda.is_available() else [])
    if device not in valid:
        raise ValueError(f"device={device!r} not available here; valid: {', '.join(valid)}")


def check_precision(precision: str, device: str) -> None:
    """``PRECISIONS``; bf16 and fp16 only on CUDA (the CPU computes in fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} not allowed; valid: {', '.join(PRECISIONS)}")
    if precision != "fp32" and not str(device).startswith("cuda"):
        raise ValueError(f"precision={precision!r} needs a CUDA device (device={device!r}); the CPU computes in fp32")


def _check_types(cfg: TrainConfig) -> None:
    """Every field of the type its annotation states (``1`` is a float too; ``True`` is no integer)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        allowed = typing.get_args(hint) or (hint,)
        if value is None and type(None) in allowed:
            continue
        if not any(is_of_type(value, t) for t in allowed if t is not type(None)):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            hint_json = (" (a JSON object, e.g. '{\"width\": 16}'; with papermill pass it as YAML: "
                         f"-y 'config: {{{f.name}: {{width: 16}}}}')" if dict in allowed else "")
            raise ValueError(f"{f.name}={value!r} not allowed: expected {names}{hint_json}")


# the range of every number a run takes (T and epochs: in validate); a float is also finite
RANGES = {
    "lr": dict(low=0, low_open=True), "weight_decay": dict(low=0), "momentum": dict(low=0, high=1, high_open=True),
    "clip_grad_norm": dict(low=0, low_open=True),
    "batch_size": dict(low=0, low_open=True, integer=True), "max_steps_per_epoch": dict(low=0, low_open=True, integer=True),
    "teacher_input_size": dict(low=0, low_open=True, integer=True), "precise_bn": dict(low=0, integer=True),
    "num_workers": dict(low=0, integer=True),
}


def _check_numbers(cfg: TrainConfig) -> None:
    """Every number in its range (``RANGES``; None where a field may be None), every float finite, numbers
    inside the dict settings (``loss``, ``neuron``, the keywords) too."""
    for name, allowed in RANGES.items():
        value = getattr(cfg, name)
        if value is not None:
            check_number(name, value, **allowed)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and f.name not in RANGES:
            check_number(f.name, value)
        bad = non_finite(value, f.name) if isinstance(value, dict) else None
        if bad:
            raise ValueError(f"{bad} not allowed in {f.name}={value!r}: numbers must be finite")


def validate(cfg: TrainConfig, world_size: int = 1, check_out: bool = False) -> None:
    """Refuse bad input before any training, naming the bad value and the valid ones.
    ``check_out``: also create ``cfg.out`` and write a probe file there (the last check)."""
    from hybridkd_lib.data import datasets
    from hybridkd_lib.snn import ratebp
    from hybridkd_lib.method.losses import check_loss_options
    from hybridkd_lib.models import check_model_kwargs, check_model_name, resolve_teacher_ckpt
    from hybridkd_lib.models.timm_teachers import load_state_dict_file
    from hybridkd_lib.snn.neurons import DEFAULT_NEURON, NeuronConfig

    _check_types(cfg)
    _check_numbers(cfg)
    method = get_method(cfg.method)
    if not isinstance(cfg.T, int) or cfg.T < 1:
        raise ValueError(f"T={cfg.T!r} not allowed; T must be an integer >= 1")
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise ValueError(f"epochs={cfg.epochs!r} not allowed; epochs must be an integer >= 1")
    datasets.dataset_info(cfg.dataset)
    datasets.check_options(cfg.dataset, cfg.data_kw)
    if "student" in method.networks:
        check_model_name(cfg.student, "student")
        NeuronConfig.with_overrides(DEFAULT_NEURON, cfg.neuron)
        if cfg.neuron and "neuron_cfg" in cfg.student_kw:
            raise ValueError("neuron and student_kw['neuron_cfg'] both set the LIF settings; use neuron alone")
        check_model_kwargs(cfg.student, cfg.student_kw, "student_kw", also={"T": cfg.T})
        ratebp.check_rate_value(cfg.rate_value)
    if "teacher" in method.networks:
        check_model_name(cfg.teacher, "teacher")
        check_model_kwargs(cfg.teacher, cfg.teacher_kw, "teacher_kw")
    if world_size > 1 and cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} (the global batch) does not divide across {world_size} "
                         f"processes; use a multiple of {world_size}")
    check_device(cfg.device)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    check_precision(cfg.precision, cfg.device)
    if cfg.lr_step not in LR_STEPS:
        raise ValueError(f"lr_step={cfg.lr_step!r} not allowed; valid: {', '.join(LR_STEPS)}")
    check_loss_options(cfg.loss)
    if cfg.method in methods_where(teacher=True):   # it loads a trained teacher
        if not cfg.teacher_ckpt:
            raise ValueError(f"method {cfg.method!r} needs --teacher-ckpt (a teacher run directory or .pt file)")
        path = resolve_teacher_ckpt(cfg.teacher_ckpt)
        try:
            load_state_dict_file(path)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"unreadable teacher checkpoint {cfg.teacher_ckpt!r}: {exc}") from exc
    if check_out:
        check_writable_folder(cfg.out)
