"""Atomic, resumable checkpoints (temp file + rename; the last ``keep`` are kept).

Every load uses ``torch.load(..., weights_only=True)``: checkpoints hold only
tensors, numbers, strings and containers of them.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from hybridkd_lib.results import atomic_write


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def load(path: str | Path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def epoch_path(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch_{epoch:04d}.pt"


def save_epoch(folder: str | Path, epoch: int, state: dict, keep: int = 2) -> Path:
    folder = Path(folder)
    path = atomic_save(state, epoch_path(folder, epoch))
    for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


EPOCH_KEYS = ("epoch", "learner", "optimizer", "scheduler", "rng", "history", "train_time_s")


def load_latest(folder: str | Path, log=print):
    """The newest readable checkpoint ``(path, state)``, or ``(None, None)``.

    A truncated or corrupt file, or one that is no epoch checkpoint of this library, is reported
    by name and the previous one is used.
    """
    folder = Path(folder)
    for path in sorted(folder.glob("epoch_*.pt"), reverse=True):
        try:
            state = load(path)
            missing = [k for k in EPOCH_KEYS if not isinstance(state, dict) or k not in state]
            if missing:
                raise ValueError(f"not an epoch checkpoint of this library (no {', '.join(missing)})")
            return path, state
        except Exception as exc:  # truncated pickle, bad zip, another file, ...
            msg = f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying the previous one"
            warnings.warn(msg)
            log(msg)
    return None, None
