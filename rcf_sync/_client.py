"""``ReconnectingClient``: the blocking handle on one connection.

The loop side (attempts, the factory, losses) and the caller side (leases)
are described in ``_core``; this module adds the single connection, the
state table of ``_state`` and the operations on the handle itself.
"""

import numbers
import time

from ._core import (
    _DEFAULT_HOOK_TIMEOUT,
    Stats,
    _check_timeout,
    _deadline,
    _Handle,
    _Lease,
    _Pending,
    _remaining,
)
from ._errors import GaveUp
from ._state import Event, State, transition

__all__ = ["ReconnectingClient", "Stats"]

_MAX_BUFSIZE = 64 * 1024 * 1024


class ReconnectingClient(_Handle):
    """A connection that re-establishes itself, for blocking code.

    ``connector``: ``(host, port)``, a Unix socket path, a
    :class:`~rcf_sync.TCPConnector` / :class:`~rcf_sync.UNIXConnector`, or a
    zero-argument callable returning a connected socket. ``factory``: the
    :class:`~rcf_sync.ReconnectingClientFactory` that decides the back-off
    (default: Twisted's defaults). ``backend``: ``"thread"``, ``"gevent"`` or
    ``"auto"`` (gevent when ``socket`` is monkey-patched). ``clock``: the
    ``IReactorTime`` the back-off runs on (default: the backend's real clock;
    a :class:`~rcf_sync.testing.FakeClock` or Twisted's ``task.Clock`` in
    tests). ``on_connect(sock)``: handshake run on every new connection
    before anyone gets it; if it returns an object other than ``None``,
    leases hand out that object instead of the socket (a per-connection
    session: a parser's state, a protocol object holding the socket), and it
    is dropped with its connection (raising fails the attempt; its socket operations
    time out after ``on_connect_timeout`` seconds, and the attempt as a whole
    is abandoned after the connector's timeout plus that much).
    ``on_disconnect(reason)``: called after an established connection is
    lost (on the thread backend it runs on the shared loop thread and must
    not block). ``heartbeat(sock)`` with ``heartbeat_interval``: run by the
    background on a connection nobody has leased for that long; raising or
    timing out (after ``heartbeat_interval`` seconds) counts as a loss.
    ``lost_on``: exception classes besides ``OSError`` that mean the stream
    is broken (``h11.RemoteProtocolError``, a parser's desync error): raised
    inside a lease they discard the connection and surface as
    :class:`~rcf_sync.ConnectionLost` chained to them, so :meth:`call` runs
    again.

    Every public method is safe to call from any thread (or, on the gevent
    backend, any greenlet of the hub's thread). Use it as a context manager,
    or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, connector, factory=None, backend="auto", clock=None,
                 on_connect=None, on_disconnect=None, name=None, *,
                 on_connect_timeout=_DEFAULT_HOOK_TIMEOUT, heartbeat=None,
                 heartbeat_interval=None, lost_on=()):
        if heartbeat is not None and not callable(heartbeat):
            raise ValueError(f"heartbeat must be callable or None, got {heartbeat!r}")
        self._heartbeat_interval = _check_timeout(heartbeat_interval, "heartbeat_interval")
        if heartbeat is not None and not self._heartbeat_interval:
            raise ValueError("heartbeat needs a heartbeat_interval > 0")
        super().__init__(connector, factory, backend, clock, on_connect, on_disconnect, name,
                         on_connect_timeout, lost_on)
        self._heartbeat = heartbeat
        self._stamp_use = heartbeat is not None
        self._conn = None
        self._attempt = None
        self._attempts_started = 0
        self._connect_requested = False

    def __repr__(self):
        return f"<ReconnectingClient {self.name!r} {self._state.name} backend={self._backend.name}>"

    def start(self):
        """Start connecting (the first attempt begins at once); returns
        ``self``. ``RuntimeError`` if already started or closed."""
        with self._lock:
            if self._state is not State.IDLE:
                raise RuntimeError(f"{self!r} was already started")
            self._connector._adopt(self)
            self._set_state(Event.START)
            self._connect_requested = True
        self._track_factory_clock()
        self._backend.acquire()
        self._backend.call_soon(self._attempt_now)
        return self

    def wait_connected(self, timeout=None, fail_after_failures=None):
        """Block until connected; return the live socket (not leased: prefer
        :meth:`connection` to use it).

        Raises :class:`~rcf_sync.ConnectTimeout` after ``timeout`` real
        seconds, :class:`~rcf_sync.GaveUp` when trying stops or after
        ``fail_after_failures`` failed attempts counted from this call, and
        :class:`~rcf_sync.ClientClosed` when the client is closed."""
        deadline = _deadline(timeout)
        if fail_after_failures is not None and (
                not isinstance(fail_after_failures, numbers.Integral) or fail_after_failures < 1):
            raise ValueError(f"fail_after_failures must be an integer >= 1, got {fail_after_failures!r}")
        with self._lock:
            first = self._failures
        while True:
            with self._lock:
                conn = self._conn
                if conn is not None and not conn.dead:
                    return conn.sock
                self._raise_if_hopeless_locked()
                if fail_after_failures is not None and self._failures - first >= fail_after_failures:
                    raise GaveUp(
                        f"gave up waiting for {self.destination}: {self._failures - first} "
                        f"failed attempts ({self._stats.last_error})",
                        self.destination, self._stats.last_error,
                    )
                event = self._wait_event_locked()
            self._wait(event, deadline)

    def sendall(self, data, timeout=None):
        """Send all of ``data`` on the connection (waiting for one first).
        ``ConnectionLost`` when the connection dies under it."""
        deadline = _deadline(timeout)
        with self._lease_until(deadline) as sock:
            if deadline is not None:
                sock.settimeout(max(0.0, _remaining(deadline)))
            sock.sendall(data)

    def recv(self, bufsize, timeout=None):
        """Receive up to ``bufsize`` bytes (waiting for a connection first).
        A peer that closed the connection raises ``ConnectionLost`` (never an
        empty ``b""``)."""
        if not (type(bufsize) is int or isinstance(bufsize, numbers.Integral)) \
                or isinstance(bufsize, bool) or not 0 < bufsize <= _MAX_BUFSIZE:
            raise ValueError(f"bufsize must be an integer in 1..{_MAX_BUFSIZE}, got {bufsize!r}")
        deadline = _deadline(timeout)
        with self._lease_until(deadline) as sock:
            if deadline is not None:
                sock.settimeout(max(0.0, _remaining(deadline)))
            data = sock.recv(bufsize)
            if not data:
                raise ConnectionResetError("the peer closed the connection")
            return data

    def stop_trying(self):
        """Stop reconnecting (``factory.stopTrying()``): a pending retry is
        cancelled, an attempt in progress abandoned; a live connection stays
        up until it is lost. Waiters then get :class:`~rcf_sync.GaveUp`."""
        if self._not_running():
            self.factory.stopTrying()
            return
        self._on_loop(self._do_stop_trying)

    def reset_delay(self):
        """``factory.resetDelay()``: the next retry waits ``initialDelay``
        again. (Like Twisted, a retry already scheduled still runs.)"""
        if self._not_running():
            self.factory.resetDelay()
            return
        self._on_loop(self.factory.resetDelay)

    def reconnect_now(self):
        """Skip the back-off wait and attempt now; from ``STOPPED``, reset the
        factory and start trying again. No effect while connecting or
        connected; none before :meth:`start` or after :meth:`close`."""
        if self._not_running():
            return
        self._on_loop(self._do_reconnect_now)

    def _not_running(self):
        # Before start() and after close() there is no loop work to do (and,
        # before start(), maybe no loop at all).
        return self._closed or self._state is State.IDLE

    def _closing_locked(self):
        self._set_state(Event.CLOSE)

    # -- connector side (IConnector calls land here) --------------------------

    def _connector_connect(self, connector):
        with self._lock:
            if self._closed:
                return
            self._connect_requested = True
            # Seen at once by whoever called connect() (a clock being advanced).
            if self._state in (State.WAITING, State.STOPPED) and self._conn is None:
                self._set_state(Event.ATTEMPT)
        self._backend.call_soon(self._attempt_now)

    def _connector_stop_connecting(self, connector):
        # Called on the loop by factory.stopTrying() or a subclass hook.
        attempt = self._attempt
        if attempt is None:
            return False
        self._attempt = None
        attempt.cancel()
        self._attempt_failed(ConnectionAbortedError("the connection attempt was stopped"))
        return True

    def _connector_disconnect(self, connector):
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._mark_lost(conn, ConnectionAbortedError("disconnect() was called"))
        else:
            self._on_loop(lambda: self._attempt is not None and
                          self._connector_stop_connecting(connector))

    # -- loop side -----------------------------------------------------------

    def _attempt_now(self):
        with self._lock:
            if self._closed or not self._connect_requested:
                return
            self._connect_requested = False
            if self._attempt is not None or self._conn is not None:
                return
            if self._state is not State.CONNECTING:
                self._set_state(Event.ATTEMPT)
            self._attempts_started += 1
            self._stats.retries = self._attempts_started - 1
        factory, connector = self.factory, self._connector
        factory.doStart()
        handle = _Pending()
        self._attempt = handle  # so that startedConnecting may stopConnecting()
        factory.startedConnecting(connector)
        if self._attempt is not handle or self._closed:
            return
        self._launch(handle, self._attempt_done)

    def _attempt_done(self, handle, sock, exc):
        if self._attempt is not handle:
            if sock is not None:
                sock.close()
            return
        self._attempt = None
        if exc is not None:
            self._attempt_failed(exc)
            return
        if self._closed:
            sock.close()
            return
        self.factory.resetDelay()
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                conn = self._conn = self._new_connection_locked(sock, handle.session)
                self._handoff_locked(conn)
                self._set_state(Event.CONNECTED)
        if closed:
            sock.close()
            return
        self._watch(conn)
        if self._heartbeat is not None:
            self._schedule_heartbeat(conn)

    def _attempt_failed(self, exc):
        reason = self._describe_error(exc)
        with self._lock:
            self._failures += 1
            self._stats.connect_failures += 1
            self._stats.last_error = reason
        if not self._closed:
            self.factory.clientConnectionFailed(self._connector, reason)
        self.factory.doStop()
        self._after_factory(Event.FAILED)

    def _after_factory(self, event):
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if (self._closed or self._state is State.IDLE or self._attempt is not None
                    or self._conn is not None):
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

    def _forget_locked(self, conn, exc):
        if self._conn is conn:
            self._conn = None

    def _lost(self, conn, exc):
        self._close_conn(conn)
        closed = self._closed
        reason = self._loss_reason(exc)
        if not closed:
            self.factory.clientConnectionLost(self._connector, reason)
        self.factory.doStop()
        if closed:
            return
        if self._on_disconnect is not None:
            self._backend.run_callback(self._on_disconnect, reason)
        self._after_factory(Event.LOST)

    def _schedule_heartbeat(self, conn, delay=None):
        conn.heartbeat = self._backend.call_later_real(
            self._heartbeat_interval if delay is None else delay, self._heartbeat_due, conn)

    def _heartbeat_due(self, conn):
        conn.heartbeat = None
        with self._lock:
            if conn.dead or self._conn is not conn or self._closed:
                return
            idle_for = time.monotonic() - conn.last_used
            if conn.leased or idle_for < self._heartbeat_interval:
                busy = True
            else:
                busy = False
                conn.leased = True
                if conn.watch is not None:
                    conn.watch.pause()
        if busy:
            self._schedule_heartbeat(conn, max(0.0, self._heartbeat_interval - idle_for)
                                     if not conn.leased else None)
            return

        def beat(sock=conn.sock):
            sock.settimeout(self._heartbeat_interval)
            try:
                self._heartbeat(conn.session)
            finally:
                sock.settimeout(None)

        def done(sock, exc):
            try:
                self._release(conn, exc)
            except Exception:
                pass
            if exc is None and not conn.dead:
                self._schedule_heartbeat(conn)

        def steps():
            yield ("hook", beat)

        self._backend.start_attempt(steps(), self._heartbeat_interval * 2, done)

    def _do_stop_trying(self):
        self.factory.stopTrying()
        if self._attempt is not None:
            # Before its first failure the factory has no connector to stop
            # (as in Twisted); the client abandons the attempt itself.
            self._connector_stop_connecting(self._connector)
        self._after_factory(None)

    def _do_reconnect_now(self):
        with self._lock:
            if self._closed or self._attempt is not None or self._conn is not None:
                return
            stopped = self._state is State.STOPPED
        factory = self.factory
        if stopped:
            factory.resetDelay()
        call = factory._callID
        if call is not None and call.active():
            call.cancel()
        factory._callID = None
        with self._lock:
            self._connect_requested = True
        self._attempt_now()

    def _shutdown(self):
        try:
            self.factory.stopTrying()
        finally:
            self._factory_clock.cancel_all()
            attempt, self._attempt = self._attempt, None
            if attempt is not None:
                attempt.cancel()  # also when startedConnecting() has not returned yet
                self.factory.doStop()
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.dead = True
                self._close_conn(conn)
                self.factory.doStop()
            self._connector._release(self)

    # -- caller side -----------------------------------------------------------

    def _lease_until(self, deadline):
        lease = _Lease(self, None, raw=True)
        lease._timeout = None if deadline is None else max(0.0, _remaining(deadline))
        return lease

    def _take_locked(self):
        conn = self._conn
        if conn is not None and not conn.leased and not conn.dead:
            conn.leased = True
            return conn
        return None

    def _gave_up_locked(self):
        return self._state is State.STOPPED

    def _set_state(self, event):
        # With self._lock held.
        self._state = transition(self._state, event)
        self._changed_locked()
