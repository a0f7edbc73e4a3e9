"""Delayed calls in Twisted's ``IDelayedCall`` shape, and the heap that holds
them.

Theory of operation: a :class:`TimerQueue` keeps ``(time, seq, call)``
entries in a heap under one lock. Cancelling marks the call and leaves its
entry to be skipped lazily; rescheduling pushes a new entry and bumps the
call's ``seq`` so the old entry is skipped too. :meth:`TimerQueue.pop_due`
hands back the due calls, marked as called, for the owner to run outside the
lock. Both ``FakeClock`` and the thread backend's real clock are built on it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from typing import Any, Callable

from ._errors import AlreadyCalled, AlreadyCancelled
from ._timeouts import is_real

__all__ = ["DelayedCall", "TimerQueue", "check_delay"]


def check_delay(seconds: object, what: str = "delay") -> float:
    """Return ``seconds`` as a float, or raise ``TypeError``/``ValueError``
    for a non-number or NaN (negative values are the caller's to judge)."""
    if type(seconds) is float and not math.isnan(seconds):  # the usual case
        return seconds
    if not is_real(seconds):
        raise TypeError(f"{what} must be a number of seconds, got {seconds!r}")
    number = float(seconds)
    if math.isnan(number):
        raise ValueError(f"{what} must not be NaN")
    return number


class DelayedCall:
    """A call scheduled on a clock, as Twisted's ``IDelayedCall``.

    ``cancel()``, ``reset(secondsFromNow)`` and ``delay(secondsLater)`` raise
    :class:`~rcf_sync.AlreadyCalled` or :class:`~rcf_sync.AlreadyCancelled`
    when the call already ran or was cancelled. Thread-safe.
    """

    __slots__ = ("_queue", "_time", "_seq", "func", "args", "kw", "called", "cancelled")

    func: Callable[..., object] | None
    args: tuple[Any, ...] | None
    kw: dict[str, Any] | None

    def __init__(
        self,
        queue: TimerQueue,
        time: float,
        func: Callable[..., object],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> None:
        self._queue = queue
        self._time = time
        self._seq = 0
        self.func, self.args, self.kw = func, args, kw
        self.called = 0
        self.cancelled = 0

    def getTime(self) -> float:
        """The clock time at which the call will run."""
        return self._time

    def active(self) -> bool:
        """True until the call has run or been cancelled."""
        return not (self.called or self.cancelled)

    def cancel(self) -> None:
        """Unschedule the call."""
        self._queue._cancel(self)

    def reset(self, secondsFromNow: float) -> None:
        """Run the call ``secondsFromNow`` after the clock's present time."""
        self._queue._move(self, check_delay(secondsFromNow, "secondsFromNow"), relative_to_now=True)

    def delay(self, secondsLater: float) -> None:
        """Run the call ``secondsLater`` after the time it is now scheduled for."""
        self._queue._move(self, check_delay(secondsLater, "secondsLater"), relative_to_now=False)

    def __call__(self) -> object:
        """Run the call (once: the clock that owns it does so)."""
        func, args, kw = self.func, self.args, self.kw
        if func is None or args is None or kw is None:
            raise RuntimeError(f"{self!r} has nothing left to run")
        self.func = self.args = self.kw = None
        return func(*args, **kw)

    def __repr__(self) -> str:
        state = "called" if self.called else "cancelled" if self.cancelled else "active"
        name = getattr(self.func, "__qualname__", None) or repr(self.func)
        return f"<DelayedCall {state} at {self._time:.6f}: {name}>"


class TimerQueue:
    """A heap of :class:`DelayedCall` under a lock, for clocks to build on.

    ``seconds`` is the owning clock's time function; ``on_earlier`` (optional)
    is called, outside the lock, when a new or moved call becomes the
    earliest, so a sleeping loop can wake up.
    """

    def __init__(
        self, seconds: Callable[[], float], on_earlier: Callable[[], object] | None = None
    ) -> None:
        self._seconds = seconds
        self._on_earlier = on_earlier
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._active = 0

    def __len__(self) -> int:
        return self._active

    def reset_lock(self) -> None:
        """In a forked child: a lock another thread held at the fork stays
        held there; the heap itself is kept."""
        self._lock = threading.Lock()

    def schedule(
        self, when: float, func: Callable[..., object], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> DelayedCall:
        """Add a call due at clock time ``when``; return it."""
        call = DelayedCall(self, when, func, args, kw)
        with self._lock:
            self._active += 1
            self._push(call)
            earliest = self._heap[0][2] is call
        if earliest and self._on_earlier is not None:
            self._on_earlier()
        return call

    def _push(self, call: DelayedCall) -> None:
        call._seq = next(self._counter)
        heapq.heappush(self._heap, (call._time, call._seq, call))

    def _check(self, call: DelayedCall) -> None:
        if call.cancelled:
            raise AlreadyCancelled("this call was already cancelled")
        if call.called:
            raise AlreadyCalled("this call has already run")

    def _cancel(self, call: DelayedCall) -> None:
        with self._lock:
            self._check(call)
            call.cancelled = 1
            call.func = call.args = call.kw = None
            self._active -= 1

    def _move(self, call: DelayedCall, seconds: float, relative_to_now: bool) -> None:
        with self._lock:
            self._check(call)
            call._time = (self._seconds() if relative_to_now else call._time) + seconds
            self._push(call)
            earliest = self._heap[0][2] is call
        if earliest and self._on_earlier is not None:
            self._on_earlier()

    def _prune(self) -> DelayedCall | None:
        heap = self._heap
        while heap:
            when, seq, call = heap[0]
            if call.cancelled or call.called or seq != call._seq:
                heapq.heappop(heap)
            else:
                return call
        return None

    def next_time(self) -> float | None:
        """The time of the earliest pending call, or ``None``."""
        with self._lock:
            call = self._prune()
            return None if call is None else call._time

    def pop_due(self, now: float, limit: int | None = None) -> list[DelayedCall]:
        """Remove and return, in order, the calls due at ``now`` (at most
        ``limit``), each already marked as called."""
        due: list[DelayedCall] = []
        with self._lock:
            while limit is None or len(due) < limit:
                call = self._prune()
                if call is None or call._time > now:
                    break
                heapq.heappop(self._heap)
                call.called = 1
                self._active -= 1
                due.append(call)
        return due

    def pending(self) -> list[DelayedCall]:
        """The active calls, earliest first."""
        with self._lock:
            calls = [c for (_, seq, c) in self._heap if c.active() and seq == c._seq]
        calls.sort(key=lambda c: (c._time, c._seq))
        return calls

    def clear(self) -> int:
        """Cancel every pending call; return how many there were."""
        with self._lock:
            n = 0
            for _, seq, call in self._heap:
                if call.active() and seq == call._seq:
                    call.cancelled = 1
                    call.func = call.args = call.kw = None
                    n += 1
            self._heap.clear()
            self._active = 0
            return n
