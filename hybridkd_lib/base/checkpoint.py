"""Atomic, resumable checkpoints (temp file + rename; the last ``keep`` are kept).

Every load uses ``torch.load(..., weights_only=True)``: checkpoints hold only
tensors, numbers, strings and containers of them; a damaged file is one line naming it (``load``).

A run's ``checkpoints/`` folder has an index (``index.json``: the name and size of every checkpoint
this library wrote there, oldest first). Retention, resuming and ``--overwrite`` read only that index:
a file someone else put there (``epoch_9999.pt`` too) is never counted, loaded or deleted, and a listed
checkpoint whose size changed since it was written (truncated) no longer counts as one to keep.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import torch

from hybridkd_lib.base.results import UnreadableFile, atomic_write, read_json_file, write_json

INDEX = "index.json"
_NAME = re.compile(r"epoch_\d{4}\.pt")


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def load(path: str | Path, map_location="cpu", what: str | None = None, mmap: bool = False):
    """``torch.load(path, weights_only=True)``; a damaged file (empty, truncated, random bytes, or holding
    objects other than tensors, numbers, strings and containers of them) is an ``UnreadableFile`` whose one
    line names ``what`` (by default "model file" or "checkpoint") and ``path``, never torch's advice to load
    it unsafely. ``mmap``: tensors are mapped, not read (a cheap check that the file is whole)."""
    what = what or ("model file" if Path(path).name == "model.pt" else "checkpoint")
    with open(path, "rb") as f:   # a missing or unreadable file: the OSError names it
        head = f.read(len(_ZIP_MAGIC))
    try:
        with warnings.catch_warnings():
            if head != _ZIP_MAGIC:   # an old-format file or none: torch's unpickler warns before it fails
                warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:   # UnpicklingError, RuntimeError (miniz), EOFError, OSError (mmap of a short file), ...
        raise UnreadableFile(f"{what} {path} is unreadable ({_damage(Path(path), head, exc)})") from None


_ZIP_MAGIC = b"PK\x03\x04"   # torch.save's format since PyTorch 1.6: a zip archive


def _damage(path: Path, head: bytes, exc: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused (``head``: its first bytes), in a few words (torch's
    own message is many lines and ends with advice to load it unsafely)."""
    if not head:
        return "the file is empty"
    if head != _ZIP_MAGIC:
        return "not a PyTorch zip file: random bytes or another format"
    text = str(exc)
    if "central directory" in text or "zip archive" in text or not zipfile.is_zipfile(path):
        return "truncated or damaged: its zip archive cannot be read"
    if "weights_only" in text.lower() or "Unsupported global" in text or "Weights only" in text:
        return ("it holds objects other than tensors, numbers and strings, which are never loaded: "
                "loading them could run code")
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"damaged ({type(exc).__name__}{': ' + first if first else ''})"


MODEL_KEYS = ("arch", "model_kw", "num_classes", "model")


def load_model_file(path: str | Path, mmap: bool = False) -> dict:
    """A run's ``model.pt`` (``MODEL_KEYS``: enough to rebuild the model); ``UnreadableFile`` naming it when
    it is damaged or holds no model of this library."""
    state = load(path, what="model file", mmap=mmap)
    missing = [k for k in MODEL_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UnreadableFile(f"model file {path} is unreadable (not a model this library wrote: no "
                             f"{', '.join(missing)})")
    return state


def model_file_damage(path: str | Path) -> str | None:
    """Why a run's ``model.pt`` cannot be used (its one-line ``UnreadableFile`` or ``OSError``), or None when
    it is whole. Cheap: the tensors are mapped, not read."""
    try:
        load_model_file(path, mmap=True)
    except (UnreadableFile, OSError) as exc:
        return str(exc)
    return None


def epoch_path(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch_{epoch:04d}.pt"


def _index(folder: Path) -> list[dict] | None:
    """The index's entries (names checked: a checkpoint file in this folder), or None when there is no
    readable index (a run from before the index, or a damaged one)."""
    f = folder / INDEX
    if not f.is_file():
        return None
    try:
        entries = read_json_file(f, "checkpoint index").get("checkpoints")
    except UnreadableFile as exc:
        warnings.warn(f"{exc}; using the epoch_NNNN.pt files there")
        return None
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str) and _NAME.fullmatch(e["name"])
            and isinstance(e.get("size"), int)]


def _whole(folder: Path, entry: dict) -> bool:
    p = folder / entry["name"]
    return p.is_file() and p.stat().st_size == entry["size"]


def written(folder: str | Path, whole_only: bool = True, legacy: bool = False) -> list[Path]:
    """The checkpoints this library wrote in ``folder``, oldest first: those still whole, or (``whole_only``
    False) every one still there. A folder without an index: none, or with ``legacy`` (a run from before the
    index) its ``epoch_NNNN.pt`` files."""
    folder = Path(folder)
    entries = _index(folder)
    if entries is None:
        if not (legacy and folder.is_dir()):
            return []
        return sorted(p for p in folder.glob("epoch_*.pt") if _NAME.fullmatch(p.name))
    return sorted(folder / e["name"] for e in entries
                  if (folder / e["name"]).is_file() and (_whole(folder, e) or not whole_only))


def save_epoch(folder: str | Path, epoch: int, state: dict, keep: int = 2) -> Path:
    """Write epoch ``epoch``'s checkpoint, then remove this run's checkpoints older than the newest ``keep``
    whole ones (only files in the index)."""
    folder = Path(folder)
    path = atomic_save(state, epoch_path(folder, epoch))
    entries = [e for e in (_index(folder) or []) if e["name"] != path.name and _whole(folder, e)]
    entries = sorted(entries + [{"name": path.name, "size": path.stat().st_size}], key=lambda e: e["name"])
    write_json(folder / INDEX, {"checkpoints": entries[-keep:]})
    for e in entries[:-keep]:
        (folder / e["name"]).unlink(missing_ok=True)
    return path


def remove_written(folder: str | Path) -> None:
    """Delete the checkpoints this library wrote in ``folder`` and its index (nothing else there); the
    folder too when that leaves it empty."""
    folder = Path(folder)
    for p in written(folder, whole_only=False):
        p.unlink(missing_ok=True)
    (folder / INDEX).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


EPOCH_KEYS = ("epoch", "learner", "optimizer", "scheduler", "rng", "history", "train_time_s")


def load_latest(folder: str | Path, log=print, legacy: bool = True):
    """The newest readable checkpoint ``(path, state)`` this library wrote in ``folder`` (``legacy``: see
    ``written``), or ``(None, None)``.

    A truncated or corrupt file, or one that is no epoch checkpoint of this library, is reported
    by name and the previous one is used.
    """
    for path in reversed(written(folder, whole_only=False, legacy=legacy)):
        try:
            state = load(path)
            missing = [k for k in EPOCH_KEYS if not isinstance(state, dict) or k not in state]
            if missing:
                raise ValueError(f"not an epoch checkpoint of this library (no {', '.join(missing)})")
            return path, state
        except Exception as exc:  # truncated, random bytes, another file, ...
            why = str(exc) if isinstance(exc, UnreadableFile) else f"checkpoint {path} is unreadable ({exc})"
            msg = f"{why}; trying the previous one"
            warnings.warn(msg)
            log(msg)
    return None, None
