"""A run's folder bound to its settings: ``settings.json`` (written once the set-up succeeded), what the
folder holds for a given configuration (``run_folder_state``: new, resume, finished, restore) and the files
the library wrote there (``remove_run_files``, ``write_metrics``; ``library_file``: what no export may
write over)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from hybridkd_lib.base import checkpoint, results
from hybridkd_lib.base.results import check_writable_folder
from hybridkd_lib.training.config import TrainConfig
from hybridkd_lib.training.distributed import Distributed, broadcast_from_main

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
    if str(recorded.get("device", "cpu")).startswith("cuda"):
        defaults["precision"] = "bf16"   # CUDA runs before ``precision`` existed trained under bf16 autocast
    return {**{k: defaults[k] for k in now if k not in recorded and k in defaults}, **recorded}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


RUN_FILES = ("metrics.csv", "model.pt", "result.json", SETTINGS_FILE)   # what a run writes besides checkpoints/


# what marks a folder the library wrote a run in: its result or settings, its checkpoints' index
RUN_MARKERS = ("result.json", SETTINGS_FILE)
RUN_KEY = ".run_key"   # a run ``reproduce`` put in place: every file there is the library's
_WHAT = {"model.pt": "the run's trained model", "result.json": "the run's result", SETTINGS_FILE: "the run's settings",
         "metrics.csv": "the run's metrics"}


def library_file(path: str | Path) -> str | None:
    """What ``path`` is when it is a file the library needs, or None: a run's model, result, settings or
    metrics (even where it is missing now), a checkpoint or the checkpoints' index, any file of a run that
    ``reproduce`` put in place (``RUN_KEY``). Nothing may write over it but the library's own run."""
    path = Path(os.path.abspath(path))
    folder = path.parent
    if (folder / RUN_KEY).is_file() and (path.exists() or path.name in _WHAT):
        return f"a file of the run {folder} that reproduce wrote"
    run = any((folder / m).is_file() for m in RUN_MARKERS) or (folder / "checkpoints" / checkpoint.INDEX).is_file()
    if run and path.name in _WHAT:
        return f"{_WHAT[path.name]} ({folder} is a run folder)"
    if (folder / checkpoint.INDEX).is_file() and (path.name == checkpoint.INDEX or path.exists()):
        return f"{'the index of' if path.name == checkpoint.INDEX else 'a file of'} the run's checkpoints ({folder})"
    return None


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
    """``"new"``, ``"resume"``, ``"finished"`` or ``"restore"`` (finished, its ``model.pt`` gone or
    unreadable) for ``cfg.out``; a folder that holds a run with other settings (or checkpoints with none
    recorded) is an error naming what differs and the ways forward. ``overwrite`` first removes the files
    the library wrote there (``remove_run_files``). A damaged ``result.json`` does not count as finished."""
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
    return _model_state(out, cfg.epochs)


def _model_state(out: Path, epochs: int) -> str:
    """A finished run: ``"finished"`` when its ``model.pt`` is whole, ``"restore"`` when it is gone or
    unreadable (written again from the last epoch's checkpoint); an unreadable one with no checkpoint
    of the last epoch left is an error naming it."""
    model = out / "model.pt"
    if not model.is_file():
        return "restore"
    damage = checkpoint.model_file_damage(model)
    if damage is None:
        return "finished"
    last = checkpoint.epoch_path(out / "checkpoints", epochs - 1)
    if last not in checkpoint.written(out / "checkpoints", legacy=(out / SETTINGS_FILE).is_file()):
        raise ValueError(f"{damage}, and no checkpoint of the last epoch is left to restore it from; pass "
                         f"--overwrite to train the run again")
    return "restore"


def write_metrics(path: Path, rows: list[dict]):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    results.atomic_write_text(path, buf.getvalue())


def record_settings(cfg: TrainConfig) -> None:
    settings = run_settings(cfg)
    results.write_json(Path(cfg.out) / SETTINGS_FILE, {"hash": settings_hash(settings), "settings": settings})


def bind_run_folder(cfg: TrainConfig, env: Distributed, overwrite: bool) -> str:
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
