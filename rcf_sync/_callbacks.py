"""User code of one client or pool: in order, never two at once, off the loop.

User code is everything a user hands us: ``on_connect``, ``on_disconnect``,
``heartbeat``, socket factories, the methods of a factory subclass (and, in
protocol mode, the protocol's callbacks). It may block and it may raise, so
it never runs on the loop that every client of the process shares: each
handle has one :class:`UserCode` queue, whose calls run one after the other
through the backend's ``run_blocking`` (a bounded worker pool, or a
greenlet), each followed by its ``then(result, exc)`` on the loop.

A call may be *abandoned* (its attempt timed out while the user code hangs):
it stops holding the queue, later calls go ahead, and what it returns is
discarded (a socket is closed).
"""

from __future__ import annotations

import collections
import socket
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._backends._seam import Abandonable, Backend, Event, Lock

#: ``then(result, exc)``, run on the loop after the call.
Then = Callable[[Any, "BaseException | None"], None]

__all__ = ["UserCode"]


class _Call:
    __slots__ = ("fn", "args", "then", "threaded", "job", "abandoned")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], then: Then | None,
                 threaded: bool) -> None:
        self.fn, self.args, self.then, self.threaded = fn, args, then, threaded
        self.job: Abandonable | None = None  # the backend's handle on it while it runs
        self.abandoned = False


class UserCode:
    """One handle's queue of user code (thread-safe)."""

    __slots__ = ("_backend", "_lock", "_queue", "_running", "_drained")

    def __init__(self, backend: Backend, lock: Lock) -> None:
        self._backend = backend
        # Guards the three fields below: the handle's lock, never held by
        # the handle when it calls in here (nor by this queue when it calls out).
        self._lock = lock
        self._queue: collections.deque[_Call] | None = None  # calls waiting their turn
        self._running: _Call | None = None  # the call running now
        self._drained: Event | None = None  # event for wait_drained(), made on demand

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...] = (), then: Then | None = None,
            threaded: bool = False) -> _Call:
        """Queue ``fn(*args)``; when it returns (or raises), ``then(result,
        exc)`` runs on the loop. ``threaded``: see ``_steps.UserCall``.
        Returns a handle for :meth:`abandon`. Never blocks."""
        call = _Call(fn, args, then, threaded)
        with self._lock:
            if self._running is not None:
                if self._queue is None:
                    self._queue = collections.deque()
                self._queue.append(call)
                return call
            self._running = call
        self._start(call)
        return call

    def _start(self, call: _Call) -> None:
        call.job = self._backend.run_blocking(call.fn, call.args,
                                              lambda result, exc: self._done(call, result, exc),
                                              call.threaded)

    def _next_locked(self, call: _Call) -> _Call | None:
        # Lock held: ``call`` leaves the queue's head; the next one (if any) takes it.
        if self._running is not call:
            return None
        nxt = self._queue.popleft() if self._queue else None
        self._running = nxt
        return nxt

    def _done(self, call: _Call, result: Any, exc: BaseException | None) -> None:
        # On the loop.
        with self._lock:
            nxt = self._next_locked(call)
        if nxt is not None:
            self._start(nxt)
        if call.abandoned:
            _discard(result)
        elif call.then is not None:
            call.then(result, exc)
        with self._lock:
            drained = self._drained_locked()
        if drained is not None:
            drained.set()

    def _drained_locked(self) -> Event | None:
        # Lock held: the wait_drained() event to set now, if nothing runs.
        drained = self._drained if self._running is None else None
        if drained is not None:
            self._drained = None
        return drained

    def idle(self) -> bool:
        """True when no call is queued or running (read on the loop, which
        is where calls are queued from)."""
        return self._running is None

    def wait_drained(self, timeout: float) -> bool:
        """Block (up to ``timeout`` seconds) until no call is queued or
        running; return True if so."""
        with self._lock:
            if self._running is None:
                return True
            if self._drained is None:
                self._drained = self._backend.event()
            event = self._drained
        return bool(event.wait(timeout))

    def abandon(self, call: _Call) -> None:
        """Stop waiting for ``call``: it is dropped if it has not started; if
        it runs, the calls after it go ahead and its result is discarded."""
        with self._lock:
            if call.abandoned:
                return
            call.abandoned = True
            if self._queue:
                try:
                    self._queue.remove(call)
                    return
                except ValueError:
                    pass
            nxt = self._next_locked(call)
            # An abandoned call may never report back (its greenlet is
            # killed): if it was the last, the queue is drained now.
            drained = self._drained_locked()
        job = call.job
        if job is not None:
            job.abandon()
        if nxt is not None:
            self._start(nxt)
        if drained is not None:
            drained.set()

    def reset_after_fork(self, lock: Lock) -> None:
        """In a forked child: the parent's calls do not run here; ``lock``
        is the handle's new one."""
        self._lock = lock
        self._queue = None
        self._running = None


def _discard(result: object) -> None:
    if isinstance(result, socket.socket):
        result.close()
