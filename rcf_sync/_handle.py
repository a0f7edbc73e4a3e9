"""What a client and a pool share: configuration, attempts, losses and
closing; its parts add leases and waits (``_leasing``), the factory's and
the user's code (``_usercode``) and fork (``_fork``).

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

import logging
import socket
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._backends import get_backend
from ._connection import Connection, Owner
from ._connectors import as_connector
from ._errors import ClientClosed, ConnectTimeout, GaveUp, RCFError, _timeout_compatible
from ._factory import ReconnectingClientFactory
from ._fork import ForkSafe
from ._fork import live as _live
from ._lease import NOBODY_QUEUED, Ticket
from ._leasing import Leasing
from ._reasons import loss_exception
from ._state import State
from ._stats import Stats
from ._steps import Adopt, UserCall
from ._timeouts import _check_lost_on, _check_timeout
from ._tracking import _TrackingClock
from ._usercode import _FACTORY_CALLS, RunsUserCode, _ours_to_run

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._backends._seam import Cancellable
    from ._connectors import Connector
    from ._steps import Step

R = TypeVar("R")

__all__ = ["Stats", "Handle"]

log = logging.getLogger("rcf_sync")

_DEFAULT_HOOK_TIMEOUT = 30.0


def _idle_list() -> list[Connection]:
    """An empty list with room for one connection. A list grown by an
    append has room for four, and a pop that empties it frees that room,
    which the next append allocates again: a client, whose one connection
    every lease takes out and puts back, would pay a free and a malloc per
    lease (0.1x the floor of a lease). Room for one, made by a literal, is
    kept by a pop; a deque would keep its room too, but costs 700 bytes."""
    idle: list[Connection] = [None]  # type: ignore[list-item]
    idle.pop()
    return idle


class _Pending:
    """The handle's record of an attempt the backend is driving."""

    __slots__ = ("attempt", "session", "protocol")

    def __init__(self) -> None:
        self.attempt: Cancellable | None = None     # the backend's attempt (loop only)
        self.session = None     # what on_connect returned
        self.protocol = None    # what buildProtocol returned (protocol mode)


class Handle(Leasing, RunsUserCode, ForkSafe):
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
        factory_clock = getattr(factory, "clock", None)
        if on_connect is not None or on_disconnect is not None:
            for label, fn in (("on_connect", on_connect), ("on_disconnect", on_disconnect)):
                if fn is not None and not callable(fn):
                    raise ValueError(f"{label} must be callable or None, got {fn!r}")
        if clock is not None or factory_clock is not None:
            for label, value in (("clock", clock), ("factory.clock", factory_clock)):
                if value is not None and not (callable(getattr(value, "callLater", None))
                                              and callable(getattr(value, "seconds", None))):
                    raise ValueError(f"{label} must provide seconds() and callLater(), got {value!r}")
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
        self._name = name
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._caller_thread = self._backend.caller_thread  # None: any thread
        self._thread_ident = getattr(self._backend, "thread_ident", None)
        self._caller_id = self._backend.caller_id  # who gives a connection back
        # Tell idle watches of each lease (gevent's stop during one):
        self._tell_watch = getattr(self._backend, "watch_follows_leases", True)
        self._ours = _ours_to_run(factory)  # factory methods safe to run inline
        self._trusted = len(self._ours) == len(_FACTORY_CALLS) - 1  # all but buildProtocol
        self._factory_clock = None   # loop: the _TrackingClock while running
        self._saved_clock = factory_clock
        # Under the lock:
        self._lock = self._backend.lock()
        self._idle = _idle_list()     # IDLE connections, most recently used last;
                                      # a lease pops one without the lock
        self._user_code = None       # made on first use (_user); its fields under this lock too
        self._changed = None         # broadcast event for state waiters, made on demand
        self._waiters = 0            # callers in _wait()
        self._waiting_seen = None    # event for wait_waiting(), made on demand
        self._leases = NOBODY_QUEUED  # callers queued for a lease (its own once one queues)
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
        _live.pop(self, None)
        if started:
            wait = 5.0 if timeout is None else timeout
            deadline = time.monotonic() + wait
            finished = self._on_loop(self._shutdown, timeout=wait, urgent=True)
            # User code still running for this handle (and what the factory
            # is told at close, queued after it) would outlive close() in a
            # greenlet; a protocol must have heard connectionLost by the time
            # close() returns. (Otherwise a worker thread is the backend's,
            # and the last release lets it finish first.) The backend is
            # released only after this wait, so its workers are there for it.
            if finished and (self._backend.name == "gevent" or self._proto_mode):
                user = self._user_code
                if user is not None:
                    finished = user.wait_drained(max(0.0, deadline - time.monotonic()))
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
        """Lock held: lease and return an idle connection (the most recently
        used: the least likely to be stale), or None (also once closed: the
        loop may not have dropped the idle ones yet)."""
        idle = self._idle
        if idle and not self._closed:
            conn = idle.pop()
            conn.owner = Owner.LEASED
            return conn
        return None

    def _claim_locked(self, conn: Connection) -> bool:
        """Lock held: take ``conn`` out of the idle list to change its owner.
        False when it was not there: it is leased, being leased (a caller
        popped it and has not written ``owner`` yet), the loop's or dead."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return False
        return True

    def _held_locked(self, conn: Connection) -> bool:
        """Lock held: True when a caller holds ``conn`` or is taking it
        (doom it; never close it under them). Otherwise it is no caller's:
        an idle one is claimed for the loop (``LOOP``, out of the idle list),
        so no caller can take it any more."""
        owner = conn.owner
        if owner is Owner.LEASED:
            return True
        if owner is Owner.IDLE:
            if not self._claim_locked(conn):
                return True
            conn.owner = Owner.LOOP
        return False

    def _hand_on_locked(self, conn: Connection) -> Ticket | None:
        """Lock held: give ``conn``, healthy and no longer anyone's, to the
        oldest queued caller (``LEASED``, theirs: set the returned ticket's
        event once the lock is released), or put it back idle (None)."""
        ticket = self._leases.hand(conn)
        if ticket is not None:
            conn.owner = Owner.LEASED
        else:
            conn.owner = Owner.IDLE
            self._idle.append(conn)
        return ticket

    def _still_ours_locked(self, conn: Connection) -> bool:
        """Lock held: ``conn`` is still one of this handle's connections."""
        raise NotImplementedError

    def _fill(self, minimum: int = 0) -> None:
        """Loop: open the connections queued callers need (the pool's)."""

    def _wants_more_locked(self) -> bool:
        """Lock held, a caller is about to wait: should the loop open more
        connections (``_fill``)?"""
        return False

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
        def done(sock: Any, exc: BaseException | None) -> None:
            deliver(pending, sock, exc)

        backend, connector = self._backend, self._connector
        if self._plain_steps():
            # The common case (an IP address or a Unix path, no TLS, no
            # hook) on a backend that can connect without the interpreter.
            connect = getattr(backend, "connect_direct", None)
            address = connector._direct_address() if connect is not None else None
            if address is not None:
                assert connect is not None
                pending.attempt = connect(connector, address, self._attempt_timeout(), done)
                return
        pending.attempt = backend.start_attempt(
            self._steps(pending), self._attempt_timeout(), done, self._user_queue)

    def _plain_steps(self) -> bool:
        """Whether :meth:`_steps` is the connector's attempt and Adopt alone."""
        return self._on_connect is None

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
        return Connection(sock, self._serial, session, self)

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
            owner = conn.owner
            if owner is Owner.DEAD:
                return False
            if owner is Owner.IDLE and not self._claim_locked(conn):
                # A caller is taking it this instant: it is theirs to discard.
                if conn.doomed is None:
                    conn.doomed = exc
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
