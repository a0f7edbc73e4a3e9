"""The gevent backend's clock: ``IReactorTime`` on the hub's timers.

A call's state (called, cancelled, its time) changes under one lock, from
any thread; its libev timer is touched in the hub's thread only.
"""

import logging
import time
import weakref

from .._errors import AlreadyCalled, AlreadyCancelled
from .._timers import check_delay
from ._base import log_negative_delay, original

__all__ = ["GeventClock"]

log = logging.getLogger("rcf_sync")

_get_ident = original("_thread", "get_ident")
_RealLock = original("_thread", "allocate_lock")


def _guard(fn, *args):
    try:
        fn(*args)
    except Exception:
        log.exception("unexpected error in rcf_sync running %r", fn)


class _GeventCall:
    """An ``IDelayedCall`` on a libev/libuv timer of the hub."""

    __slots__ = ("_clock", "_timer", "_time", "func", "args", "kw", "called", "cancelled")

    def __init__(self, clock, when, func, args, kw):
        self._clock = clock
        self._time = when
        self.func, self.args, self.kw = func, args, kw
        self.called = self.cancelled = 0
        self._timer = None  # the hub's timer: touched in the hub only
        with clock._lock:
            clock._pending.add(self)
        clock._in_hub(self._start)

    def _start(self):
        if not self.active():
            return
        loop = self._clock._hub.loop
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        loop.update_now()
        self._timer = loop.timer(max(0.0, self._time - time.monotonic()))
        self._timer.start(self._fire)

    def _fire(self):
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
        _guard(lambda: func(*args, **kw))

    def _release(self):
        with self._clock._lock:
            self._clock._pending.discard(self)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _check(self):
        if self.cancelled:
            raise AlreadyCancelled("this call was already cancelled")
        if self.called:
            raise AlreadyCalled("this call has already run")

    def getTime(self):
        return self._time

    def active(self):
        return not (self.called or self.cancelled)

    def cancel(self):
        with self._clock._lock:  # check and act as one step, from any thread
            self._check()
            self.cancelled = 1
            self.func = self.args = self.kw = None
            self._clock._pending.discard(self)
        self._clock._in_hub(self._release)

    def reset(self, secondsFromNow):
        seconds = check_delay(secondsFromNow, "secondsFromNow")
        with self._clock._lock:
            self._check()
            self._time = time.monotonic() + seconds
        self._clock._in_hub(self._start)

    def delay(self, secondsLater):
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

    def __init__(self, hub, hub_thread):
        self._hub_ref = weakref.ref(hub)  # the hub owns us, not the reverse
        self._hub_thread = hub_thread
        self._lock = _RealLock()  # guards every call's called/cancelled/_time and _pending
        self._pending = set()

    @property
    def _hub(self):
        return self._hub_ref()

    def _in_hub(self, fn, *args):
        if _get_ident() == self._hub_thread:
            fn(*args)
        else:
            self._hub.loop.run_callback_threadsafe(fn, *args)

    def seconds(self):
        """Monotonic seconds."""
        return time.monotonic()

    def callLater(self, delay, callable, *args, **kw):
        """Run ``callable(*args, **kw)`` in the hub after ``delay`` seconds."""
        delay = check_delay(delay)
        if delay < 0:
            log_negative_delay(delay)
            delay = 0.0
        return _GeventCall(self, time.monotonic() + delay, callable, args, kw)

    def getDelayedCalls(self):
        """The pending calls, earliest first."""
        with self._lock:
            calls = [c for c in self._pending if c.active()]
        return sorted(calls, key=lambda c: c._time)
