"""What a client and a pool share: configuration, leases, waits, losses,
the factory's and the user's code, and fork.

Theory of operation. Three kinds of context touch a handle:

* the backend's *loop* (the shared loop thread, or the gevent hub) runs
  every connection attempt and every loss, one event at a time, as
  Twisted's reactor would;
* *user code* (factory subclass methods, ``on_connect``, ``on_disconnect``,
  ``heartbeat``, socket factories) runs in the handle's ``UserCode`` queue,
  off the loop, in order; a factory whose methods are all ours runs inline
  on the loop instead (it cannot block);
* *callers* (any thread, or greenlets of the hub's thread) wait for a
  connection, lease it, release it, and on an error mark it lost.

Ownership of the fields, as written where they are set in ``__init__``:
*immutable* after construction, *lock* (the handle's ``_lock``: every
decision is taken under it and every action -- closing a socket, calling
the factory or the user -- happens after releasing it), or *loop* (only the
loop context reads or writes it). Waiting is on events replaced at each
change, against one monotonic deadline per call; nothing polls.
"""

from __future__ import annotations

import functools
import logging
import numbers
import socket
import time
import weakref
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._backends import get_backend
from ._callbacks import UserCode
from ._connection import IDLE, LEASED, Connection, Owner, lease_check
from ._connectors import as_connector
from ._errors import ClientClosed, ConnectionLost, ConnectTimeout, GaveUp, RCFError, _timeout_compatible
from ._factory import ReconnectingClientFactory
from ._fork import ForkSafe
from ._fork import live as _live
from ._lease import LeaseQueue
from ._reasons import loss_exception
from ._state import State
from ._stats import Stats
from ._steps import Adopt, UserCall
from ._timeouts import _check_lost_on, _check_timeout, _deadline, _remaining
from ._tracking import _TrackingClock
from ._usercode import RunsUserCode

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._backends._seam import Cancellable, Event
    from ._connectors import Connector
    from ._steps import Step

R = TypeVar("R")

__all__ = ["Stats", "Handle"]

log = logging.getLogger("rcf_sync")

_DEFAULT_HOOK_TIMEOUT = 30.0

# The factory methods the client calls, each with what it calls in turn: a
# method is ours to run inline only if none of these is overridden.
_FACTORY_CALLS = {
    "clientConnectionFailed": ("clientConnectionFailed", "retry"),
    "clientConnectionLost": ("clientConnectionLost", "retry"),
    "startedConnecting": ("startedConnecting",),
    "resetDelay": ("resetDelay",),
    "stopTrying": ("stopTrying",),
    "doStart": ("doStart", "startFactory"),
    "doStop": ("doStop", "stopFactory"),
    "buildProtocol": ("buildProtocol", "protocol"),  # builds the user's protocol
}
_FACTORY_METHODS = tuple(sorted({m for ms in _FACTORY_CALLS.values() for m in ms}))


_overrides: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def _overridden_in_class(cls: type) -> frozenset[str]:
    found = _overrides.get(cls)  # once per factory class
    if found is None:
        if not issubclass(cls, ReconnectingClientFactory):
            found = frozenset(_FACTORY_METHODS)
        else:
            found = frozenset(m for m in _FACTORY_METHODS if getattr(cls, m, None)
                              is not getattr(ReconnectingClientFactory, m, None))
        _overrides[cls] = found
    return found


def _ours_to_run(factory: object) -> frozenset[str]:
    """The factory methods the client may call inline on the loop: those
    that run only our code (a method set on the instance overrides ours as a
    subclass's would). ``buildProtocol`` always builds user code."""
    cls = type(factory)
    # getattr, not factory.__dict__: reading __dict__ would make every
    # factory hold a real dictionary of its attributes.
    extra = frozenset(m for m in _FACTORY_METHODS
                      if getattr(getattr(factory, m, None), "__func__", None)
                      is not getattr(cls, m, None) and callable(getattr(cls, m, None)))
    return _ours_given(_overridden_in_class(cls) | extra)


@functools.lru_cache(maxsize=256)
def _ours_given(overridden: frozenset[str]) -> frozenset[str]:
    # Shared by every factory of a class: a client holds no set of its own.
    overridden = overridden | {"protocol"}
    return frozenset(name for name, uses in _FACTORY_CALLS.items()
                     if not overridden.intersection(uses))


class _Lease:
    """What ``connection()`` returns: a context manager lending the
    connection to one caller."""

    __slots__ = ("_handle", "_timeout", "_conn", "_raw")

    def __init__(self, handle: Handle, timeout: float | None, raw: bool = False) -> None:
        self._handle = handle
        self._timeout = None if timeout is None else _check_timeout(timeout)
        self._conn: Connection | None = None
        # The handle's own sendall()/recv(): hand out the socket even when
        # on_connect made a session, and use the connection as a stream.
        self._raw = raw

    def __enter__(self) -> Any:
        timeout = self._timeout
        self._conn = conn = self._handle._acquire(
            None if timeout is None else time.monotonic() + timeout, self._raw)
        if self._raw:
            return conn.sock
        return conn.session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None, "__exit__ without __enter__"
        self._handle._release(conn, exc)  # raises ConnectionLost, or lets exc through


class _Pending:
    """The handle's record of an attempt the backend is driving."""

    __slots__ = ("attempt", "session", "protocol", "cancelled")

    def __init__(self) -> None:
        self.attempt: Cancellable | None = None     # the backend's attempt (loop only)
        self.session = None     # what on_connect returned
        self.protocol = None    # what buildProtocol returned (protocol mode)
        self.cancelled = False  # under the handle's lock


class Handle(RunsUserCode, ForkSafe):
    """Base of :class:`~rcf_sync.ReconnectingClient` and
    :class:`~rcf_sync.ReconnectingPool` (not public)."""

    __slots__ = ()

    _proto_mode = False  # the client sets it: its factory builds protocols

    def __init__(self, connector: Any, factory: Any, backend: object, clock: Any,
                 on_connect: Callable[[Any], Any] | None,
                 on_disconnect: Callable[[Any], Any] | None, name: str | None,
                 on_connect_timeout: float | None, lost_on: object = ()) -> None:
        if factory is None:
            factory = ReconnectingClientFactory()
        for method in ("clientConnectionFailed", "clientConnectionLost", "resetDelay", "stopTrying"):
            if not callable(getattr(factory, method, None)):
                raise ValueError(f"factory must be a ReconnectingClientFactory, got {factory!r}")
        for label, fn in (("on_connect", on_connect), ("on_disconnect", on_disconnect)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{label} must be callable or None, got {fn!r}")
        for label, value in (("clock", clock), ("factory.clock", getattr(factory, "clock", None))):
            if value is not None and not (callable(getattr(value, "callLater", None))
                                          and callable(getattr(value, "seconds", None))):
                raise ValueError(f"{label} must provide seconds() and callLater(), got {value!r}")
        factory_clock = getattr(factory, "clock", None)
        if clock is not None and factory_clock is not None and factory_clock is not clock:
            raise ValueError(
                f"the factory already has a clock ({factory_clock!r}) and clock={clock!r} was "
                "given too: give one of them (a clock set on the factory is used when the "
                "client gets none)")
        # Immutable after construction:
        self._on_connect_timeout = _check_timeout(on_connect_timeout, "on_connect_timeout")
        self._lost_on = _check_lost_on(lost_on)
        self._connector = as_connector(connector)
        self._backend = get_backend(backend)
        self.factory = factory
        self.clock = clock or factory_clock or self._backend.clock
        self.name = name if name is not None else self._connector.describe()
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._caller_thread = self._backend.caller_thread  # None: any thread
        self._thread_ident = getattr(self._backend, "thread_ident", None)
        self._pauses = self._backend.name == "gevent"  # its idle watch stops during leases
        self._ours = _ours_to_run(factory)  # factory methods safe to run inline
        self._trusted = len(self._ours) == len(_FACTORY_CALLS) - 1  # all but buildProtocol
        self._user = UserCode(self._backend)
        self._factory_clock = None   # loop: the _TrackingClock while running
        self._saved_clock = factory_clock
        self._stamp_use = False      # keep conn.idle_since (for a heartbeat)
        self._keeps_idle = False     # a released connection goes to _returned_locked
        # Under the lock:
        self._lock = self._backend.lock()
        self._changed = None         # broadcast event for state waiters, made on demand
        self._waiters = 0            # callers in _wait()
        self._waiting_seen = None    # event for wait_waiting(), made on demand
        self._leases = LeaseQueue()  # callers queued for a lease
        self._state = State.IDLE
        self._closed = False
        self._serial = 0
        self._failures = 0
        self._stop_reason = None
        self._halted = None          # the user-code exception that stopped us
        self._stats = Stats()
        self._revive = False         # forked child: make a new connection on next use

    # -- public surface shared by both ----------------------------------------

    @property
    def state(self) -> State:
        """The :class:`~rcf_sync.State` now."""
        return self._state

    @property
    def stats(self) -> Stats:
        """A :class:`Stats` snapshot."""
        with self._lock:
            return self._stats._copy(self._waiters + len(self._leases))

    @property
    def destination(self) -> str:
        """The connector's description of where it connects."""
        return self._connector.describe()

    @property
    def connector(self) -> Connector:
        """The connector (Twisted's ``IConnector`` shape) this handle drives."""
        return self._connector

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connection(self, timeout: float | None = None) -> _Lease:
        """Lease the connection: ``with handle.connection() as conn: ...``.

        ``conn`` is the socket, or what ``on_connect`` returned for it. Waits
        up to ``timeout`` real seconds for a connection nobody else holds
        (:class:`~rcf_sync.ConnectTimeout`). Inside the block the connection
        is yours alone; it is checked when handed out (a connection with
        bytes nobody asked for, or closed by the peer, is discarded and the
        next one awaited). An ``OSError`` escaping the block (timeouts
        included), or an exception of ``lost_on``, closes that connection,
        starts reconnecting and surfaces as :class:`~rcf_sync.ConnectionLost`
        chained to it; any other exception also discards the connection (its
        stream state is unknown) and propagates unchanged. Also raises
        ``GaveUp`` and ``ClientClosed``. Thread-safe."""
        if self._proto_mode:
            self._refuse_socket("connection()")
        return _Lease(self, timeout)

    def call(self, fn: Callable[..., R], *args: Any, attempts: int | None = None,
             timeout: float | None = None, lost_on: object = (), **kwargs: Any) -> R:
        """Run ``fn(conn, *args, **kwargs)`` under a lease and return its
        result (``conn``: what :meth:`connection` hands out); when the
        connection dies under it (``ConnectionLost``: an ``OSError``, or an
        exception of ``lost_on`` here or on the handle), wait for the next
        connection and run ``fn`` again, up to ``attempts`` runs in all
        (``None``: as often as ``timeout`` allows). Only for idempotent work.
        ``timeout`` bounds the whole call, waits included."""
        if self._proto_mode:
            self._refuse_socket("call()")
        if attempts is not None and (not isinstance(attempts, numbers.Integral) or attempts < 1):
            raise ValueError(f"attempts must be an integer >= 1 or None, got {attempts!r}")
        deadline = None if timeout is None else _deadline(timeout)
        extra = _check_lost_on(lost_on) if lost_on else ()
        runs = 0
        while True:
            runs += 1
            conn = self._acquire(deadline)
            try:
                result = fn(conn.session, *args, **kwargs)
            except BaseException as exc:
                try:
                    self._release(conn, exc, extra)
                except ConnectionLost:
                    if attempts is not None and runs >= attempts:
                        raise
                    continue
                raise
            self._release(conn, None)
            return result

    def wait_state(self, *states: State, timeout: float | None = None) -> State:
        """Block until the handle is in one of ``states``; return the state.

        :class:`~rcf_sync.ConnectTimeout` after ``timeout`` real seconds. For
        tests that drive the back-off with a fake clock and need to know when
        the background has caught up."""
        if not states or not all(isinstance(s, State) for s in states):
            raise ValueError(f"wait_state needs State values, got {states!r}")
        self._enter()
        deadline = _deadline(timeout)
        while True:
            with self._lock:
                if self._state in states:
                    return self._state
                if self._closed:
                    raise ClientClosed(f"{self.name} is closed", self.destination)
                event = self._wait_event_locked()
            try:
                self._wait(event, deadline)
            except ConnectTimeout:
                raise ConnectTimeout(
                    f"{self.name} did not reach {'/'.join(s.name for s in states)} in time "
                    f"(state {self._state.name})", self.destination) from None

    def wait_waiting(self, count: int = 1, timeout: float | None = None) -> int:
        """Block until at least ``count`` callers are blocked waiting on this
        handle (``stats.waiting``); return that number. For tests and
        programs that must know a caller is really waiting before they act.
        :class:`~rcf_sync.ConnectTimeout` after ``timeout`` real seconds."""
        if not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        deadline = _deadline(timeout)
        while True:
            with self._lock:
                waiting = self._waiters + len(self._leases)
                if waiting >= count:
                    return waiting
                if self._closed:
                    raise ClientClosed(f"{self.name} is closed", self.destination)
                if self._waiting_seen is None:
                    self._waiting_seen = self._backend.event()
                event = self._waiting_seen
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise ConnectTimeout(f"fewer than {count} callers waited on {self.name} in time "
                                     f"({waiting})", self.destination)
            event.wait(remaining)

    def close(self, timeout: float | None = None) -> None:
        """Close for good: stop trying, drop every connection, wake every
        waiter with :class:`~rcf_sync.ClientClosed`, and release the
        background (its threads are joined after the last user closes;
        ``timeout`` bounds that join, default 5 s). Idempotent; prompt in
        every state, even while this handle's user code blocks (what the
        factory is told then runs after it)."""
        timeout = _check_timeout(timeout)
        self._enter()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._state is not State.IDLE
            self._closing_locked()
            events = self._wake_all_locked()
        for event in events:
            event.set()
        _live.discard(self)
        if started:
            wait = 5.0 if timeout is None else timeout
            deadline = time.monotonic() + wait
            finished = self._on_loop(self._shutdown, timeout=wait, urgent=True)
            # User code still running for this handle (and what the factory
            # is told at close, queued after it) would outlive close() in a
            # greenlet; a worker thread is the backend's, and the last
            # release lets it finish first.
            if finished and self._backend.name == "gevent":
                finished = self._user.wait_drained(max(0.0, deadline - time.monotonic()))
            if not finished:
                log.warning("%s: close() did not see the background finish within %.1fs",
                            self.name, wait)
            self._backend.settle(max(0.0, deadline - time.monotonic()))
            self._backend.release(max(0.0, deadline - time.monotonic()))

    # -- what subclasses provide ------------------------------------------------

    def start(self) -> Self:
        """Start connecting (the client's and the pool's own)."""
        raise NotImplementedError

    def _take_locked(self) -> Connection | None:
        """Lock held: lease and return an available connection, or None."""
        raise NotImplementedError

    def _fill(self, minimum: int = 0) -> None:
        """Loop: open the connections queued callers need (the pool's)."""

    def _wants_more_locked(self) -> bool:
        """Lock held, a caller is about to wait: should the loop open more
        connections (``_fill``)?"""
        return False

    def _returned_locked(self, conn: Connection) -> None:
        """Lock held: a healthy connection came back from a lease."""

    def _forget_locked(self, conn: Connection, exc: BaseException) -> None:
        """Lock held: ``conn`` is out of service (already DEAD)."""
        raise NotImplementedError

    def _lost(self, conn: Connection, exc: BaseException) -> None:
        """Loop: handle the loss of ``conn`` (socket close, factory, hooks)."""
        raise NotImplementedError

    def _closing_locked(self) -> None:
        """Lock held: enter the CLOSED state."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Loop: stop the factory, cancel attempts, close connections."""
        raise NotImplementedError

    def _gave_up_locked(self) -> bool:
        """Lock held: True when no connection will come any more."""
        raise NotImplementedError

    def _halt_locked(self) -> list[Connection | _Pending]:
        """Lock held, user code raised: enter STOPPED; return what to close."""
        raise NotImplementedError

    def _forked(self) -> None:
        """In a forked child (at-fork hook): drop what belongs to the parent."""
        raise NotImplementedError

    def _revived(self) -> None:
        """Forked child, first use: start connecting again (loop)."""
        raise NotImplementedError

    # -- entry checks -------------------------------------------------------------

    def _enter(self) -> None:
        """Every public entry: the calling thread is allowed, and a forked
        child makes its own connection."""
        t, ident = self._caller_thread, self._thread_ident
        if t is not None and ident is not None and ident() != t:
            raise RuntimeError(self._backend.describe_caller_error())
        if self._revive:
            with self._lock:
                revive, self._revive = self._revive, False
            if revive:
                self._backend.call_soon(self._revived)

    def _raise_if_hopeless_locked(self) -> None:
        """Lock held: raise what a caller waiting for a connection should
        get now (closed, not started, gave up), if anything."""
        if self._closed:
            raise ClientClosed(f"{self.name} is closed", self.destination)
        if self._state is State.IDLE:
            raise RuntimeError(f"{self!r} is not started: call start() or use it in a with block")
        if self._gave_up_locked():
            last = self._stats.last_error
            raise GaveUp(
                f"no connection to {self.destination}: {self._stop_reason or 'stopped trying'}"
                f" (last error: {last})", self.destination, last,
            ) from self._halted

    # -- attempts -------------------------------------------------------------

    def _attempt_timeout(self) -> float | None:
        timeout = self._connector.timeout
        if timeout is not None and self._on_connect is not None and self._on_connect_timeout:
            timeout += self._on_connect_timeout
        return timeout

    def _launch(self, pending: _Pending,
                deliver: Callable[[_Pending, Any, BaseException | None], None]) -> None:
        """Loop: start an attempt; ``deliver(pending, sock, exc)`` on the loop."""
        pending.attempt = self._backend.start_attempt(
            self._steps(pending), self._attempt_timeout(),
            lambda sock, exc: deliver(pending, sock, exc), self._user)

    def _steps(self, pending: _Pending) -> Generator[Step, Any, Any]:
        sock = yield from self._connector._attempt()
        sock = yield Adopt(sock)
        if self._on_connect is not None:
            try:
                sock.settimeout(self._on_connect_timeout)
                pending.session = yield UserCall(self._on_connect, sock)
                sock.settimeout(None)
            except BaseException:
                _abort_socket(sock)  # also wakes a hook still blocked on it
                raise
        return sock

    def _cancel_attempt(self, pending: _Pending) -> None:
        """Loop: abandon an attempt (its sockets are closed)."""
        pending.cancelled = True
        if pending.attempt is not None:
            pending.attempt.cancel()

    def _describe_error(self, exc: BaseException) -> BaseException:
        exc = _timeout_compatible(exc)
        if isinstance(exc, TimeoutError) and not isinstance(exc, RCFError):
            return ConnectTimeout(f"connecting to {self.destination} timed out: {exc}",
                                  self.destination, exc)
        return exc

    def _new_connection_locked(self, sock: socket.socket, session: object = None) -> Connection:
        self._serial += 1
        self._stats.connects += 1
        return Connection(sock, self._serial, session)

    def _track_factory_clock(self) -> None:
        self._factory_clock = _TrackingClock(self.clock)
        self.factory.clock = self._factory_clock

    def _shutdown_done(self, _: object = None) -> None:
        """Loop, after the factory calls queued at close (and any queued
        before them, which may have scheduled a retry) have run: cancel what
        the factory still has scheduled, give it its clock back, free the
        connector."""
        self._untrack_factory_clock()
        self._connector._release(self)

    def _untrack_factory_clock(self) -> None:
        # The factory gets back the clock it had (None: it had none).
        tracking = self._factory_clock
        if tracking is not None:
            tracking.cancel_all()
            if self.factory.clock is tracking:
                self.factory.clock = self._saved_clock

    # -- losses ---------------------------------------------------------------

    def _mark_lost(self, conn: Connection, exc: BaseException, wait: bool = False) -> bool:
        """Any context: take ``conn`` out of service and start the loss
        handling on the loop (with ``wait``, wait until the loop has closed
        the socket). Returns True the first time."""
        with self._lock:
            if conn.owner is Owner.DEAD:
                return False
            conn.owner = Owner.DEAD
            self._stats.losses += 1
            self._stats.last_error = exc
            self._forget_locked(conn, exc)
        if wait:
            self._on_loop(lambda: self._lost(conn, exc))
        elif self._backend.in_loop():
            self._lost(conn, exc)
        else:
            self._backend.call_soon(self._lost, conn, exc)
        return True

    def _loss_reason(self, exc: BaseException) -> BaseException:
        # The exception on_disconnect gets; the factory gets it as a Failure.
        return loss_exception(exc, self.destination)

    def _close_conn(self, conn: Connection) -> None:
        """Loop: stop watching ``conn`` and close its socket."""
        watch, conn.watch = conn.watch, None
        if watch is not None:
            watch.close()
        hb, conn.heartbeat = conn.heartbeat, None
        if hb is not None:  # the next heartbeat's timer, or one beating now
            active = getattr(hb, "active", None)
            if active is None or active():
                hb.cancel()
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- leases ---------------------------------------------------------------

    def _acquire(self, deadline: float | None, stream: bool = False) -> Connection:
        if self._caller_thread is not None or self._revive:
            self._enter()
        while True:
            with self._lock:  # the usual case: a free connection, one lock block
                conn = None if self._leases.tickets else self._take_locked()
            if conn is None:
                conn = self._lease_one(deadline)
            if stream:
                conn.stream = True
            problem = lease_check(conn)
            if problem is None:
                watch = conn.watch
                if self._pauses and watch is not None:
                    watch.leased()
                return conn
            # Never hand out a stream with bytes nobody asked for, or a
            # closed one: discard it (no request was sent) and wait again.
            self._mark_lost(conn, problem, wait=True)

    def _lease_one(self, deadline: float | None) -> Connection:
        # Fair: a newcomer takes a free connection only when nobody is queued;
        # queued callers are handed connections in order (_release).
        ticket = None
        try:
            while True:
                with self._lock:
                    if ticket is not None and ticket.conn is not None:
                        return ticket.conn
                    if ticket is None and not self._leases:
                        conn = self._take_locked()
                        if conn is not None:
                            return conn
                    self._raise_if_hopeless_locked()
                    event = self._backend.event()
                    if ticket is None:
                        ticket = self._leases.join(event)
                        seen = self._waiting_seen
                    else:
                        ticket.event = event
                        seen = None
                    more = self._wants_more_locked()
                if seen is not None:
                    seen.set()
                if more:
                    self._backend.call_soon(self._fill)
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                event.wait(remaining)
        except BaseException:
            if ticket is not None:
                with self._lock:
                    handed = self._leases.leave(ticket)
                if handed is not None:  # given to us just as we gave up: pass it on
                    self._release(handed, None)
            raise

    def _timed_out(self) -> ConnectTimeout:
        return ConnectTimeout(
            f"no connection to {self.destination} in time"
            f" (state {self._state.name}, last error: {self._stats.last_error})",
            self.destination, self._stats.last_error,
        )

    def _release(self, conn: Connection, exc: BaseException | None,
                 lost_on: tuple[type[BaseException], ...] = ()) -> bool:
        """End a lease. Returns False (do not swallow); raises
        ``ConnectionLost`` (chained) for an ``OSError`` that is not ours, or
        an exception of ``lost_on`` (the handle's or the call's)."""
        sock = conn.sock
        if exc is None:
            try:
                if sock.gettimeout() is not None:
                    sock.settimeout(None)
            except OSError as error:
                exc = error
        if exc is None:
            if self._stamp_use:
                conn.idle_since = time.monotonic()
            ticket = None
            with self._lock:
                doomed = conn.doomed
                if doomed is None and conn.owner is LEASED:
                    if self._leases.tickets:
                        ticket = self._leases.hand(conn)  # stays LEASED, for its new holder
                    if ticket is None:
                        conn.owner = IDLE
                        if self._keeps_idle:
                            self._returned_locked(conn)
            if doomed is not None:
                self._mark_lost(conn, doomed, wait=True)
            elif ticket is not None:
                ticket.event.set()
            elif conn.owner is IDLE and conn.watch is not None:
                conn.watch.released()
            return False
        exc = _timeout_compatible(exc)
        self._mark_lost(conn, exc, wait=True)
        if isinstance(exc, RCFError):
            return False
        if self._closed:
            raise ClientClosed(f"{self.name} was closed during the request", self.destination,
                               exc) from exc
        if isinstance(exc, (OSError,) + self._lost_on + lost_on):
            raise ConnectionLost(
                f"connection to {self.destination} lost: {type(exc).__name__}: {exc}",
                self.destination, exc,
            ) from exc
        return False

    # -- waiting --------------------------------------------------------------

    def _wait_event_locked(self) -> Event:
        self._waiters += 1
        if self._waiting_seen is not None:
            self._waiting_seen.set()
            self._waiting_seen = None
        if self._changed is None:
            self._changed = self._backend.event()
        return self._changed

    def _wait(self, event: Event, deadline: float | None) -> None:
        try:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise self._timed_out()
            event.wait(remaining)
        finally:
            with self._lock:
                self._waiters -= 1

    def _wake_all_locked(self) -> list[Event]:
        """Lock held: the events of everyone waiting (set them after)."""
        events = self._leases.events()
        event, self._changed = self._changed, None
        if event is not None:
            events.append(event)
        return events

    def _changed_locked(self) -> None:
        """Lock held: something waiters care about changed."""
        self._stats.last_change = self.clock.seconds()
        if self._waiters or self._leases:
            for event in self._wake_all_locked():
                event.set()

    def _soon_on_loop(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` now if this is the loop, else post it there."""
        if self._backend.in_loop():
            fn()
        else:
            self._backend.call_soon(fn)

    def _on_loop(self, fn: Callable[[], object], timeout: float = 5.0,
                 urgent: bool = False) -> bool:
        """Run ``fn`` on the loop and wait (up to ``timeout``) until it ran.
        Returns False if it had not run by then. ``urgent``: ahead of the
        work already queued there (``close()`` must not wait behind a
        thousand other clients' attempts)."""
        backend = self._backend
        if backend.in_loop() or self._caller_thread is not None:
            # On the gevent backend callers are greenlets of the hub's own
            # thread (``_enter`` checked), and loop work never blocks: run
            # between two switches, it cannot interleave with the hub's.
            fn()
            return True
        done = backend.event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        if urgent:
            backend.call_first(run)
        else:
            backend.call_soon(run)
        finished = done.wait(timeout)
        if failure:
            raise failure[0]
        return bool(finished)


def _abort_socket(sock: socket.socket) -> None:
    """Close ``sock`` so that a thread blocked on it wakes up (on Linux a
    plain close() does not interrupt a blocked recv)."""
    try:
        sock.shutdown(2)  # SHUT_RDWR
    except OSError:
        pass
    sock.close()
