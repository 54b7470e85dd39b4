"""The CPU memory tricks of a training step, in one place, behind one switch.

None of them changes a number; each only changes where memory lives:

- writing over block temporaries: in the graph-free spike pass a LIF or BN writes its output over
  its input when nobody reads that input again (``layers.on_temporary``, ``layers.add_residual``);
- returning freed heap pages to the OS between the phases of a step (``release_freed_memory``:
  glibc ``malloc_trim``, see ``memory``);
- stepping the optimizer inside backward, so a step never holds every gradient at once
  (``trainer.StepInBackward``; one process only).

``enabled()`` is on by default; ``set_enabled(False)`` (or ``with disabled(): ...``) turns all of
them off, which ``tests/test_trainer.py`` uses to show that a run's weights do not change.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from hybridkd_lib import memory

_ENABLED = True


def enabled() -> bool:
    return _ENABLED


def set_enabled(on: bool) -> None:
    global _ENABLED
    _ENABLED = bool(on)


@contextmanager
def disabled():
    was = _ENABLED
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(was)


def release_freed_memory(device: torch.device) -> None:
    """Give the heap pages freed so far back to the OS (CPU, glibc), when the tricks are on."""
    if _ENABLED:
        memory.release_freed_memory(device)
