"""Validating what callers pass (timeouts, ``lost_on``) and the one
monotonic deadline each blocking call waits against."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import TypeGuard

__all__ = ["is_real", "is_integer", "_check_timeout", "_check_lost_on", "_deadline", "_remaining"]


def is_real(value: object) -> TypeGuard[float]:
    """A real number of any kind (``numbers.Real``), not a bool; for type
    checkers, a float (it compares and converts as one). The built-in
    types are asked first: an ABC check costs a microsecond, and a client
    makes a few at construction."""
    kind = type(value)
    return kind is float or kind is int or (kind is not bool and isinstance(value, numbers.Real))


def is_integer(value: object) -> TypeGuard[int]:
    """An integer of any kind (``numbers.Integral``), not a bool."""
    kind = type(value)
    return kind is int or (kind is not bool and isinstance(value, numbers.Integral))


def _check_timeout(timeout: object, what: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if not is_real(timeout) or math.isnan(timeout):
        raise ValueError(f"{what} must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"{what} must be >= 0 or None, got {timeout!r}")
    if math.isinf(timeout):
        return None  # waiting forever is what None says
    return float(timeout)


def _check_lost_on(lost_on: object) -> tuple[type[BaseException], ...]:
    """``lost_on`` as a tuple of exception classes (``ValueError`` otherwise)."""
    if isinstance(lost_on, type):
        lost_on = (lost_on,)
    if type(lost_on) is not tuple and not isinstance(lost_on, Iterable):
        raise ValueError(f"lost_on must be an exception class or a tuple of them, got {lost_on!r}")
    classes: list[type[BaseException]] = []
    for cls in lost_on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"lost_on must hold exception classes, got {cls!r}")
        classes.append(cls)
    return tuple(classes)


def _deadline(timeout: object) -> float | None:
    seconds = _check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()

