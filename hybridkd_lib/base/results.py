"""The results store: one ``result.json`` per run, written once and atomically."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# the folder above the package: the book's checkout when the package runs from one (``IN_CHECKOUT``); in an
# installed copy it is site-packages, which nothing reads data from or writes results to
REPO_ROOT = Path(__file__).resolve().parents[2]


def in_checkout(root: str | Path = REPO_ROOT) -> bool:
    """Whether ``root`` is the book's checkout: it holds this project's ``pyproject.toml`` (``name =
    "hybridkd_lib"``) and the book's ``notebooks/``. The one rule for "inside a checkout"."""
    root = Path(root)
    try:
        project = (root / "pyproject.toml").read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return (root / "notebooks").is_dir() and re.search(r'^name\s*=\s*"hybridkd_lib"\s*$', project, re.M) is not None


IN_CHECKOUT = in_checkout()


def work_root() -> Path:
    """The folder the default ``data/`` and ``results/`` live in: the checkout inside one, else the working
    folder (an installed copy never reads or writes under site-packages)."""
    return REPO_ROOT if IN_CHECKOUT else Path.cwd()


def default_results_root() -> Path:
    """``$HYBRIDKD_RESULTS`` if set, else ``results/`` of the checkout (inside one) or of the working folder."""
    return Path(os.environ.get("HYBRIDKD_RESULTS", work_root() / "results"))


def atomic_write(path: str | Path, write, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename it over ``path``:
    readers see the old file or the whole new one, never half of it. A failed write (disk full, a
    read-only folder, a file size limit) leaves ``path`` as it was and raises an ``OSError`` that names
    ``path`` and the free space there."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:   # torch.save on a full disk: RuntimeError "unexpected pos ..."
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(f"could not write {path}: {_why(exc)} ({_free_space(path.parent)})") from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _why(exc: BaseException) -> str:
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip().splitlines()
    why = text[0][:300] if text else type(exc).__name__
    if "unexpected pos" in why:   # torch.save's writer: fewer bytes were written than it asked for
        pos = why[why.index("unexpected pos"):]
        why = f"the write stopped short: the disk is full or a file size limit was hit (torch.save: {pos})"
    return why


def _free_space(folder: Path) -> str:
    for f in (folder, *folder.parents):
        if f.exists():
            return f"{shutil.disk_usage(f).free / 2**20:.0f} MB free on that disk"
    return "free space unknown"


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class UnreadableFile(ValueError):
    """A file that is there but cannot be trusted (truncated, random bytes, not JSON, the wrong shape): a
    metadata file, a model or a checkpoint. Its message is one line naming the file."""


def read_json_file(path: str | Path, what: str = "file") -> dict:
    """The JSON object in ``path``; ``UnreadableFile`` naming the file when it is not one."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFile(f"{what} {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise UnreadableFile(f"{what} {path} is unreadable (a JSON {type(value).__name__}, not an object)")
    return value


def read_result(run_dir: str | Path) -> dict | None:
    """A run's ``result.json``, None when there is none; ``UnreadableFile`` when it is damaged."""
    p = Path(run_dir) / "result.json"
    return read_json_file(p, "result file") if p.is_file() else None


def git_commit() -> str:
    """The checkout's commit (12 hex digits); ``"unknown"`` outside the book's checkout (an installed copy
    may sit inside another repository, whose commit says nothing of this code)."""
    if not IN_CHECKOUT:
        return "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def check_writable_folder(path: str | Path, what: str = "out") -> Path:
    """Create ``path`` if needed and write and remove a probe file in it, or say why not (a symbolic link to
    nothing on the way to ``path`` is named, not reported as "File exists")."""
    from hybridkd_lib.base.checks import dangling_link

    link = dangling_link(path)
    if link:
        raise ValueError(f"{what}={str(path)!r} cannot be created: {link}; create the link's target or choose "
                         f"another {what}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what}={str(path)!r} is a file; expected a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{what}={str(path)!r} cannot be written: {exc.strerror or exc}") from exc
    return path
