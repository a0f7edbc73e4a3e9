"""What a client and a pool share: configuration, leases, waiting, the
attempt steps and the conversion of errors raised inside a lease.

Theory of operation. Two kinds of context touch a handle:

* the backend's *loop* (the shared loop thread, or the gevent hub) runs every
  connection attempt and every conversation with the factory, one at a time,
  as Twisted's reactor would;
* *callers* (any thread or greenlet) wait for a connection, lease it, and on
  an error mark it dead.

Shared fields live under one short lock; every decision is taken under it and
every action (socket close, factory call, user callback) happens after
releasing it. Waiting is on a broadcast event that is replaced at each
change, against one monotonic deadline per call; nothing polls.
"""

import collections
import math
import numbers
import time

from ._backends import get_backend
from ._backends._base import idle_status, peer_gone
from ._connectors import as_connector
from ._errors import ClientClosed, ConnectionLost, ConnectTimeout, GaveUp, RCFError, _timeout_compatible
from ._factory import ReconnectingClientFactory
from ._state import State

__all__ = ["Stats"]

_DEFAULT_HOOK_TIMEOUT = 30.0


class Stats:
    """A snapshot of a client's counters (read-only).

    ``connects``: connections made; ``connect_failures``: attempts that
    failed; ``losses``: established connections lost; ``retries``: attempts
    started after the first; ``last_error``: the latest failure or loss
    reason, or ``None``; ``last_change``: clock time of the latest state
    change."""

    __slots__ = ("connects", "connect_failures", "losses", "retries", "last_error", "last_change")

    def __init__(self, connects=0, connect_failures=0, losses=0, retries=0,
                 last_error=None, last_change=None):
        self.connects = connects
        self.connect_failures = connect_failures
        self.losses = losses
        self.retries = retries
        self.last_error = last_error
        self.last_change = last_change

    def _copy(self):
        return Stats(*(getattr(self, k) for k in self.__slots__))

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Stats({fields})"


class _Connection:
    __slots__ = ("sock", "session", "watch", "leased", "dead", "peer_closed", "serial",
                 "heartbeat", "last_used")

    def __init__(self, sock, serial, session=None):
        self.sock = sock
        # What a lease hands out: on_connect's return value, or the socket.
        self.session = sock if session is None else session
        self.serial = serial
        self.watch = None
        self.leased = False
        self.dead = False
        self.peer_closed = False
        self.heartbeat = None
        self.last_used = time.monotonic()


def _check_timeout(timeout, what="timeout"):
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or math.isnan(timeout):
        raise ValueError(f"{what} must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"{what} must be >= 0 or None, got {timeout!r}")
    if math.isinf(timeout):
        return None  # waiting forever is what None says
    return float(timeout)


def _check_lost_on(lost_on):
    """``lost_on`` as a tuple of exception classes (``ValueError`` otherwise)."""
    if isinstance(lost_on, type):
        lost_on = (lost_on,)
    try:
        classes = tuple(lost_on)
    except TypeError:
        raise ValueError(f"lost_on must be an exception class or a tuple of them, got {lost_on!r}") from None
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"lost_on must hold exception classes, got {cls!r}")
    return classes


def _deadline(timeout):
    timeout = _check_timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline):
    return None if deadline is None else deadline - time.monotonic()


class _Lease:
    """What ``client.connection()`` returns: a context manager lending the
    socket to one caller."""

    __slots__ = ("_client", "_timeout", "_conn", "_raw")

    def __init__(self, client, timeout, raw=False):
        self._client = client
        self._timeout = None if timeout is None else _check_timeout(timeout)
        self._conn = None
        self._raw = raw  # hand out the socket even when on_connect made a session

    def __enter__(self):
        timeout = self._timeout
        self._conn = conn = self._client._acquire(
            None if timeout is None else time.monotonic() + timeout)
        return conn.sock if self._raw else conn.session

    def __exit__(self, exc_type, exc, tb):
        conn, self._conn = self._conn, None
        return self._client._release(conn, exc)


class _Handle:
    """Base of :class:`~rcf_sync.ReconnectingClient` and
    :class:`~rcf_sync.ReconnectingPool` (not public)."""

    def __init__(self, connector, factory, backend, clock, on_connect, on_disconnect, name,
                 on_connect_timeout, lost_on=()):
        if factory is None:
            factory = ReconnectingClientFactory()
        for method in ("clientConnectionFailed", "clientConnectionLost", "resetDelay", "stopTrying"):
            if not callable(getattr(factory, method, None)):
                raise ValueError(f"factory must be a ReconnectingClientFactory, got {factory!r}")
        for label, fn in (("on_connect", on_connect), ("on_disconnect", on_disconnect)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{label} must be callable or None, got {fn!r}")
        if clock is not None and not (callable(getattr(clock, "callLater", None))
                                      and callable(getattr(clock, "seconds", None))):
            raise ValueError(f"clock must provide seconds() and callLater(), got {clock!r}")
        self._on_connect_timeout = _check_timeout(on_connect_timeout, "on_connect_timeout")
        self._lost_on = _check_lost_on(lost_on)
        self._connector = as_connector(connector)
        self._backend = get_backend(backend)
        self.factory = factory
        self.clock = clock if clock is not None else self._backend.clock
        self.name = name if name is not None else self._connector.describe()
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._lock = self._backend.lock()
        self._changed = None  # broadcast event, made when someone waits
        self._waiters = 0
        self._queue = ()  # then a deque of _Ticket, callers waiting for a lease, oldest first
        self._pause_watch = self._backend.watch_pauses
        self._stamp_use = False  # keep conn.last_used (for a heartbeat)
        self._keeps_idle = False  # a released connection goes to _returned_locked
        self._state = State.IDLE
        self._closed = False
        self._serial = 0
        self._failures = 0
        self._stop_reason = None
        self._stats = Stats()
        self._factory_clock = None

    # -- public surface shared by both ----------------------------------------

    @property
    def state(self):
        """The :class:`~rcf_sync.State` now."""
        return self._state

    @property
    def stats(self):
        """A :class:`Stats` snapshot."""
        with self._lock:
            return self._stats._copy()

    @property
    def destination(self):
        """The connector's description of where it connects."""
        return self._connector.describe()

    @property
    def connector(self):
        """The connector (Twisted's ``IConnector`` shape) this handle drives."""
        return self._connector

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def connection(self, timeout=None):
        """Lease a live socket: ``with handle.connection() as sock: ...``.

        Waits up to ``timeout`` real seconds for a connection nobody else
        holds (:class:`~rcf_sync.ConnectTimeout`). Inside the block the
        socket is yours alone. An ``OSError`` escaping the block (timeouts
        included) closes that connection, starts reconnecting and surfaces
        as :class:`~rcf_sync.ConnectionLost` chained to it; any other
        exception also discards the connection (its stream state is
        unknown) and propagates unchanged. Also raises ``GaveUp`` and
        ``ClientClosed``."""
        return _Lease(self, timeout)

    def wait_state(self, *states, timeout=None):
        """Block until the client is in one of ``states``; return the state.

        :class:`~rcf_sync.ConnectTimeout` after ``timeout`` real seconds. Meant
        for tests that drive the back-off with a fake clock and need to know
        when the background has caught up."""
        if not states or not all(isinstance(s, State) for s in states):
            raise ValueError(f"wait_state needs State values, got {states!r}")
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

    def call(self, fn, *args, attempts=None, timeout=None, lost_on=(), **kwargs):
        """Run ``fn(conn, *args, **kwargs)`` under a lease and return its
        result (``conn``: what :meth:`connection` hands out); when the
        connection dies under it (``ConnectionLost``: an ``OSError``, or an
        exception of ``lost_on`` here or on the handle), wait for the next
        connection and run ``fn`` again, up to ``attempts`` runs in all
        (``None``: as often as ``timeout`` allows). Only for idempotent work.
        ``timeout`` bounds the whole call, waits included."""
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

    # -- what subclasses provide ------------------------------------------------

    def _take_locked(self):
        """Lock held: lease and return an available connection, or None
        (and then, if useful, ask the loop for more)."""
        raise NotImplementedError

    def _wants_more_locked(self):
        """Lock held, a caller is about to wait: should the loop open more
        connections (``_fill``)?"""
        return False

    def _returned_locked(self, conn):
        """Lock held: a healthy connection came back from a lease."""

    def _forget_locked(self, conn, exc):
        """Lock held: ``conn`` is out of service (already marked dead)."""
        raise NotImplementedError

    def _lost(self, conn, exc):
        """Loop: handle the loss of ``conn`` (socket close, factory, hooks)."""
        raise NotImplementedError

    def close(self, timeout=None):
        """Close for good: stop trying, drop every connection, wake every
        waiter with :class:`~rcf_sync.ClientClosed`, and release the
        background (its threads are joined after the last user closes;
        ``timeout`` bounds that join, default 5 s). Idempotent; prompt in
        every state."""
        timeout = _check_timeout(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._state is not State.IDLE
            self._closing_locked()
        if started:
            wait = 5.0 if timeout is None else timeout
            self._on_loop(self._shutdown, timeout=wait)
            self._backend.release(wait)

    def _closing_locked(self):
        """Lock held: enter the CLOSED state."""
        raise NotImplementedError

    def _shutdown(self):
        """Loop: stop the factory, cancel attempts, close connections."""
        raise NotImplementedError

    def _gave_up_locked(self):
        """Lock held: True when no connection will come any more."""
        raise NotImplementedError

    def _raise_if_hopeless_locked(self):
        """Lock held: raise what a caller waiting for a connection should
        get now (closed, not started, gave up), if anything."""
        if self._closed:
            raise ClientClosed(f"{self.name} is closed", self.destination)
        if self._state is State.IDLE:
            raise RuntimeError(f"{self!r} is not started: call start() or use it in a with block")
        if self._gave_up_locked():
            raise GaveUp(
                f"no connection to {self.destination}: {self._stop_reason or 'stopped trying'}"
                f" (last error: {self._stats.last_error})",
                self.destination, self._stats.last_error,
            )

    # -- attempts -------------------------------------------------------------

    def _attempt_timeout(self):
        timeout = self._connector.timeout
        if timeout is not None and self._on_connect is not None and self._on_connect_timeout:
            timeout += self._on_connect_timeout
        return timeout

    def _launch(self, handle, deliver):
        """Loop: start an attempt; ``deliver(handle, sock, exc)`` on the loop."""
        handle.attempt = self._backend.start_attempt(
            self._steps(handle), self._attempt_timeout(), lambda sock, exc: deliver(handle, sock, exc)
        )

    def _steps(self, handle):
        sock = yield from self._connector._attempt()
        sock = yield ("adopt", sock)
        session = None
        if self._on_connect is not None:
            try:
                sock.settimeout(self._on_connect_timeout)
                session = yield ("hook", self._on_connect, sock)
                sock.settimeout(None)
            except BaseException:
                _abort_socket(sock)  # also wakes a hook still blocked on it
                raise
        handle.session = session
        return sock

    def _describe_error(self, exc):
        exc = _timeout_compatible(exc)
        if isinstance(exc, TimeoutError) and not isinstance(exc, RCFError):
            return ConnectTimeout(f"connecting to {self.destination} timed out: {exc}",
                                  self.destination, exc)
        return exc

    def _new_connection_locked(self, sock, session=None):
        self._serial += 1
        self._stats.connects += 1
        return _Connection(sock, self._serial, session)

    def _watch(self, conn):
        conn.watch = watch = self._backend.watch_idle(conn.sock, lambda: self._idle_event(conn))
        with self._lock:
            leased = conn.leased  # handed straight to a waiting caller
        if leased:
            watch.pause()

    # -- losses ---------------------------------------------------------------

    def _idle_event(self, conn):
        # The loop leases the connection to itself while it looks, so that no
        # caller can get it half-checked.
        with self._lock:
            if conn.dead:
                return
            leased = conn.leased
            conn.leased = True
        if leased:
            if peer_gone(conn.sock):
                conn.peer_closed = True  # the lease holder's release discards it
            return
        status = idle_status(conn.sock)
        if status == "quiet":
            self._release(conn, None)
            return
        with self._lock:
            conn.leased = False
        if status == "closed":
            self._mark_lost(conn, ConnectionResetError("the peer closed or reset the connection"))
        else:
            # Bytes nobody asked for: handing this stream to a caller could
            # give it a reply that is not its own.
            self._mark_lost(conn, ConnectionError("unexpected data from the peer on an idle connection"))

    def _mark_lost(self, conn, exc, wait=False):
        """Any context: take ``conn`` out of service and start the loss
        handling on the loop (and with ``wait``, let it finish: the socket is
        closed and the factory told). Returns True the first time."""
        with self._lock:
            if conn.dead:
                return False
            conn.dead = True
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

    def _loss_reason(self, exc):
        return exc if isinstance(exc, RCFError) else ConnectionLost(
            f"connection to {self.destination} lost: {exc}", self.destination, exc)

    def _close_conn(self, conn):
        watch, conn.watch = conn.watch, None
        if watch is not None:
            watch.close()
        hb, conn.heartbeat = conn.heartbeat, None
        if hb is not None and hb.active():
            hb.cancel()
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- leases ---------------------------------------------------------------

    def _acquire(self, deadline):
        # Fair: a newcomer takes a free connection only when nobody is queued;
        # queued callers are handed connections in order (_handoff_locked).
        with self._lock:
            conn = None if self._queue else self._take_locked()
        if conn is not None:  # the usual case: no wait, one lock block
            if self._pause_watch and conn.watch is not None:
                conn.watch.pause()
            return conn
        ticket = None
        try:
            while True:
                with self._lock:
                    if ticket is not None and ticket.conn is not None:
                        conn = ticket.conn
                        break
                    if ticket is None and not self._queue:
                        conn = self._take_locked()
                        if conn is not None:
                            break
                    self._raise_if_hopeless_locked()
                    if ticket is None:
                        ticket = _Ticket()
                        if not self._queue:
                            self._queue = collections.deque()
                        self._queue.append(ticket)
                    event = ticket.event = self._backend.event()
                    more = self._wants_more_locked()
                if more:
                    self._backend.call_soon(self._fill)
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                event.wait(remaining)
        except BaseException:
            if ticket is not None:
                with self._lock:
                    handed = ticket.conn
                    try:
                        self._queue.remove(ticket)
                    except ValueError:
                        pass
                if handed is not None:  # given to us just as we gave up: pass it on
                    self._release(handed, None)
            raise
        if self._pause_watch and conn.watch is not None:
            conn.watch.pause()
        return conn

    def _handoff_locked(self, conn):
        """Lock held, ``conn`` healthy and free: lease it to the oldest
        queued caller. True when someone took it."""
        if not self._queue:
            return False
        ticket = self._queue.popleft()
        ticket.conn = conn
        conn.leased = True
        ticket.event.set()
        return True

    def _timed_out(self):
        return ConnectTimeout(
            f"no connection to {self.destination} in time"
            f" (state {self._state.name}, last error: {self._stats.last_error})",
            self.destination, self._stats.last_error,
        )

    def _release(self, conn, exc, lost_on=()):
        """End a lease. Returns False (do not swallow); raises
        ``ConnectionLost`` (chained) for an ``OSError`` that is not ours, or
        an exception of ``lost_on`` (the handle's or ``lost_on``)."""
        sock = conn.sock
        if exc is None:
            try:
                if sock.gettimeout() is not None:
                    sock.settimeout(None)
            except OSError as error:
                exc = error
        if exc is None:
            with self._lock:
                if self._stamp_use:
                    conn.last_used = time.monotonic()
                dead = conn.peer_closed or conn.dead
                handed = False
                if dead:
                    conn.leased = False
                elif self._queue:
                    handed = self._handoff_locked(conn)
                else:
                    conn.leased = False
                    if self._keeps_idle:
                        self._returned_locked(conn)
            if dead:
                self._mark_lost(conn, ConnectionResetError("the peer closed the connection"), wait=True)
                return False
            watch = conn.watch
            if watch is not None and not handed and watch.idle_off:
                watch.resume()
            return False
        exc = _timeout_compatible(exc)
        with self._lock:
            conn.leased = False
        self._mark_lost(conn, exc, wait=True)
        if self._closed and not isinstance(exc, RCFError):
            raise ClientClosed(f"{self.name} was closed during the request", self.destination, exc) from exc
        if (isinstance(exc, (OSError,) + self._lost_on + lost_on)
                and not isinstance(exc, RCFError)):
            raise ConnectionLost(
                f"connection to {self.destination} lost: {type(exc).__name__}: {exc}",
                self.destination, exc,
            ) from exc
        return False

    # -- waiting --------------------------------------------------------------

    def _wait_event_locked(self):
        self._waiters += 1
        if self._changed is None:
            self._changed = self._backend.event()
        return self._changed

    def _wait(self, event, deadline):
        try:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise self._timed_out()
            event.wait(remaining)
        finally:
            with self._lock:
                self._waiters -= 1

    def _notify_locked(self):
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    def _changed_locked(self):
        """Lock held: something waiters care about changed."""
        self._stats.last_change = self.clock.seconds()
        if self._waiters:
            self._notify_locked()
        for ticket in self._queue:
            ticket.event.set()

    def _on_loop(self, fn, timeout=5.0):
        """Run ``fn`` on the loop and wait (up to ``timeout``) until it ran."""
        backend = self._backend
        if backend.in_loop():
            fn()
            return
        done = backend.event()
        failure = []

        def run():
            try:
                fn()
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        backend.call_soon(run)
        done.wait(timeout)
        if failure:
            raise failure[0]

    def _track_factory_clock(self):
        self._factory_clock = _TrackingClock(self.clock)
        self.factory.clock = self._factory_clock


def _abort_socket(sock):
    """Close ``sock`` so that a thread blocked on it wakes up (on Linux a
    plain close() does not interrupt a blocked recv)."""
    try:
        sock.shutdown(2)  # SHUT_RDWR
    except OSError:
        pass
    sock.close()


class _Ticket:
    """A caller's place in the queue for a lease."""

    __slots__ = ("event", "conn")

    def __init__(self):
        self.event = None
        self.conn = None


class _TrackingClock:
    """The client's clock as its factory sees it: every call scheduled
    through it is remembered, so that ``close()`` can cancel them all (even a
    retry that ``resetDelay()`` made the factory forget). Everything else is
    the wrapped clock's."""

    def __init__(self, clock):
        self._clock = clock
        self._calls = []
        self._prune_at = 8

    def seconds(self):
        return self._clock.seconds()

    def callLater(self, delay, fn, *args, **kw):
        call = self._clock.callLater(delay, fn, *args, **kw)
        calls = self._calls
        calls.append(call)
        if len(calls) > self._prune_at:
            calls[:] = [c for c in calls if c.active()]
            self._prune_at = max(8, 2 * len(calls))
        return call

    def getDelayedCalls(self):
        return self._clock.getDelayedCalls()

    def cancel_all(self):
        calls, self._calls = self._calls, []
        for call in calls:
            if call.active():
                try:
                    call.cancel()
                except Exception:
                    pass

    def __getattr__(self, name):
        return getattr(self._clock, name)

    def __repr__(self):
        return repr(self._clock)


class _Pending:
    """The client's handle on an attempt the backend is driving."""

    __slots__ = ("attempt", "session")

    def __init__(self):
        self.attempt = None
        self.session = None  # what on_connect returned

    def cancel(self):
        if self.attempt is not None:
            self.attempt.cancel()
