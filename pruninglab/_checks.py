"""Shared argument checks: one message format for every user-facing check.

Every check raises ``ValueError`` whose message starts with the argument's name and says what was
expected and what was given, e.g. ``"sparsity: expected a number in [0, 1), got 1.5"``. Call these instead
of writing inline checks, so that the library speaks with one voice.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

__all__ = [
    "int_at_least",
    "positive_int",
    "nonnegative_int",
    "finite_float",
    "positive_float",
    "nonnegative_float",
    "fraction",
    "one_of",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_check(value: Any, name: str, minimum: int, allow_none: bool, expected: str) -> int | None:
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def int_at_least(value: Any, name: str, minimum: int, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (numpy integers too, never a bool; None where ``allow_none``)."""
    return _int_check(value, name, minimum, allow_none, f"an integer >= {minimum}")


def positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (or None where ``allow_none``); ValueError naming ``name`` otherwise."""
    return _int_check(value, name, 1, allow_none, "a positive integer")


def nonnegative_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 0 (or None where ``allow_none``)."""
    return int_at_least(value, name, 0, allow_none=allow_none)


def finite_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float inside the given bounds (closed unless ``*_open``)."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    what = f"a finite number in {lo}, {hi}" if (low is not None and high is not None) else (
        f"a finite number {'>' if low_open else '>='} {low:g}" if low is not None else (
            f"a finite number {'<' if high_open else '<='} {high:g}" if high is not None
            else "a finite number"))
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def positive_float(value: Any, name: str) -> float:
    """``value`` as a finite float > 0."""
    return finite_float(value, name, low=0.0, low_open=True)


def nonnegative_float(value: Any, name: str) -> float:
    """``value`` as a finite float >= 0."""
    return finite_float(value, name, low=0.0)


def fraction(value: Any, name: str, *, low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float in [0, 1) by default (a sparsity, a kept share, a rate)."""
    return finite_float(value, name, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def one_of(value: Any, name: str, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value
