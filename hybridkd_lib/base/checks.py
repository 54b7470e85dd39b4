"""The two checks every set of options shares: known keys, and values of the type a setting states."""
from __future__ import annotations


def check_keys(given, valid, kind: str, where: str = "") -> None:
    """An error naming the keys of ``given`` that are not in ``valid``, and the valid ones
    (``"{where}unknown {kind}(s) [...]; valid: ..."``)."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"{where}unknown {kind}(s) {unknown}; valid: {', '.join(valid)}")


def is_of_type(value, kind: type) -> bool:
    """``value`` is a ``kind`` as a setting: an int is a float too, a bool is neither, None is ``NoneType``."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def number_problem(name: str, value, low=None, low_open: bool = False, high=None, high_open: bool = False,
                   integer: bool = False) -> str | None:
    """None where ``value`` is a finite number (an integer where ``integer``) in the range ``low``..``high``
    (``*_open``: the bound itself excluded), else the one-line complaint naming it and the range, e.g.
    ``"dt=nan not allowed; dt must be > 0 (a finite number)"``."""
    import math

    bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
              f"{'<' if high_open else '<='} {high}" if high is not None else ""]
    allowed = " and ".join(b for b in bounds if b)
    kind = "an integer" if integer else "a finite number"
    expected = f"{name} must be {allowed} ({kind})" if allowed else f"{name} must be {kind}"
    if not is_of_type(value, int if integer else float) or not math.isfinite(value):
        return f"{name}={value!r} not allowed; {expected}"
    if (low is not None and (value < low or (low_open and value == low))) or \
            (high is not None and (value > high or (high_open and value == high))):
        return f"{name}={value!r} not allowed; {expected}"
    return None


def check_number(name: str, value, **allowed) -> None:
    """``number_problem`` as a ``ValueError``."""
    problem = number_problem(name, value, **allowed)
    if problem:
        raise ValueError(problem)


def non_finite(value, where: str = "") -> str | None:
    """The first float in ``value`` (a number, or a dict or list of them, nested) that is NaN or infinite, as
    ``"where.key=nan"``; None where every number is finite."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}={value!r}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def dangling_link(path) -> str | None:
    """The first of ``path`` and its parent folders that is a symbolic link to nothing, said as
    ``"'link' is a symbolic link to 'target', which does not exist"``; None where there is none."""
    import os
    from pathlib import Path

    path = Path(path).absolute()
    for p in [*reversed(path.parents), path]:
        if p.is_symlink() and not p.exists():
            return f"{str(p)!r} is a symbolic link to {os.readlink(p)!r}, which does not exist"
    return None
