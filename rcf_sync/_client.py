"""``ReconnectingClient``: the blocking handle.

Theory of operation. Two kinds of context touch a client:

* the backend's *loop* (the shared loop thread, or the gevent hub) runs every
  connection attempt and every conversation with the factory
  (``startedConnecting``, ``clientConnectionFailed/Lost``, ``resetDelay``,
  ``stopTrying``), one at a time, as Twisted's reactor would;
* *callers* (any thread or greenlet) wait for a connection, lease it, and on
  an error mark it dead.

Shared fields (state, current connection, lease flag, counters) live under
one short lock; every decision is taken under it and every action (socket
close, factory call, user callback) happens after releasing it. Waiting is on
a broadcast event that is replaced at each change, against one monotonic
deadline per call; nothing polls.
"""

import math
import numbers
import time

from ._backends import get_backend
from ._backends._base import peer_gone
from ._connectors import as_connector
from ._errors import ClientClosed, ConnectionLost, ConnectTimeout, GaveUp, RCFError
from ._factory import ReconnectingClientFactory
from ._state import Event, State, transition

__all__ = ["ReconnectingClient", "Stats"]

_MAX_BUFSIZE = 64 * 1024 * 1024
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
    __slots__ = ("sock", "watch", "leased", "dead", "peer_closed", "idle_data", "serial",
                 "heartbeat", "last_used")

    def __init__(self, sock, serial):
        self.sock = sock
        self.serial = serial
        self.watch = None
        self.leased = False
        self.dead = False
        self.peer_closed = False
        self.idle_data = False
        self.heartbeat = None
        self.last_used = time.monotonic()


def _check_timeout(timeout, what="timeout"):
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or math.isnan(timeout):
        raise ValueError(f"{what} must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"{what} must be >= 0 or None, got {timeout!r}")
    return float(timeout)


def _deadline(timeout):
    timeout = _check_timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline):
    return None if deadline is None else deadline - time.monotonic()


class _Lease:
    """What ``client.connection()`` returns: a context manager lending the
    socket to one caller."""

    __slots__ = ("_client", "_timeout", "_conn")

    def __init__(self, client, timeout):
        self._client = client
        self._timeout = _check_timeout(timeout)
        self._conn = None

    def __enter__(self):
        self._conn = self._client._acquire(_deadline(self._timeout))
        return self._conn.sock

    def __exit__(self, exc_type, exc, tb):
        conn, self._conn = self._conn, None
        return self._client._release(conn, exc)


class ReconnectingClient:
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
    before anyone gets it (raising fails the attempt; its socket operations
    time out after ``on_connect_timeout`` seconds, and the attempt as a whole
    is abandoned after the connector's timeout plus that much).
    ``on_disconnect(reason)``: called after an established connection is
    lost (on the thread backend it runs on the shared loop thread and must
    not block). ``heartbeat(sock)`` with ``heartbeat_interval``: run by the
    background on a connection nobody has leased for that long; raising or
    timing out (after ``heartbeat_interval`` seconds) counts as a loss.

    Every public method is safe to call from any thread (or, on the gevent
    backend, any greenlet of the hub's thread). Use it as a context manager,
    or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, connector, factory=None, backend="auto", clock=None,
                 on_connect=None, on_disconnect=None, name=None, *,
                 on_connect_timeout=_DEFAULT_HOOK_TIMEOUT, heartbeat=None,
                 heartbeat_interval=None):
        if factory is None:
            factory = ReconnectingClientFactory()
        for method in ("clientConnectionFailed", "clientConnectionLost", "resetDelay", "stopTrying"):
            if not callable(getattr(factory, method, None)):
                raise ValueError(f"factory must be a ReconnectingClientFactory, got {factory!r}")
        for label, fn in (("on_connect", on_connect), ("on_disconnect", on_disconnect),
                          ("heartbeat", heartbeat)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{label} must be callable or None, got {fn!r}")
        if clock is not None and not (callable(getattr(clock, "callLater", None))
                                      and callable(getattr(clock, "seconds", None))):
            raise ValueError(f"clock must provide seconds() and callLater(), got {clock!r}")
        self._on_connect_timeout = _check_timeout(on_connect_timeout, "on_connect_timeout")
        self._heartbeat_interval = _check_timeout(heartbeat_interval, "heartbeat_interval")
        if heartbeat is not None and not self._heartbeat_interval:
            raise ValueError("heartbeat needs a heartbeat_interval > 0")
        self._connector = as_connector(connector)
        self._backend = get_backend(backend)
        self.factory = factory
        self.clock = clock if clock is not None else self._backend.clock
        self.name = name if name is not None else self._connector.describe()
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._heartbeat = heartbeat

        self._lock = self._backend.lock()
        self._changed = self._backend.event()
        self._waiters = 0
        self._state = State.IDLE
        self._closed = False
        self._conn = None
        self._serial = 0
        self._attempt = None
        self._attempts_started = 0
        self._connect_requested = False
        self._failures = 0
        self._stop_reason = None
        self._stats = Stats()

    # -- public surface ------------------------------------------------------

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
        """The connector (Twisted's ``IConnector`` shape) this client drives."""
        return self._connector

    def __repr__(self):
        return f"<ReconnectingClient {self.name!r} {self._state.name} backend={self._backend.name}>"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def start(self):
        """Start connecting (the first attempt begins at once); returns
        ``self``. ``RuntimeError`` if already started or closed."""
        with self._lock:
            if self._state is not State.IDLE:
                raise RuntimeError(f"{self!r} was already started")
            self._connector._adopt(self)
            self._set_state(Event.START)
            self._connect_requested = True
        self._factory_clock = _TrackingClock(self.clock)
        self.factory.clock = self._factory_clock
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
            self._wait(event, deadline, timeout)

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
                self._wait(event, deadline, timeout)
            except ConnectTimeout:
                raise ConnectTimeout(
                    f"{self.name} did not reach {'/'.join(s.name for s in states)} in time "
                    f"(state {self._state.name})", self.destination) from None

    def connection(self, timeout=None):
        """Lease the live socket: ``with client.connection() as sock: ...``.

        Waits up to ``timeout`` real seconds for a connection nobody else
        holds (:class:`~rcf_sync.ConnectTimeout`). Inside the block the
        socket is yours alone. An ``OSError`` escaping the block (timeouts
        included) closes that connection, starts reconnecting and surfaces
        as :class:`~rcf_sync.ConnectionLost` chained to it; any other
        exception also discards the connection (its stream state is
        unknown) and propagates unchanged. Also raises ``GaveUp`` and
        ``ClientClosed``."""
        return _Lease(self, timeout)

    def call(self, fn, *args, attempts=None, timeout=None, **kwargs):
        """Run ``fn(sock, *args, **kwargs)`` under a lease and return its
        result; when the connection dies under it (``ConnectionLost``), wait
        for the next connection and run ``fn`` again, up to ``attempts``
        runs in all (``None``: as often as ``timeout`` allows). Only for
        idempotent work. ``timeout`` bounds the whole call, waits included."""
        if attempts is not None and (not isinstance(attempts, numbers.Integral) or attempts < 1):
            raise ValueError(f"attempts must be an integer >= 1 or None, got {attempts!r}")
        deadline = _deadline(timeout)
        runs = 0
        while True:
            runs += 1
            conn = self._acquire(deadline)
            try:
                result = fn(conn.sock, *args, **kwargs)
            except BaseException as exc:
                try:
                    self._release(conn, exc)
                except ConnectionLost:
                    if attempts is not None and runs >= attempts:
                        raise
                    continue
                raise
            self._release(conn, None)
            return result

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
        if not isinstance(bufsize, numbers.Integral) or isinstance(bufsize, bool) \
                or not 0 < bufsize <= _MAX_BUFSIZE:
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
        self._on_loop(self._do_stop_trying)

    def reset_delay(self):
        """``factory.resetDelay()``: the next retry waits ``initialDelay``
        again. (Like Twisted, a retry already scheduled still runs.)"""
        self._on_loop(self.factory.resetDelay)

    def reconnect_now(self):
        """Skip the back-off wait and attempt now; from ``STOPPED``, reset the
        factory and start trying again. No effect while connecting or
        connected."""
        self._on_loop(self._do_reconnect_now)

    def close(self, timeout=None):
        """Close for good: stop trying, drop the connection, wake every waiter
        with :class:`~rcf_sync.ClientClosed`, and release the background
        (its threads are joined after the last client closes; ``timeout``
        bounds that join, default 5 s). Idempotent; prompt in every state."""
        timeout = _check_timeout(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._state is not State.IDLE
            self._set_state(Event.CLOSE)
        if started:
            self._on_loop(self._shutdown, timeout=timeout if timeout is not None else 5.0)
            self._backend.release(5.0 if timeout is None else timeout)

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
        timeout = connector.timeout
        if timeout is not None and self._on_connect is not None and self._on_connect_timeout:
            timeout += self._on_connect_timeout
        handle.attempt = self._backend.start_attempt(
            self._steps(), timeout, lambda sock, exc: self._attempt_done(handle, sock, exc)
        )

    def _steps(self):
        sock = yield from self._connector._attempt()
        sock = yield ("adopt", sock)
        if self._on_connect is not None:
            try:
                sock.settimeout(self._on_connect_timeout)
                yield ("hook", self._on_connect, sock)
                sock.settimeout(None)
            except BaseException:
                sock.close()
                raise
        return sock

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
                self._serial += 1
                conn = _Connection(sock, self._serial)
                self._conn = conn
                self._stats.connects += 1
                self._set_state(Event.CONNECTED)
        if closed:
            sock.close()
            return
        conn.watch = self._backend.watch_idle(sock, lambda: self._idle_event(conn))
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

    def _describe_error(self, exc):
        if isinstance(exc, TimeoutError) and not isinstance(exc, RCFError):
            return ConnectTimeout(f"connecting to {self.destination} timed out: {exc}",
                                  self.destination, exc)
        return exc

    def _after_factory(self, event):
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if self._closed or self._attempt is not None or self._conn is not None:
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

    def _idle_event(self, conn):
        with self._lock:
            if conn is not self._conn or conn.dead:
                return
            if conn.leased:
                conn.peer_closed = True
                return
        if peer_gone(conn.sock):
            self._mark_lost(conn, ConnectionResetError("the peer closed or reset the connection"))
        else:
            conn.idle_data = True  # data while idle: left for the next lease

    def _mark_lost(self, conn, exc, wait=False):
        """Any context: take ``conn`` out of service and start the loss
        handling on the loop (and with ``wait``, let it finish: the socket is
        closed and the factory told). Returns True the first time."""
        with self._lock:
            if conn.dead:
                return False
            conn.dead = True
            if self._conn is conn:
                self._conn = None
                self._stats.losses += 1
                self._stats.last_error = exc
        if wait:
            self._on_loop(lambda: self._lost(conn, exc))
        else:
            self._backend.call_soon(self._lost, conn, exc)
        return True

    def _lost(self, conn, exc):
        self._close_conn(conn)
        closed = self._closed
        reason = exc if isinstance(exc, RCFError) else ConnectionLost(
            f"connection to {self.destination} lost: {exc}", self.destination, exc)
        if not closed:
            self.factory.clientConnectionLost(self._connector, reason)
        self.factory.doStop()
        if closed:
            return
        if self._on_disconnect is not None:
            self._backend.run_callback(self._on_disconnect, reason)
        self._after_factory(Event.LOST)

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
                self._heartbeat(sock)
            finally:
                sock.settimeout(None)

        handle = _Pending()

        def done(sock, exc):
            try:
                self._release(conn, exc)
            except Exception:
                pass
            if exc is None and not conn.dead:
                self._schedule_heartbeat(conn)

        def steps():
            yield ("hook", beat)

        handle.attempt = self._backend.start_attempt(steps(), self._heartbeat_interval * 2, done)

    def _do_stop_trying(self):
        self.factory.stopTrying()
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
            if isinstance(attempt, _Pending):
                attempt.attempt.cancel()
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
        lease = _Lease(self, None)
        lease._timeout = None if deadline is None else max(0.0, _remaining(deadline))
        return lease

    def _acquire(self, deadline):
        while True:
            with self._lock:
                conn = self._conn
                if conn is not None and not conn.leased and not conn.dead:
                    conn.leased = True
                    watch = conn.watch
                    break
                self._raise_if_hopeless_locked()
                event = self._wait_event_locked()
            self._wait(event, deadline, None)
        if watch is not None:
            watch.pause()
        return conn

    def _release(self, conn, exc):
        """End a lease. Returns False (do not swallow); raises
        ``ConnectionLost`` (chained) for an ``OSError`` that is not ours."""
        sock = conn.sock
        if exc is None:
            try:
                if sock.gettimeout() is not None:
                    sock.settimeout(None)
            except OSError as error:
                exc = error
        if exc is None:
            with self._lock:
                conn.leased = False
                conn.last_used = time.monotonic()
                dead = conn.peer_closed or conn.dead
                if self._waiters and not dead:
                    self._notify_locked()
            if dead:
                self._mark_lost(conn, ConnectionResetError("the peer closed the connection"), wait=True)
                return False
            watch = conn.watch
            if watch is not None:
                if conn.idle_data:
                    conn.idle_data = False
                watch.resume()
            return False
        with self._lock:
            conn.leased = False
        self._mark_lost(conn, exc, wait=True)
        if self._closed and not isinstance(exc, RCFError):
            raise ClientClosed(f"{self.name} was closed during the request", self.destination, exc) from exc
        if isinstance(exc, OSError) and not isinstance(exc, RCFError):
            raise ConnectionLost(
                f"connection to {self.destination} lost: {type(exc).__name__}: {exc}",
                self.destination, exc,
            ) from exc
        return False

    def _raise_if_hopeless_locked(self):
        state = self._state
        if self._closed:
            raise ClientClosed(f"{self.name} is closed", self.destination)
        if state is State.STOPPED:
            raise GaveUp(
                f"no connection to {self.destination}: {self._stop_reason or 'stopped trying'}"
                f" (last error: {self._stats.last_error})",
                self.destination, self._stats.last_error,
            )
        if state is State.IDLE:
            raise RuntimeError(f"{self!r} is not started: call start() or use it in a with block")

    def _wait_event_locked(self):
        self._waiters += 1
        return self._changed

    def _wait(self, event, deadline, timeout):
        try:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise ConnectTimeout(
                    f"no connection to {self.destination} in time"
                    f" (state {self._state.name}, last error: {self._stats.last_error})",
                    self.destination, self._stats.last_error,
                )
            event.wait(remaining)
        finally:
            with self._lock:
                self._waiters -= 1

    def _notify_locked(self):
        event = self._changed
        self._changed = self._backend.event()
        event.set()

    def _set_state(self, event):
        # With self._lock held.
        self._state = transition(self._state, event)
        self._stats.last_change = self.clock.seconds()
        if self._waiters:
            self._notify_locked()

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


class _TrackingClock:
    """The client's clock as its factory sees it: every call scheduled
    through it is remembered, so that ``close()`` can cancel them all (even a
    retry that ``resetDelay()`` made the factory forget). Everything else is
    the wrapped clock's."""

    def __init__(self, clock):
        self._clock = clock
        self._calls = []

    def seconds(self):
        return self._clock.seconds()

    def callLater(self, delay, fn, *args, **kw):
        call = self._clock.callLater(delay, fn, *args, **kw)
        calls = self._calls
        if len(calls) > 8:
            calls[:] = [c for c in calls if c.active()]
        calls.append(call)
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

    __slots__ = ("attempt",)

    def __init__(self):
        self.attempt = None

    def cancel(self):
        if self.attempt is not None:
            self.attempt.cancel()
