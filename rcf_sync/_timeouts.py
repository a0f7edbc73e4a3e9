"""Validating what callers pass (timeouts, ``lost_on``) and the one
monotonic deadline each blocking call waits against."""

import math
import numbers
import time

__all__ = ["check_timeout", "check_lost_on", "deadline", "remaining"]


def _check_timeout(timeout, what="timeout"):
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or math.isnan(timeout):
        raise ValueError(f"{what} must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"{what} must be >= 0 or None, got {timeout!r}")
    if math.isinf(timeout):
        return None  # waiting forever is what None says
    return float(timeout)


def _check_lost_on(lost_on):
    """``lost_on`` as a tuple of exception classes (``ValueError`` otherwise)."""
    if isinstance(lost_on, type):
        lost_on = (lost_on,)
    try:
        classes = tuple(lost_on)
    except TypeError:
        raise ValueError(f"lost_on must be an exception class or a tuple of them, got {lost_on!r}") from None
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"lost_on must hold exception classes, got {cls!r}")
    return classes


def _deadline(timeout):
    timeout = _check_timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline):
    return None if deadline is None else deadline - time.monotonic()


check_timeout, check_lost_on, deadline, remaining = (
    _check_timeout, _check_lost_on, _deadline, _remaining)
