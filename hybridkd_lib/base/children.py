"""The child processes the library starts (bench configurations, ``torchrun``, notebook kernels): each one
ends with its parent, and a bounded one is stopped, by name, when it runs past its time.

On Linux a child asks the kernel for ``SIGTERM`` when the thread that started it ends
(``prctl(PR_SET_PDEATHSIG)``), however that parent ends (Ctrl-C, ``kill``, ``kill -9``, a crash), so no
child of a killed ``reproduce``, local job or notebook kernel keeps training or writing as an orphan.
``torchrun`` forwards that ``SIGTERM`` to its workers. Elsewhere the children are started as usual.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int = signal.SIGTERM) -> None:   # runs in the child, between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def end_with_parent(sig: int = signal.SIGKILL) -> None:
    """Make this process end when its parent does, as the children ``popen`` starts do: for a process
    someone else started (a submitit local job's worker, whose controller's pid is the job id). ``SIGKILL``
    by default: submitit's workers ignore ``SIGTERM`` (Slurm sends it before a preemption); this process's
    own children still get their ``SIGTERM``."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _die_with_parent(sig)
    if os.getppid() != parent:   # the parent ended before the request took effect
        os.kill(os.getpid(), sig)


def preexec() -> dict:
    """``Popen`` keywords that make the child end with its parent (Linux)."""
    return {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}


def command_text(cmd: list) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


class ChildTimeout(RuntimeError):
    """A bounded child ran past its time and was stopped (the message names it and its command)."""


def popen(cmd: list, **kw) -> subprocess.Popen:
    """``subprocess.Popen`` of a child that ends with its parent."""
    return subprocess.Popen(cmd, **preexec(), **kw)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """``SIGTERM``, then ``SIGKILL`` after ``grace_s``; waits for the child."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(cmd: list, what: str, timeout_s: float | None, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` (output captured as text) of a child that ends with its parent and is stopped
    after ``timeout_s`` seconds (None: no bound), raising ``ChildTimeout`` that names ``what`` and ``cmd``.
    An interrupt of the parent stops the child too."""
    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise ChildTimeout(f"{what} ran past its {timeout_s:g} s limit and was stopped (pid {proc.pid}: "
                           f"{command_text(cmd)})") from None
    except BaseException:
        stop(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

