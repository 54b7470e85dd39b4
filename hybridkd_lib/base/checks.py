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
