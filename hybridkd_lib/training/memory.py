"""Returning freed CPU heap memory to the operating system between phases of a step.

glibc keeps the heap pages that freed tensors smaller than its (adaptive, at most
32 MB) mmap threshold occupied, so without this the next phase's peak stacks on
memory that is free but still resident. ``malloc_trim(0)`` hands those pages back;
it costs milliseconds. Used after every training step (every method alike) and
between RateBP's spike and rate passes.
"""
from __future__ import annotations

import ctypes
import sys

import torch


def _glibc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_MALLOC_TRIM = _glibc_malloc_trim()


def release_freed_memory(device: torch.device) -> None:
    """On the CPU, return the heap pages freed so far to the OS (glibc ``malloc_trim``).

    A no-op on CUDA (its caching allocator is measured by ``max_memory_allocated``)
    and where the C library has no ``malloc_trim``.
    """
    if device.type == "cpu" and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
