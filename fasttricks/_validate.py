"""Small argument checks shared by every part of fasttricks.

Each check raises an exception whose message names the argument, echoes the bad value and says
what is allowed; unknown names also get the closest known name (via :mod:`difflib`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from numbers import Real
from typing import Any

__all__ = ["ChoiceError", "check_choice", "check_range", "closest", "did_you_mean"]


class ChoiceError(KeyError, ValueError):
    """An unknown name: catchable both as ``KeyError`` (a registry lookup) and ``ValueError``.

    Unlike a plain ``KeyError``, ``str(err)`` is the readable message, not its ``repr``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest(value: Any, options: Iterable[Any], cutoff: float = 0.5) -> str | None:
    """The option most similar to ``value`` (``difflib`` ratio >= ``cutoff``, default 0.5), or None.

    Comparison is case-insensitive; the option is returned as spelled in ``options``.
    """
    spelled = {str(opt).lower(): str(opt) for opt in options}
    match = difflib.get_close_matches(str(value).lower(), list(spelled), n=1, cutoff=cutoff)
    return spelled[match[0]] if match else None


def did_you_mean(value: Any, options: Iterable[Any]) -> str:
    """A ``" (did you mean 'x'?)"`` hint naming the option closest to ``value``, or ``""``.

    For messages that end in a list of what is allowed; built on :func:`closest`.
    """
    match = closest(value, options)
    return f" (did you mean {match!r}?)" if match is not None else ""


def _choice_message(name: str, value: Any, allowed: list[Any]) -> str:
    msg = f"unknown {name} {value!r}; known: {', '.join(repr(a) for a in allowed)}"
    suggestion = closest(value, allowed)
    if suggestion is not None:
        msg += f". Did you mean {suggestion!r}?"
    return msg


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is in ``allowed``, else raise :class:`ChoiceError`.

    The error (a subclass of both ``KeyError`` and ``ValueError``) lists the allowed values and
    the closest match, e.g. ``unknown optimizer 'rangr'; known: 'adamw', 'ranger'. Did you mean
    'ranger'?``.

    Args:
        name: what the value is, used in the message (``"optimizer"``, ``"pruner"``, ...).
        value: the value to check.
        allowed: the valid values.
    """
    allowed = list(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable/incomparable value
        ok = False
    if not ok:
        raise ChoiceError(_choice_message(name, value, allowed))
    return value


def _describe_range(
    low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool
) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high}")
    return " and ".join(parts) if parts else "a real number"


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """Return ``value`` if it is a real number inside the given bounds, else raise ``ValueError``.

    The message reads ``"eps must be > 0, got -1.0"``. NaN is always rejected; a bound that is
    None is not checked. Non-numbers (strings, None) raise ``TypeError``.

    Args:
        name: the argument's name, used in the message.
        value: the number to check.
        low, high: bounds (default None: unbounded).
        low_inclusive, high_inclusive: whether the bound itself is allowed (default True).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    desc = _describe_range(low, high, low_inclusive, high_inclusive)
    bad = math.isnan(float(value))
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or (value > high if high_inclusive else value >= high)
    if bad:
        raise ValueError(f"{name} must be {desc}, got {value!r}")
    return value
