"""``ReconnectingClient``: the blocking handle on one connection.

The loop side (attempts, the factory, losses) and the caller side (leases)
are described in ``_handle``; ``_client_loop`` holds the client's loop and
connector sides; this module adds the public surface: construction, the
single connection's waits and streams, and the operations on the handle.
"""

from __future__ import annotations

import numbers
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._client_loop import ClientLoop
from ._connection import Connection, Owner
from ._errors import GaveUp
from ._factory import uses_protocol
from ._fork import live as _live
from ._handle import _DEFAULT_HOOK_TIMEOUT, _Pending
from ._leasing import _StreamLease
from ._reasons import PeerClosed
from ._state import Event, State
from ._stats import Stats
from ._timeouts import _check_timeout, _deadline

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")

__all__ = ["ReconnectingClient", "Stats"]

_MAX_BUFSIZE = 64 * 1024 * 1024


class ReconnectingClient(ClientLoop):
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

    __slots__ = ()

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
        _live[self] = None
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

    # -- caller side -----------------------------------------------------------

    def _lease_until(self, deadline: float | None) -> _StreamLease:
        return _StreamLease._make(self, None if deadline is None
                                  else max(0.0, deadline - time.monotonic()))

    def _still_ours_locked(self, conn: Connection) -> bool:
        return self._conn is conn
