"""The thread backend: the process-wide runtime of ``_runtime`` seen by
clients.

Connection attempts run on the loop thread as non-blocking steps (a
black-holed address costs a registered descriptor and a timer, not a
thread); name lookups and user code go to the bounded worker pool.

Idle connections are watched for bytes nobody asked for and for hang-up
(``EPOLLIN | EPOLLRDHUP``, one-shot), but only once they have been idle for
``ARM_AFTER`` seconds: a connection released and leased again at once (a
busy caller) costs no system call and its replies never wake the loop; the
lease-time check (``_connection``) covers the moments in between. One
runtime timer arms, every ``ARM_AFTER``, the watches released meanwhile.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .._timers import check_delay
from ._attempt import Attempt, Connect
from ._base import after_fork_in_child, log_negative_delay
from ._runtime import IDLE, MAX_WORKERS, Runtime

if TYPE_CHECKING:
    from .._callbacks import UserCode
    from .._connectors import _Address, _SocketConnector
    from .._timers import DelayedCall
    from ._seam import Deliver, Event, Lock, Steps
    from ._workers import Job

__all__ = ["ThreadBackend", "ThreadClock", "get_runtime", "shared_backend", "MAX_WORKERS"]

#: Seconds a released connection stays unwatched before its idle watch is armed.
ARM_AFTER = 0.02


class ThreadClock:
    """The thread backend's real clock: ``IReactorTime`` on ``time.monotonic``.

    Calls run on the backend's loop thread. A negative delay runs at once
    (logged once). Thread-safe."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def seconds(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> DelayedCall:
        """Run ``callable(*args, **kw)`` on the loop thread after ``delay``
        seconds; return a cancellable delayed call."""
        delay = check_delay(delay)
        if delay < 0:
            log_negative_delay(delay)
            delay = 0.0
        return self._runtime.schedule(time.monotonic() + delay, callable, args, kw)

    def getDelayedCalls(self) -> list[DelayedCall]:
        """The pending calls, earliest first."""
        return self._runtime.timers.pending()


class OneShotEvent:
    """The thread backend's event: set once, waited on by any number of
    threads. ``threading.Event`` builds a ``Condition`` per event and a lock
    per wait; a handle makes an event for every change a caller waits on
    (a thousand clients connecting, a lease queued), so this one is a single
    lock held until :meth:`set` and handed on by each waiter it wakes."""

    __slots__ = ("_lock", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            self._release()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        if self._flag:
            return True
        if self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._release()  # wake the next waiter
        return self._flag

    def _release(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # two set() at once, or a waiter after one of them
            pass


class _Arming:
    """Arms, from the loop, the idle watches released since the last round."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._reset()
        after_fork_in_child(self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # guards the two fields below
        self._queued: list[_IdleWatch] = []  # watches released since the last round
        self._due = False       # a round is scheduled

    def queue(self, watch: _IdleWatch) -> None:
        with self._lock:
            self._queued.append(watch)
            if self._due:
                return
            self._due = True
        self._rt.schedule(time.monotonic() + ARM_AFTER, self._round, (), {})

    def _round(self) -> None:
        with self._lock:
            self._due = False
            queued, self._queued = self._queued, []
        now = time.monotonic()
        for watch in queued:
            watch._queued = False
            watch._sweep(now)


class _IdleWatch:
    """Calls ``callback(arg)`` on the loop when an idle connection has bytes
    nobody asked for or is closed by the peer. The lease holder tells it
    nothing: ``idle_since(arg)`` (when the connection was last given back,
    None while someone holds it) is read at each arming round. Loop only."""

    __slots__ = ("_rt", "_sock", "_callback", "_arg", "_idle_since", "_armed", "_queued",
                 "_closed", "_fired")

    def __init__(self, runtime: Runtime, sock: socket.socket, callback: Callable[[Any], None],
                 arg: Any, idle_since: Callable[[Any], float | None]) -> None:
        self._rt = runtime
        self._sock = sock
        self._callback = callback
        self._arg = arg
        self._idle_since = idle_since
        self._armed = False     # registered in the poller
        self._queued = False    # waiting for an arming round
        self._closed = False
        self._fired = 0.0       # when it last fired
        self.rearm()

    def rearm(self) -> None:
        """Loop: watch now (a new connection, or one found quiet)."""
        if not self._closed and not self._armed:
            self._armed = True
            try:
                self._rt.arm(self._sock, IDLE, self)  # calls _fire: no bound method kept
            except (OSError, ValueError):
                self._fire()

    def _fire(self) -> None:
        self._armed = False
        if self._closed:
            return
        self._fired = time.monotonic()
        self._callback(self._arg)
        # Fired during a lease (its reply), or on a stream whose reply waits:
        # arm again once it has been given back after this and left idle.
        if not (self._closed or self._armed or self._queued):
            self._queue()

    __call__ = _fire

    def _queue(self) -> None:
        self._queued = True
        self._rt.arming.queue(self)

    def _sweep(self, now: float) -> None:
        if self._closed or self._armed:
            return
        since = self._idle_since(self._arg)
        if since is not None and since >= self._fired and now - since >= ARM_AFTER / 2:
            self.rearm()
        else:  # held, or in use again, or not given back since it fired
            self._queue()

    def leased(self) -> None:
        """Not called (``watch_follows_leases`` is false): see ``_sweep``."""

    def released(self, now: float) -> None:
        """Not called (``watch_follows_leases`` is false): see ``_sweep``."""

    def abandon(self) -> None:
        """After a fork: the registration is the parent's poller's; just
        stop reacting (starts nothing in the child)."""
        self._closed = True

    def close(self) -> None:
        """Stop watching (call before closing the socket)."""
        if not self._closed:
            self._closed = True
            if self._rt.in_loop():
                self._rt.forget(self._sock)
            else:
                self._rt.post(self._rt.forget, self._sock)


class ThreadBackend:
    """Backend running clients on the shared background threads."""

    name = "thread"
    caller_thread: int | None = None  # any thread may use its clients
    watch_follows_leases = False  # an idle watch reads the connection's release stamp

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.clock = runtime.clock

    def lock(self) -> Lock:
        return threading.Lock()

    def event(self) -> OneShotEvent:
        return OneShotEvent()

    thread_ident = caller_id = staticmethod(threading.get_ident)

    def describe_caller_error(self) -> str:
        return "any thread may use this client"

    def acquire(self) -> None:
        self._rt.acquire()

    def release(self, timeout: float = 5.0) -> None:
        self._rt.release(timeout)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        self._rt.post(fn, *args)

    def call_first(self, fn: Callable[..., object], *args: Any) -> None:
        self._rt.post(fn, *args, first=True)

    def in_loop(self) -> bool:
        return self._rt.in_loop()

    def wake(self, event: Event) -> None:
        self._rt.wake_soon(event)

    def call_later_real(self, seconds: float, fn: Callable[..., object],
                        *args: object) -> DelayedCall:
        return self.clock.callLater(seconds, fn, *args)

    def start_attempt(self, steps: Steps, timeout: float | None,
                      deliver: Callable[[Any, BaseException | None], None],
                      user_code: Callable[[], UserCode]) -> Attempt:
        attempt = Attempt(self._rt, steps, timeout, deliver, user_code)
        attempt.start()
        return attempt

    def connect_direct(self, connector: _SocketConnector, address: _Address,
                       timeout: float | None,
                       deliver: Callable[[Any, BaseException | None], None]) -> Connect:
        """As :meth:`start_attempt` for the connector's own attempt followed
        by an ``Adopt``, when it has a direct address (no lookup, no TLS)
        and no user code runs: the same calls without the step interpreter."""
        attempt = Connect(self._rt, connector, address, timeout, deliver)
        attempt.start()
        return attempt

    def run_blocking(self, fn: Callable[..., Any], args: tuple[Any, ...], deliver: Deliver,
                     threaded: bool = False) -> Job:
        """Run ``fn(*args)`` on a worker; ``deliver(result, exc)`` on the
        loop. Returns a job with ``abandon()``."""
        return self._rt.workers.submit(fn, args, deliver)

    def watch_idle(self, sock: socket.socket, callback: Callable[[Any], None], arg: Any,
                   idle_since: Callable[[Any], float | None]) -> _IdleWatch:
        return _IdleWatch(self._rt, sock, callback, arg, idle_since)

    def settle(self, timeout: float) -> None:
        pass  # the loop closes what it cancels before it answers

    def threads(self) -> list[threading.Thread]:
        return self._rt.threads()

    def __repr__(self) -> str:
        return "<ThreadBackend>"


_runtime: list[Runtime] = []
_shared: list[ThreadBackend] = []


def get_runtime() -> Runtime:
    """The process-wide thread runtime."""
    if not _runtime:
        rt = Runtime()
        rt.clock = ThreadClock(rt)
        rt.arming = _Arming(rt)
        _runtime.append(rt)
    return _runtime[0]


def shared_backend() -> ThreadBackend:
    """The process's one :class:`ThreadBackend` (it holds no per-client state)."""
    if not _shared:
        _shared.append(ThreadBackend(get_runtime()))
    return _shared[0]
