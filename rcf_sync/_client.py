"""``ReconnectingClient``: the blocking handle on one connection.

The loop side (attempts, the factory, losses) and the caller side (leases)
are described in ``_handle``; this module adds the single connection, the
state table of ``_state`` and the operations on the handle itself.
"""

from __future__ import annotations

import numbers
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._connection import IDLE, LEASED, Connection, Owner
from ._errors import GaveUp
from ._factory import uses_protocol
from ._failure import as_failure
from ._fork import live as _live
from ._handle import _DEFAULT_HOOK_TIMEOUT, Handle, _Pending
from ._leasing import _Lease
from ._liveness import Liveness
from ._protocol_mode import ProtocolMode
from ._reasons import ClosedHere, PeerClosed
from ._state import Event, State, transition
from ._stats import Stats
from ._timeouts import _check_timeout, _deadline

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")

__all__ = ["ReconnectingClient", "Stats"]

_MAX_BUFSIZE = 64 * 1024 * 1024


class ReconnectingClient(ProtocolMode, Liveness, Handle):
    """A connection that re-establishes itself, for blocking code.

    ``connector``: ``(host, port)``, a Unix socket path, a
    :class:`~rcf_sync.TCPConnector` / :class:`~rcf_sync.UNIXConnector`, or a
    zero-argument callable returning a connected socket. ``factory``: the
    :class:`~rcf_sync.ReconnectingClientFactory` that decides the back-off
    (default: Twisted's defaults). ``backend``: ``"thread"``, ``"gevent"`` or
    ``"auto"`` (gevent when ``socket`` is monkey-patched). ``clock``: the
    ``IReactorTime`` the back-off runs on (default: the factory's ``clock``
    if it has one, else the backend's real clock; a
    :class:`~rcf_sync.testing.FakeClock` or Twisted's ``task.Clock`` in
    tests; ``ValueError`` if the factory has a different one). While the
    client runs, ``factory.clock`` is a thin wrapper of that clock that
    remembers what the factory scheduled; ``close()`` gives the factory its
    own clock back.

    ``on_connect(sock)``: handshake run on every new connection before
    anyone gets it; if it returns an object other than ``None``, leases hand
    out that object instead of the socket (a per-connection session: a
    parser's state, a protocol object holding the socket), dropped with its
    connection. Raising fails the attempt; its socket operations time out
    after ``on_connect_timeout`` seconds, and the attempt as a whole is
    abandoned after the connector's timeout plus that much.
    ``on_disconnect(reason)``: called after an established connection is
    lost. ``heartbeat(conn)`` with ``heartbeat_interval``: run by the
    background on a connection nobody has leased for that long; raising or
    timing out (after ``heartbeat_interval`` seconds) counts as a loss.
    ``lost_on``: exception classes besides ``OSError`` that mean the stream
    is broken (``h11.RemoteProtocolError``, a parser's desync error): raised
    inside a lease they discard the connection and surface as
    :class:`~rcf_sync.ConnectionLost` chained to them, so :meth:`call` runs
    again.

    User code (the hooks above, socket factories, the methods of a factory
    subclass) runs in order, never two at once for one client, and never on
    the loop the process's clients share, so it may block. Apart from
    ``on_connect``, socket factories and ``heartbeat`` (whose exceptions mean
    a failed attempt or a loss), user code that raises is logged once and
    stops the client: ``STOPPED``, ``stats.last_error`` is the exception,
    waiters get :class:`~rcf_sync.GaveUp` chained to it, and
    :meth:`reconnect_now` starts again.

    The factory is told why with a :class:`~rcf_sync.Failure`: of the
    connect error for a failed attempt, of ``ConnectionDone`` for an orderly
    close, of ``ConnectionLost`` (or ``ConnectionAborted``) otherwise;
    ``on_disconnect`` gets the same exception, unwrapped.

    When the factory builds protocols (``protocol`` set, or
    ``buildProtocol`` overridden), the client drives one per connection
    and the socket is the protocol's: see :attr:`protocol`,
    :meth:`wait_protocol` and :meth:`call_protocol`; the handle methods
    then raise :class:`~rcf_sync.ProtocolModeError`.

    Every public method is safe to call from any thread (on the gevent
    backend: from greenlets of the hub's thread; another thread gets a
    ``RuntimeError`` saying so). Use it as a context manager, or call
    :meth:`start` and :meth:`close`. After ``os.fork()`` the child's copy
    drops the parent's connection (closing its descriptor only, so the
    parent's stream is untouched) and makes its own on first use.
    """

    __slots__ = ("_attempt", "_attempts_started", "_conn", "_connect_requested", "_proto_mode")

    def __init__(self, connector: Any, factory: Any = None, backend: object = "auto",
                 clock: Any = None, on_connect: Callable[[socket.socket], Any] | None = None,
                 on_disconnect: Callable[[BaseException], Any] | None = None,
                 name: str | None = None, *,
                 on_connect_timeout: float | None = _DEFAULT_HOOK_TIMEOUT,
                 heartbeat: Callable[[Any], Any] | None = None,
                 heartbeat_interval: float | None = None,
                 lost_on: type[BaseException] | tuple[type[BaseException], ...] = ()) -> None:
        if heartbeat is not None and not callable(heartbeat):
            raise ValueError(f"heartbeat must be callable or None, got {heartbeat!r}")
        self._heartbeat_interval = _check_timeout(heartbeat_interval, "heartbeat_interval")
        if heartbeat is not None and not self._heartbeat_interval:
            raise ValueError("heartbeat needs a heartbeat_interval > 0")
        super().__init__(connector, factory, backend, clock, on_connect, on_disconnect, name,
                         on_connect_timeout, lost_on)
        self._proto_mode = uses_protocol(self.factory)  # immutable
        if self._proto_mode:
            if heartbeat is not None:
                raise ValueError("heartbeat cannot be used when the factory builds a protocol "
                                 "(the protocol owns the socket)")
            # The factory makes the user's protocols: its calls share their
            # queue, so they keep Twisted's order (connectionLost first).
            self._trusted = False
        self._heartbeat = heartbeat            # immutable
        self._stamp_use = heartbeat is not None
        # Under the lock:
        self._conn: Connection | None = None   # the live connection
        self._attempt: _Pending | None = None  # the attempt in flight
        self._connect_requested = False
        self._attempts_started = 0

    def __repr__(self) -> str:
        return f"<ReconnectingClient {self.name!r} {self._state.name} backend={self._backend.name}>"

    def start(self) -> Self:
        """Start connecting (the first attempt begins at once); returns
        ``self``. ``RuntimeError`` if already started or closed."""
        self._enter()
        with self._lock:
            if self._state is not State.IDLE:
                raise RuntimeError(f"{self!r} was already started")
            self._connector._adopt(self)
            self._set_state(Event.START)
            self._connect_requested = True
        self._track_factory_clock()
        self._backend.acquire()
        _live.add(self)
        self._backend.call_soon(self._attempt_now)
        return self

    def wait_connected(self, timeout: float | None = None,
                       fail_after_failures: int | None = None) -> socket.socket:
        """Block until connected; return the live socket (not leased: prefer
        :meth:`connection` to use it).

        Raises :class:`~rcf_sync.ConnectTimeout` after ``timeout`` real
        seconds, :class:`~rcf_sync.GaveUp` when trying stops or after
        ``fail_after_failures`` failed attempts counted from this call, and
        :class:`~rcf_sync.ClientClosed` when the client is closed;
        :class:`~rcf_sync.ProtocolModeError` when the factory builds a
        protocol (use :meth:`wait_protocol`)."""
        self._refuse_socket("wait_connected()")
        return self._wait_live(self._live_socket_locked, timeout, fail_after_failures)

    def _live_socket_locked(self) -> socket.socket | None:
        conn = self._conn
        return conn.sock if conn is not None and conn.owner is not Owner.DEAD else None

    def _wait_live(self, pick_locked: Callable[[], T | None], timeout: float | None,
                   fail_after_failures: int | None) -> T:
        deadline = _deadline(timeout)
        if fail_after_failures is not None and (
                not isinstance(fail_after_failures, numbers.Integral) or fail_after_failures < 1):
            raise ValueError(f"fail_after_failures must be an integer >= 1, got {fail_after_failures!r}")
        self._enter()
        with self._lock:
            first = self._failures
        while True:
            with self._lock:
                live = pick_locked()
                if live is not None:
                    return live
                self._raise_if_hopeless_locked()
                if fail_after_failures is not None and self._failures - first >= fail_after_failures:
                    raise GaveUp(
                        f"gave up waiting for {self.destination}: {self._failures - first} "
                        f"failed attempts ({self._stats.last_error})",
                        self.destination, self._stats.last_error,
                    )
                event = self._wait_event_locked()
            self._wait(event, deadline)

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        """Send all of ``data`` on the connection (waiting for one first).
        ``ConnectionLost`` when the connection dies under it."""
        self._refuse_socket("sendall()")
        deadline = _deadline(timeout)
        with self._lease_until(deadline) as sock:
            if deadline is not None:
                sock.settimeout(max(0.0, deadline - time.monotonic()))
            sock.sendall(data)

    def recv(self, bufsize: int, timeout: float | None = None) -> bytes:
        """Receive up to ``bufsize`` bytes (waiting for a connection first).
        A peer that closed the connection raises ``ConnectionLost`` (never an
        empty ``b""``)."""
        if not (type(bufsize) is int or isinstance(bufsize, numbers.Integral)) \
                or isinstance(bufsize, bool) or not 0 < bufsize <= _MAX_BUFSIZE:
            raise ValueError(f"bufsize must be an integer in 1..{_MAX_BUFSIZE}, got {bufsize!r}")
        self._refuse_socket("recv()")
        deadline = _deadline(timeout)
        with self._lease_until(deadline) as sock:
            if deadline is not None:
                sock.settimeout(max(0.0, deadline - time.monotonic()))
            data: bytes = sock.recv(bufsize)
            if not data:
                raise PeerClosed("the peer closed the connection")
            return data

    def stop_trying(self) -> None:
        """Stop reconnecting (``factory.stopTrying()``): a pending retry is
        cancelled, an attempt in progress abandoned; a live connection stays
        up until it is lost. Waiters then get :class:`~rcf_sync.GaveUp`."""
        if self._not_running():
            self.factory.stopTrying()
            return
        self._on_loop(self._do_stop_trying)

    def reset_delay(self) -> None:
        """``factory.resetDelay()``: the next retry waits ``initialDelay``
        again. (Like Twisted, a retry already scheduled still runs.)"""
        if self._not_running():
            self.factory.resetDelay()
            return
        self._on_loop(lambda: self._factory_calls([("resetDelay", ())]))

    def reconnect_now(self) -> None:
        """Skip the back-off wait and attempt now; from ``STOPPED`` (also
        after user code raised), reset the factory and start trying again.
        No effect while connecting or connected; none before :meth:`start`
        or after :meth:`close`."""
        if self._not_running():
            return
        self._on_loop(self._do_reconnect_now)

    def _not_running(self) -> bool:
        # Before start() and after close() there is no loop work to do (and,
        # before start(), maybe no loop at all).
        self._enter()
        return self._closed or self._state is State.IDLE

    def _closing_locked(self) -> None:
        self._set_state(Event.CLOSE)

    # -- connector side (IConnector calls land here, from any thread) ----------

    def _connector_connect(self, connector: object) -> None:
        with self._lock:
            if self._closed or self._halted is not None:
                return
            self._connect_requested = True
            # Seen at once by whoever called connect() (a clock being advanced).
            if self._state in (State.WAITING, State.STOPPED) and self._conn is None:
                self._set_state(Event.ATTEMPT)
        # Always a turn later, even from a retry timer on the loop: timers due
        # together (a herd) then each cost a post, not a whole attempt, before
        # the next one runs; the attempts follow in the order they were due.
        self._backend.call_soon(self._attempt_now)

    def _connector_stop_connecting(self, connector: object) -> bool:
        with self._lock:
            pending, self._attempt = self._attempt, None
        if pending is None:
            return False

        def stop() -> None:
            self._cancel_attempt(pending)
            self._attempt_failed(ConnectionAbortedError("the connection attempt was stopped"))

        self._soon_on_loop(stop)
        return True

    def _connector_disconnect(self, connector: object) -> None:
        if self._proto_mode and self._lose_protocol_connection():
            return
        reason = ClosedHere("disconnect() was called")
        with self._lock:
            conn = self._conn
            if conn is not None and conn.owner is Owner.LEASED:
                # Its holder keeps the socket until the lease ends.
                if conn.doomed is None:
                    conn.doomed = reason
                return
        if conn is not None:
            self._mark_lost(conn, reason)
        else:
            self._connector_stop_connecting(connector)

    # -- loop side -----------------------------------------------------------

    def _attempt_now(self) -> None:
        with self._lock:
            if self._closed or not self._connect_requested or self._halted is not None:
                return
            self._connect_requested = False
            if self._attempt is not None or self._conn is not None:
                return
            if self._state is State.CONNECTED:
                # The connection is gone and a retry came (a factory subclass's
                # clientConnectionLost scheduled it) before the loss was noted.
                self._set_state(Event.LOST)
            if self._state is not State.CONNECTING:
                self._set_state(Event.ATTEMPT)
            self._attempts_started += 1
            self._stats.retries = self._attempts_started - 1
            pending = self._attempt = _Pending()  # so that startedConnecting may stopConnecting()

        def launch(_: object) -> None:
            with self._lock:
                current = self._attempt is pending and not self._closed
            if current:
                self._launch(pending, self._attempt_done)

        self._factory_calls([("doStart", ()), ("startedConnecting", (self._connector,))], launch)

    def _attempt_done(self, pending: _Pending, sock: Any, exc: BaseException | None) -> None:
        with self._lock:
            current = self._attempt is pending
            if current:
                self._attempt = None
        if not current:
            if sock is not None:
                sock.close()
            return
        if exc is not None:
            self._attempt_failed(exc)
            return
        if self._closed:
            sock.close()
            return
        if self._proto_mode:
            self._protocol_built(pending, sock)
            return
        self._factory_calls([("resetDelay", ())], lambda _: self._connected(pending, sock))

    def _connected(self, pending: _Pending, sock: socket.socket) -> None:
        with self._lock:
            usable = not self._closed and self._halted is None and self._conn is None
            if usable:
                conn = self._new_connection_locked(sock, pending.session)
        if not usable:
            sock.close()
            return
        if pending.protocol is None:
            self._watch(conn)
        with self._lock:
            if self._closed:
                conn.owner = Owner.DEAD
            else:
                self._conn = conn
                ticket = self._leases.hand(conn)
                if ticket is not None:
                    conn.owner = Owner.LEASED
                self._set_state(Event.CONNECTED)
        if conn.owner is Owner.DEAD:
            self._close_conn(conn)
            return
        if ticket is not None:
            ticket.event.set()
        if pending.protocol is not None:
            self._drive(conn, pending.protocol)
        if self._heartbeat is not None:
            self._schedule_heartbeat(conn)

    def _attempt_failed(self, exc: BaseException) -> None:
        reason = self._describe_error(exc)
        with self._lock:
            self._failures += 1
            self._stats.connect_failures += 1
            self._stats.last_error = reason
        calls: list[tuple[str, tuple[Any, ...]]] = [("doStop", ())]
        if not self._closed:
            calls.insert(0, ("clientConnectionFailed", (self._connector, as_failure(reason))))
        self._factory_calls(calls, lambda _: self._after_factory(Event.FAILED))

    def _after_factory(self, event: Event | None) -> None:
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if (self._closed or self._state is State.IDLE or self._attempt is not None
                    or self._conn is not None or self._halted is not None):
                return
            if (event is Event.FAILED and self._state is State.CONNECTING) or (
                    event is Event.LOST and self._state is State.CONNECTED):
                self._set_state(event)
            if gave_up and not self._connect_requested and self._state is not State.STOPPED:
                if not factory.continueTrying:
                    self._stop_reason = "stop_trying() was called"
                else:
                    self._stop_reason = f"gave up after {factory.retries - 1} retries"
                self._set_state(Event.GAVE_UP)

    def _forget_locked(self, conn: Connection, exc: BaseException) -> None:
        if self._conn is conn:
            self._conn = None

    def _lost(self, conn: Connection, exc: BaseException) -> None:
        reason = self._settle_reason(conn, exc)  # before a protocol hears of it
        self._close_conn(conn)
        self._tell_lost(reason, Event.LOST)

    def _tell_lost(self, reason: BaseException, event: Event) -> None:
        """Loop: a connection ended with ``reason``: the factory hears
        ``clientConnectionLost`` (and ``doStop``), then the state moves on
        (``event``) and ``on_disconnect`` runs."""
        if self._closed:
            self._factory_calls([("doStop", ())])
            return

        def after(_: object) -> None:
            self._after_factory(event)
            if self._on_disconnect is not None:
                self._user_callback("on_disconnect()", self._on_disconnect, reason)

        self._factory_calls([("clientConnectionLost", (self._connector, as_failure(reason))),
                             ("doStop", ())], after)

    def _halt_locked(self) -> list[Connection | _Pending]:
        to_close: list[Connection | _Pending] = []
        pending, self._attempt = self._attempt, None
        if pending is not None:
            to_close.append(pending)
        conn = self._conn
        if conn is not None:
            if conn.owner is Owner.LEASED:
                conn.doomed = conn.doomed or self._halted
            else:
                conn.owner = Owner.DEAD
                to_close.append(conn)
            self._conn = None
        self._connect_requested = False
        self._set_state(Event.HALT)
        return to_close

    def _do_stop_trying(self) -> None:
        def after(_: object) -> None:
            with self._lock:
                pending = self._attempt
            if pending is not None:
                # Before its first failure the factory has no connector to stop
                # (as in Twisted); the client abandons the attempt itself.
                self._connector_stop_connecting(self._connector)
            self._after_factory(None)

        self._factory_calls([("stopTrying", ())], after)

    def _do_reconnect_now(self) -> None:
        with self._lock:
            if self._closed or self._attempt is not None or self._conn is not None:
                return
            stopped = self._state is State.STOPPED
            self._halted = None
            if stopped:
                # Callers wait for the coming attempt from now on, even while
                # a factory subclass's resetDelay() runs in the user queue.
                self._connect_requested = True
                self._set_state(Event.ATTEMPT)

        def go(_: object) -> None:
            if self._factory_clock is not None:
                self._factory_clock.cancel_all()  # skip the wait of the pending retry
            with self._lock:
                self._connect_requested = True
            self._attempt_now()

        if stopped:
            self._factory_calls([("resetDelay", ())], go)
        else:
            go(None)

    def _shutdown(self) -> None:
        with self._lock:
            pending, self._attempt = self._attempt, None
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.owner = Owner.DEAD
        if pending is not None:
            self._cancel_attempt(pending)  # also when startedConnecting() has not returned yet
        if conn is not None:
            self._close_conn(conn)
        calls = [("stopTrying", ())] + [("doStop", ())] * ((pending is not None) + (conn is not None))
        self._factory_calls(calls, self._shutdown_done, always=True)

    def _forked(self) -> None:
        self._forked_locked_state()
        pending, self._attempt = self._attempt, None
        if pending is not None and pending.attempt is not None:
            pending.attempt.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            self._drop_in_child(conn)
        if self._revive and self._state in (State.CONNECTED, State.CONNECTING):
            self._state = State.CONNECTING
            self._connect_requested = True

    def _revived(self) -> None:
        self._attempt_now()

    # -- caller side -----------------------------------------------------------

    def _lease_until(self, deadline: float | None) -> _Lease:
        lease = _Lease(self, None, raw=True)
        lease._timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        return lease

    def _take_locked(self) -> Connection | None:
        conn = self._conn
        if conn is not None and conn.owner is IDLE:
            conn.owner = LEASED
            return conn
        return None

    def _gave_up_locked(self) -> bool:
        return self._state is State.STOPPED

    def _set_state(self, event: Event) -> None:
        # With self._lock held.
        self._state = transition(self._state, event)
        self._changed_locked()
