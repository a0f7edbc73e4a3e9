"""``FakeClock``: a deterministic clock in the shape of Twisted's
``task.Clock``, for tests of code that schedules with ``callLater``."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable
from typing import Callable

from .._timers import DelayedCall, TimerQueue, check_delay

__all__ = ["FakeClock"]


class FakeClock:
    """A clock whose time moves only when you :meth:`advance` it.

    Provides ``seconds()``, ``callLater()``, ``getDelayedCalls()`` (Twisted's
    ``IReactorTime``) plus :meth:`advance` and :meth:`pump`. Calls run in
    time order (scheduling order for equal times) in the thread that
    advances; a call scheduled by a running call runs in the same
    ``advance`` if it is already due. As in Twisted's ``task.Clock``, a
    negative ``callLater`` delay schedules the call in the past, so it runs
    at the next ``advance``.

    Thread-safe: one thread may advance while others schedule or cancel.
    ``advance`` calls do not nest across threads (a second one waits).
    """

    def __init__(self, start: float = 0.0) -> None:
        self.rightNow = check_delay(start, "start")
        self._timers = TimerQueue(self.seconds)
        self._advancing = threading.RLock()

    def seconds(self) -> float:
        """The present fake time, in seconds."""
        return self.rightNow

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall:
        """Schedule ``callable(*args, **kw)`` ``delay`` fake seconds from now;
        return its :class:`~rcf_sync._timers.DelayedCall`."""
        delay = check_delay(delay)
        if not builtins.callable(callable):
            raise TypeError(f"callLater needs a callable, got {callable!r}")
        return self._timers.schedule(self.rightNow + delay, callable, args, kw)

    def getDelayedCalls(self) -> list[DelayedCall]:
        """The pending calls, earliest first."""
        return self._timers.pending()

    @property
    def calls(self) -> list[DelayedCall]:
        """Alias of :meth:`getDelayedCalls`, as ``task.Clock.calls``."""
        return self._timers.pending()

    def advance(self, amount: float) -> None:
        """Move time forward by ``amount`` seconds and run every call that
        falls due. ``ValueError`` for a negative or NaN amount."""
        amount = check_delay(amount, "amount")
        if amount < 0:
            raise ValueError(f"cannot advance a clock backwards (amount={amount!r})")
        with self._advancing:
            self.rightNow += amount
            while True:
                due = self._timers.pop_due(self.rightNow, limit=1)
                if not due:
                    break
                due[0]()

    def pump(self, timings: Iterable[float]) -> None:
        """:meth:`advance` by each amount in ``timings`` in turn."""
        for amount in timings:
            self.advance(amount)

    def __repr__(self) -> str:
        return f"<FakeClock t={self.rightNow!r} pending={len(self._timers)}>"
