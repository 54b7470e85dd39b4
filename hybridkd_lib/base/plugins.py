"""Plug-ins: a Python file or module that registers methods (``methods.register_method``) and models
(``models.register_model``) from outside the package.

``load(spec)`` imports one (``train``, ``bench`` and ``reproduce`` take ``--plugin FILE_OR_MODULE``,
repeatable) and records it in ``$HYBRIDKD_PLUGINS``, so every process the run starts (torchrun workers,
bench configurations, notebook kernels) imports it too, before it reads a registry. A plug-in that cannot be
loaded (no such file, not a ``.py`` file, a syntax error, an exception or ``sys.exit`` on import) is a
one-line ``ValueError`` naming it. Inside ``with deferred():`` the registries load none (the command line
builds its parser so, and reads ``$HYBRIDKD_PLUGINS`` only where its errors are handled).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

ENV = "HYBRIDKD_PLUGINS"   # the plug-ins of this run, separated by os.pathsep
_loaded: dict[str, object] = {}


def _key(spec: str) -> str:
    path = Path(spec)
    return str(path.resolve()) if path.suffix == ".py" or path.is_file() else spec


def load(spec: str, origin: str = "") -> object:
    """Import the plug-in ``spec`` (a ``.py`` file, or an importable module name) once per process and add it
    to ``$HYBRIDKD_PLUGINS``; returns the module. A missing file or module, a file that is no ``.py`` file, or
    one that fails or exits on import, is an error naming it (and ``origin``, where it was listed)."""
    key = _key(spec)
    if key not in _loaded:
        _loaded[key] = _import(spec, key, f"plugin {spec!r}{origin}")
        listed = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
        if key not in listed:
            os.environ[ENV] = os.pathsep.join(listed + [key])
    return _loaded[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _import(spec: str, key: str, named: str):
    path = Path(key)
    if key != spec or path.suffix == ".py" or path.is_file():
        if not path.is_file():
            raise ValueError(f"{named}: no such file")
        if path.suffix != ".py":
            raise ValueError(f"{named} is not a Python file; expected a .py file or an importable module name")
        name = "hybridkd_plugin_" + "".join(c if c.isalnum() else "_" for c in path.stem)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            _run_import(lambda: module_spec.loader.exec_module(module), named)
        except ValueError:
            del sys.modules[name]
            raise
        return module
    try:
        return _run_import(lambda: importlib.import_module(spec), named)
    except ValueError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name and spec.startswith(cause.name):
            raise ValueError(f"{named}: no such file or importable module") from None
        raise


def _run_import(do_import, named: str):
    """``do_import()``, its failure (an exception, ``sys.exit``) one ``ValueError`` naming the plug-in."""
    try:
        return do_import()
    except SystemExit as exc:
        raise ValueError(f"{named} exited on import (sys.exit({exc.code!r})); a plug-in only registers "
                         f"methods and models") from None
    except Exception as exc:
        raise ValueError(f"{named} failed on import: {_first_line(exc)}") from exc


_loading = False
_deferred = False


@contextmanager
def deferred():
    """Inside it, ``load_from_environment`` loads nothing (``--help`` and the parser work whatever
    ``$HYBRIDKD_PLUGINS`` holds)."""
    global _deferred
    was, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = was


def load_from_environment() -> None:
    """Import every plug-in ``$HYBRIDKD_PLUGINS`` names (the registries call this before they are read)."""
    global _loading
    if _loading or _deferred:   # a plug-in being imported reads a registry; or the caller defers them
        return
    _loading = True
    try:
        for spec in os.environ.get(ENV, "").split(os.pathsep):
            if spec and spec not in _loaded:
                load(spec, f" (listed in ${ENV})")
    finally:
        _loading = False


def loaded() -> list[str]:
    """The plug-ins this process imported (resolved file paths or module names)."""
    return list(_loaded)


def listed() -> list[str]:
    """The plug-ins ``$HYBRIDKD_PLUGINS`` names."""
    return [spec for spec in os.environ.get(ENV, "").split(os.pathsep) if spec]
