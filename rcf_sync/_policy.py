"""Pure back-off arithmetic: validation of policy values and the jitter modes.

Nothing here does I/O, reads a clock or sleeps; randomness comes in as an
argument. The factory (``_factory.py``) is the only caller that matters; the
command line's simulator uses the same functions so that what it shows is what
the factory does.

Jitter modes (``jitterMode``):

``"twisted"``
    Twisted's own: ``delay = normalvariate(delay, delay * jitter)``, then
    ``delay = min(delay * factor, maxDelay)``. The jitter compounds and a
    delay can go negative or past ``maxDelay``. Handled by the factory itself
    so that it stays step for step Twisted's.
``"full"``
    ``uniform(0, base)`` where ``base = min(maxDelay, initialDelay *
    factor ** (n - 1))`` for the n-th retry. Spreads a herd the most.
``"equal"``
    ``base / 2 + uniform(0, base / 2)``: never less than half the base.
``"decorrelated"``
    ``min(maxDelay, uniform(initialDelay, previous * factor))``, starting
    from ``previous = initialDelay``. With ``factor=3`` this is exactly the
    formula of the AWS analysis, which fixes the multiplier at 3.

Every delay the three added modes return lies in ``[0, maxDelay]`` and none
of them compounds its own noise.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, TypeVar

from ._timeouts import is_integer, is_real

__all__ = ["JITTER_MODES", "JitterMode", "SupportsUniform", "validate_policy_value", "jittered_delay"]

#: The values ``jitterMode`` accepts.
JitterMode = Literal["twisted", "full", "equal", "decorrelated"]

JITTER_MODES: tuple[JitterMode, ...] = ("twisted", "full", "equal", "decorrelated")

_V = TypeVar("_V")


class SupportsUniform(Protocol):
    """What the added jitter modes draw from: ``random.Random`` or the
    ``random`` module itself."""

    def uniform(self, a: float, b: float) -> float: ...


def _require_real(name: str, value: object) -> float:
    """``value`` itself, once known to be a real number other than NaN."""
    if not is_real(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return value


def validate_policy_value(name: str, value: _V) -> _V:
    """Check one policy attribute; raise ``ValueError`` naming it when bad.

    Returns the value unchanged. Unknown names are not checked here.
    """
    if name in ("initialDelay", "maxDelay", "delay"):
        number = _require_real(name, value)
        if number < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        if name in ("initialDelay", "delay") and math.isinf(number):
            raise ValueError(f"{name} must be finite, got {value!r}")
    elif name == "factor":
        number = _require_real(name, value)
        if not 1 <= number < math.inf:
            raise ValueError(f"factor must be >= 1 and finite, got {value!r}")
    elif name == "jitter":
        number = _require_real(name, value)
        if not 0 <= number < 1:
            raise ValueError(f"jitter must be in [0, 1), got {value!r}")
    elif name == "maxRetries":
        if value is not None:
            if not is_integer(value):
                raise ValueError(f"maxRetries must be None or an integer >= 0, got {value!r}")
            if value < 0:
                raise ValueError(f"maxRetries must be >= 0, got {value!r}")
    elif name == "maxElapsed":
        if value is not None:
            number = _require_real(name, value)
            if not 0 <= number < math.inf:
                raise ValueError(f"maxElapsed must be None or a finite number >= 0, got {value!r}")
    elif name == "jitterMode":
        if value not in JITTER_MODES:
            raise ValueError(
                f"jitterMode must be one of {', '.join(map(repr, JITTER_MODES))}, got {value!r}"
            )
    return value


def jittered_delay(
    mode: str,
    *,
    base: float,
    previous: float,
    initial: float,
    factor: float,
    max_delay: float,
    rng: SupportsUniform,
) -> float:
    """Return the wait before the next attempt under one of the added modes.

    ``base`` is the un-jittered exponential delay for this retry (already
    capped at ``max_delay``), ``previous`` the wait returned last time (or
    ``initial`` for the first retry), ``rng`` a ``random.Random``-like object.
    The result always lies in ``[0, max_delay]``.
    """
    if mode == "full":
        wait = rng.uniform(0, base)
    elif mode == "equal":
        wait = base / 2 + rng.uniform(0, base / 2)
    elif mode == "decorrelated":
        wait = rng.uniform(initial, max(initial, previous * factor))
    else:
        raise ValueError(f"jittered_delay does not handle jitterMode {mode!r}")
    return min(max(wait, 0.0), max_delay)
