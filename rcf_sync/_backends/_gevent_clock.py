"""The gevent backend's clock: ``IReactorTime`` on the hub's timers.

A call's state (called, cancelled, its time) changes under one lock, from
any thread; its libev timer is touched in the hub's thread only.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable

from .._errors import AlreadyCalled, AlreadyCancelled
from .._timers import check_delay
from ._base import guard, log_negative_delay, original

__all__ = ["GeventClock"]


_get_ident = original("_thread", "get_ident")
_RealLock = original("_thread", "allocate_lock")


class _GeventCall:
    """An ``IDelayedCall`` on a libev/libuv timer of the hub."""

    __slots__ = ("_clock", "_timer", "_time", "func", "args", "kw", "called", "cancelled")

    def __init__(self, clock: GeventClock, when: float, func: Callable[..., object] | None,
                 args: tuple[Any, ...] | None, kw: dict[str, Any] | None) -> None:
        self._clock = clock
        self._time = when
        self.func, self.args, self.kw = func, args, kw
        self.called = self.cancelled = 0
        self._timer: Any = None  # the hub's timer: touched in the hub only
        with clock._lock:
            clock._pending.add(self)
        clock._in_hub(self._start)

    def _start(self) -> None:
        if not self.active():
            return
        loop = self._clock._hub.loop
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        loop.update_now()
        self._timer = loop.timer(max(0.0, self._time - time.monotonic()))
        self._timer.start(self._fire)

    def _fire(self) -> None:
        with self._clock._lock:
            if not self.active():
                return
            early = self._time > time.monotonic() + 0.0005  # the loop's time is coarse
            if not early:
                self.called = 1
        if early:
            return self._start()
        self._release()
        func, args, kw = self.func, self.args, self.kw
        self.func = self.args = self.kw = None
        if func is not None:
            guard(lambda: func(*(args or ()), **(kw or {})))

    def _release(self) -> None:
        with self._clock._lock:
            self._clock._pending.discard(self)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _check(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled("this call was already cancelled")
        if self.called:
            raise AlreadyCalled("this call has already run")

    def getTime(self) -> float:
        return self._time

    def active(self) -> bool:
        return not (self.called or self.cancelled)

    def cancel(self) -> None:
        with self._clock._lock:  # check and act as one step, from any thread
            self._check()
            self.cancelled = 1
            self.func = self.args = self.kw = None
            self._clock._pending.discard(self)
        self._clock._in_hub(self._release)

    def reset(self, secondsFromNow: float) -> None:
        seconds = check_delay(secondsFromNow, "secondsFromNow")
        with self._clock._lock:
            self._check()
            self._time = time.monotonic() + seconds
        self._clock._in_hub(self._start)

    def delay(self, secondsLater: float) -> None:
        seconds = check_delay(secondsLater, "secondsLater")
        with self._clock._lock:
            self._check()
            self._time += seconds
        self._clock._in_hub(self._start)


class GeventClock:
    """The gevent backend's real clock: ``IReactorTime`` on the hub's timers.

    Calls run in the hub (they must not block). A negative delay runs at once
    (logged once). Safe to call from other threads: a call's state changes
    under one lock, its libev timer is touched in the hub only."""

    def __init__(self, hub: Any, hub_thread: int) -> None:
        self._hub_ref = weakref.ref(hub)  # the hub owns us, not the reverse
        self._hub_thread = hub_thread
        self._lock = _RealLock()  # guards every call's called/cancelled/_time and _pending
        self._pending: set[_GeventCall] = set()

    @property
    def _hub(self) -> Any:
        return self._hub_ref()

    def _in_hub(self, fn: Callable[..., object], *args: Any) -> None:
        if _get_ident() == self._hub_thread:
            fn(*args)
        else:
            self._hub.loop.run_callback_threadsafe(fn, *args)

    def seconds(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def callLater(self, delay: float, callable: Callable[..., object], *args: Any,
                  **kw: Any) -> _GeventCall:
        """Run ``callable(*args, **kw)`` in the hub after ``delay`` seconds."""
        delay = check_delay(delay)
        if delay < 0:
            log_negative_delay(delay)
            delay = 0.0
        return _GeventCall(self, time.monotonic() + delay, callable, args, kw)

    def getDelayedCalls(self) -> list[_GeventCall]:
        """The pending calls, earliest first."""
        with self._lock:
            calls = [c for c in self._pending if c.active()]
        return sorted(calls, key=lambda c: c._time)
