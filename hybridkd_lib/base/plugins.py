"""Plug-ins: a Python file or module that registers methods (``methods.register_method``) and models
(``models.register_model``) from outside the package.

``load(spec)`` imports one (``train``, ``bench`` and ``reproduce`` take ``--plugin FILE_OR_MODULE``,
repeatable) and records it in ``$HYBRIDKD_PLUGINS``, so every process the run starts (torchrun workers,
bench configurations, notebook kernels) imports it too, before it reads a registry.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ENV = "HYBRIDKD_PLUGINS"   # the plug-ins of this run, separated by os.pathsep
_loaded: dict[str, object] = {}


def _key(spec: str) -> str:
    path = Path(spec)
    return str(path.resolve()) if path.suffix == ".py" or path.is_file() else spec


def load(spec: str) -> object:
    """Import the plug-in ``spec`` (a ``.py`` file, or an importable module name) once per process and add it
    to ``$HYBRIDKD_PLUGINS``; returns the module. A missing file or module, or one that fails on import, is an
    error naming it."""
    key = _key(spec)
    if key not in _loaded:
        _loaded[key] = _import(spec, key)
        listed = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
        if key not in listed:
            os.environ[ENV] = os.pathsep.join(listed + [key])
    return _loaded[key]


def _import(spec: str, key: str):
    path = Path(key)
    if key != spec or path.suffix == ".py":
        if not path.is_file():
            raise ValueError(f"plugin {spec!r}: no such file")
        name = "hybridkd_plugin_" + "".join(c if c.isalnum() else "_" for c in path.stem)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise ValueError(f"plugin {spec!r}: no such file or importable module") from None
        raise ValueError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise ValueError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}") from exc


_loading = False


def load_from_environment() -> None:
    """Import every plug-in ``$HYBRIDKD_PLUGINS`` names (the registries call this before they are read)."""
    global _loading
    if _loading:   # a plug-in being imported reads a registry
        return
    _loading = True
    try:
        for spec in os.environ.get(ENV, "").split(os.pathsep):
            if spec and spec not in _loaded:
                load(spec)
    finally:
        _loading = False


def loaded() -> list[str]:
    """The plug-ins this process imported (resolved file paths or module names)."""
    return list(_loaded)
