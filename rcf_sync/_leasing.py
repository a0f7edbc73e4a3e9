"""Leases and waits: how callers get a connection and give it back.

A caller takes a free connection when nobody is queued, or joins the lease
queue (``_lease``) and is handed one in order. The connection it gets is
checked first (``_connection.lease_check``): one with bytes nobody asked
for, or closed by the peer, is discarded and the next awaited. Ending the
lease hands the connection to the oldest queued caller, or back to idle; an
error discards it. Every wait is on an event replaced at each change,
against one monotonic deadline; nothing polls.

The hot path (``_take_now``, ``_give_now``) takes no lock: taking pops the
idle list, giving back appends to it (each one atomic step; see
``_connection``), and each then reads what the other side writes under the
lock (doomed, closed, a queued caller). The kernel check is
skipped for a connection the same caller held last and gave back less than
``RECHECK_AFTER`` ago: a caller in a tight loop pays no system call per
lease, while any connection that changed hands, sat idle, or came back
through the loop is checked. (In such a loop, bytes a server pushes arrive
during a lease far more often than in the microseconds between two; only a
protocol that expects pushes can tell them from a reply, and it belongs in
protocol mode.)
"""

from __future__ import annotations

import numbers
import time
from types import TracebackType
from typing import Any, Callable, TypeVar

from ._backends._seam import Event
from ._connection import DEAD, IDLE, LEASED, Connection, lease_check
from ._errors import ClientClosed, ConnectionLost, ConnectTimeout, RCFError, _timeout_compatible
from ._lease import NOBODY_QUEUED, LeaseQueue
from ._parts import HandleParts
from ._state import State
from ._timeouts import _check_lost_on, _check_timeout, _deadline, _remaining

__all__ = ["Leasing", "RECHECK_AFTER"]

R = TypeVar("R")
L = TypeVar("L", bound="_Lease")

# A connection given back by the same caller less than this many seconds ago
# is leased to it again without the kernel check. Wide enough for the gap of
# a tight loop on a slow machine (after a round trip, a few microseconds),
# narrower than any lease that waits for a reply.
RECHECK_AFTER = 20e-6
_now = time.monotonic
_new_lease = object.__new__


class _Lease:
    """What ``connection()`` returns: a context manager lending the
    connection to one caller."""

    # Made by _new_lease() and given _handle, and _timeout when there is
    # one (checked by the caller): no __init__ to run on the hot path.
    __slots__ = ("_handle", "_timeout", "_conn")
    _handle: Leasing
    _timeout: float | None  # unset when there is none
    _conn: Connection  # set by __enter__ (what __exit__ gives back)

    @classmethod
    def _make(cls: type[L], handle: Leasing, timeout: float | None) -> L:
        lease = _new_lease(cls)
        lease._handle = handle
        if timeout is not None:
            lease._timeout = timeout
        return lease

    def __enter__(self) -> Any:
        handle = self._handle
        self._conn = conn = handle._take_now() or handle._acquire(self._deadline())
        return conn.session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn = self._conn
        del self._conn  # AttributeError for an __exit__ without __enter__
        if exc is None and self._handle._give_now(conn):
            return
        self._handle._release(conn, exc)  # raises ConnectionLost, or lets exc through

    def _deadline(self) -> float | None:
        timeout = getattr(self, "_timeout", None)  # unset: none given
        return None if timeout is None else time.monotonic() + timeout


class _StreamLease(_Lease):
    """The handle's own ``sendall()``/``recv()``: the socket even when
    ``on_connect`` made a session, and the connection used as a stream
    (never through the hot path, which would not mark it)."""

    __slots__ = ()

    def __enter__(self) -> Any:
        self._conn = conn = self._handle._acquire(self._deadline(), True)
        return conn.sock


class Leasing(HandleParts):
    """Mixin for handles: the caller side (leases and waits)."""

    __slots__ = ()

    def connection(self, timeout: float | None = None) -> _Lease:
        """Lease the connection: ``with handle.connection() as conn: ...``.

        ``conn`` is the socket, or what ``on_connect`` returned for it. Waits
        up to ``timeout`` real seconds for a connection nobody else holds
        (:class:`~rcf_sync.ConnectTimeout`). Inside the block the connection
        is yours alone; it is checked when handed out (a connection with
        bytes nobody asked for, or closed by the peer, is discarded and the
        next one awaited), unless this same thread or greenlet gave it back
        less than ``RECHECK_AFTER`` (20 µs) ago: a tight loop makes no
        system call per lease. An ``OSError`` escaping the block (timeouts
        included), or an exception of ``lost_on``, closes that connection,
        starts reconnecting and surfaces as :class:`~rcf_sync.ConnectionLost`
        chained to it; any other exception also discards the connection (its
        stream state is unknown) and propagates unchanged. Also raises
        ``GaveUp`` and ``ClientClosed``. Thread-safe."""
        if self._proto_mode:
            self._refuse_socket("connection()")
        # _Lease._make(), written out: a call of its own costs the hot path.
        lease = _new_lease(_Lease)
        lease._handle = self
        if timeout is not None:
            lease._timeout = _check_timeout(timeout)
        return lease

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
            conn = self._take_now() or self._acquire(deadline)
            try:
                # Unpacking nothing still builds a call of its own: call directly.
                result = fn(conn.session, *args, **kwargs) if args or kwargs else fn(conn.session)
            except BaseException as exc:
                try:
                    self._release(conn, exc, extra)
                except ConnectionLost:
                    if attempts is not None and runs >= attempts:
                        raise
                    continue
                raise
            if not self._give_now(conn):
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

    # -- leases ---------------------------------------------------------------

    def _take_now(self) -> Connection | None:
        """The hot path of a lease: an idle connection, taken without the
        lock, that this caller gave back an instant ago (else checked), or
        None: take the usual path (``_acquire``)."""
        idle = self._idle
        if not idle:
            return None
        if self._caller_thread is not None:
            self._enter()  # (a forked child has no idle connection to take)
        try:
            conn = idle.pop()
        except IndexError:  # another caller took it first
            return None
        conn.owner = LEASED
        # Read after the write above: whoever dooms a connection, or closes
        # the handle, does so after finding it no longer in the idle list.
        me = self._caller_id()
        if (conn.doomed is None and not self._closed and conn.holder == me
                and _now() - conn.released_at < RECHECK_AFTER and not self._tell_watch):
            return conn
        return self._vet(conn, me)

    def _vet(self, conn: Connection, me: object) -> Connection | None:
        """``_take_now`` for a connection it could not hand out at once to
        caller ``me``: doomed, closed, checked by the kernel, or its watch
        told."""
        if conn.doomed is not None or self._closed:
            self._release(conn, None)
            return None
        if _now() - conn.released_at >= RECHECK_AFTER or conn.holder != me:
            problem = lease_check(conn)
            if problem is not None:
                self._mark_lost(conn, problem, wait=True)
                return None
            conn.holder = me
        if self._tell_watch:
            watch = conn.watch
            if watch is not None:
                watch.leased()
        return conn

    def _give_now(self, conn: Connection) -> bool:
        """The hot path of ending a lease that raised nothing: back to idle
        without the lock. False: take the usual path (``_release``)."""
        sock = conn.sock
        if sock.gettimeout() is not None:  # the caller set one: back to blocking
            try:
                sock.settimeout(None)
            except OSError:
                return False
        if conn.owner is not LEASED:  # dropped in a forked child
            return False
        conn.released_at = now = _now()
        conn.owner = IDLE
        self._idle.append(conn)
        # Read after the append: whoever dooms a connection, closes the
        # handle or queues for a lease does so under the lock, then looks
        # for it in the idle list.
        if conn.doomed is not None or self._closed or self._leases.tickets:
            self._recall(conn)
        elif self._tell_watch:
            watch = conn.watch
            if watch is not None:
                watch.released(now)
        return True

    def _recall(self, conn: Connection) -> None:
        """``_give_now`` found a reason not to leave ``conn`` idle: take it
        back, if nobody took it first, and end the lease the usual way
        (discard it, or hand it to the oldest queued caller)."""
        with self._lock:
            if not self._claim_locked(conn):
                return  # a caller took it (and sees what we saw) or the loop did
            conn.owner = LEASED
        self._release(conn, None)

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
                conn.holder = self._caller_id()
                watch = conn.watch
                if self._tell_watch and watch is not None:
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
                        if self._leases is NOBODY_QUEUED:
                            self._leases = LeaseQueue()
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
            now = _now()
            conn.released_at, conn.holder = now, None
            ticket = None
            idle = False
            with self._lock:
                doomed = conn.doomed
                if doomed is None and conn.owner is LEASED:
                    if self._still_ours_locked(conn):
                        ticket = self._hand_on_locked(conn)
                        idle = ticket is None
                    else:  # closed meanwhile
                        conn.owner = DEAD
            if doomed is not None:
                self._mark_lost(conn, doomed, wait=True)
            elif ticket is not None:
                ticket.event.set()
            elif idle and self._tell_watch and conn.watch is not None:
                conn.watch.released(now)
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
            wake = self._backend.wake
            for event in self._wake_all_locked():
                wake(event)
