"""Protocol mode: a client that drives the protocol its factory builds.

Theory of operation. When the factory has a protocol (``uses_protocol``),
each connection attempt ends, after ``on_connect``, with
``factory.buildProtocol(addr)`` in the handle's user-code queue (raising
fails the attempt, as in Twisted). A ``None`` protocol gets Twisted's
treatment: the new connection is closed in order at once, never read, and
the factory hears ``clientConnectionLost(connector, Failure(ConnectionDone))``
and ``doStop()``. Otherwise the delay is reset and the connection is
installed with a :class:`Driver` in place of the idle watch (``conn.watch``:
the handle closes it before the socket, whatever ends the connection).

The driver belongs to the loop. It reads with one-shot readiness (the
thread backend's poller, or libev watchers on the gevent hub), non-blocking
``recv`` of up to 64 KiB, and queues ``dataReceived`` for each chunk in the
user-code queue, behind ``makeConnection``: protocol callbacks run in
order, never two at once, never on the loop. It stops reading while 1 MiB
handed to the protocol is still unprocessed. It is the transport's sender:
``wake()`` (any thread) posts a flush to the loop, which sends without
blocking and asks for writability while the socket buffer is full. The
reason the connection ended is settled once; then ``connectionLost`` is
queued, and the factory's ``clientConnectionLost`` after it.

Ownership: every field of :class:`Driver` is the loop's, except ``_broken``
(written by the user-code queue, read by it) and the transport (thread-safe).
"""

import logging
import os
import socket
import ssl

from ._address import address_of
from ._errors import ConnectionAborted, ConnectionDone, ConnectionLost, ProtocolModeError
from ._failure import as_failure
from ._connection import Owner
from ._protocol import Transport
from ._reasons import loss_exception
from ._state import Event
from ._steps import UserCall

__all__ = ["Driver", "ProtocolMode"]

log = logging.getLogger("rcf_sync")

_CHUNK = 64 * 1024          # bytes per recv()
_SEND_MAX = 256 * 1024      # bytes per send()
_READS_PER_TURN = 16        # then let the other connections have the loop
_HIGH_WATER = 1024 * 1024   # unprocessed bytes at which reading pauses
_LOW_WATER = _HIGH_WATER // 4
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _ThreadIO:
    """Readiness on the thread backend's poller (loop thread only)."""

    def __init__(self, backend, sock, on_ready):
        self._rt = backend._rt
        self._sock = sock
        self._on_ready = on_ready
        self._closed = False

    def want(self, read, write):
        from ._backends._runtime import READ, READ_WRITE, WRITE

        if self._closed or not (read or write):
            return
        kind = READ_WRITE if read and write else READ if read else WRITE
        try:
            self._rt.arm(self._sock, kind, self._fire)
        except (OSError, ValueError):  # closed under us: let the next recv say so
            self._rt.post(self._fire)

    def _fire(self):
        if not self._closed:
            self._on_ready()

    def close(self):
        if not self._closed:
            self._closed = True
            self._rt.forget(self._sock)


class _GeventIO:
    """Readiness from two libev watchers on the hub."""

    def __init__(self, backend, sock, on_ready):
        loop = backend._hub.loop
        self._on_ready = on_ready
        self._watchers = (loop.io(sock.fileno(), 1), loop.io(sock.fileno(), 2))

    def want(self, read, write):
        if self._watchers is None:
            return
        for watcher, on in zip(self._watchers, (read, write)):
            if on and not watcher.active:
                watcher.start(self._fire)
            elif not on and watcher.active:
                watcher.stop()

    def _fire(self):
        if self._watchers is not None:
            for watcher in self._watchers:
                watcher.stop()
            try:
                self._on_ready()
            except Exception:
                log.exception("unexpected error in rcf_sync's protocol driver")

    def close(self):
        watchers, self._watchers = self._watchers, None
        for watcher in watchers or ():
            watcher.stop()
            watcher.close()


def _address(sock, which):
    try:
        return address_of(getattr(sock, which)(), sock.family)
    except (OSError, ValueError):
        return None


class Driver:
    """Drives one protocol over one connection; the transport's sender."""

    def __init__(self, client, conn, protocol):
        self._client = client
        self._user = client._user
        self._backend = client._backend
        self._sock = sock = conn.sock
        self._conn = conn
        self._dest = client.destination
        self.protocol = protocol
        sock.settimeout(0.0)
        self.transport = Transport(self, _address(sock, "getpeername"), _address(sock, "getsockname"))
        self.made = False       # makeConnection() returned
        self.ended = False
        self._reason = None     # the exception that ended it, once settled
        self._queued = 0        # bytes queued for dataReceived, not yet processed
        self._paused = False
        self._broken = False    # a dataReceived raised: later chunks are dropped
        self._pid = os.getpid()
        io = _GeventIO if self._backend.name == "gevent" else _ThreadIO
        self._io = io(self._backend, sock, self._ready)

    def __repr__(self):
        return f"<Driver of {self.protocol!r} over {self.transport!r}>"

    def start(self):
        """Loop: queue makeConnection and start reading."""
        self._user.run(self.protocol.makeConnection, (self.transport,), self._made)
        self._arm()

    # -- the transport's sender (any thread) ------------------------------------------

    def wake(self):
        self._backend.call_soon(self._flush)

    def abort(self):
        self._backend.call_soon(self._lose, ConnectionAborted(
            f"connection to {self._dest} aborted by abortConnection()", self._dest))

    # -- loop ---------------------------------------------------------------------

    def _made(self, result, exc):
        if exc is not None:
            # As Twisted: logged, the connection closed in order, and the
            # exception is the reason both connectionLost and the factory get.
            log.error("%s: %s.connectionMade() raised %s: %s; closing the connection",
                      self._client.name, type(self.protocol).__name__, type(exc).__name__, exc,
                      exc_info=(type(exc), exc, exc.__traceback__))
            self._lose(exc, raw=True)
            return
        client = self._client
        with client._lock:
            self.made = not self.ended
            client._changed_locked()

    def _arm(self):
        if not self.ended:
            self._io.want(not self._paused, not self.transport.buffer.empty)

    def _ready(self):
        if self.ended:
            return
        if not self._paused and not self._read():
            return
        self._flush()

    def _read(self):
        """Read what is there; False once the connection has ended."""
        sock = self._sock
        for _ in range(_READS_PER_TURN):
            try:
                data = sock.recv(_CHUNK)
            except _WOULD_BLOCK:
                return True
            except OSError as exc:
                self._lose(ConnectionLost(f"connection to {self._dest} lost: {exc}", self._dest, exc))
                return False
            if not data:
                self._lose(ConnectionDone(f"connection to {self._dest} closed cleanly by the peer",
                                          self._dest))
                return False
            self._queued += len(data)
            self._user.run(self._data, (data,), lambda r, e, n=len(data): self._data_done(n, e))
            if self._queued >= _HIGH_WATER:
                self._paused = True
                return True
        self._backend.call_soon(self._ready)  # more may be waiting (or decrypted)
        return True

    def _data(self, data):
        # User-code queue.
        if self._broken:
            return
        try:
            self.protocol.dataReceived(data)
        except BaseException:
            self._broken = True
            raise

    def _data_done(self, size, exc):
        self._queued -= size
        if exc is not None:
            self._client._user_failed(f"{type(self.protocol).__name__}.dataReceived()", exc)
            return
        if self._paused and self._queued <= _LOW_WATER:
            self._paused = False
            self._arm()

    def _flush(self):
        if self.ended:
            return
        buffer, sock = self.transport.buffer, self._sock
        while True:
            data = buffer.take(_SEND_MAX)
            if not data:
                break
            try:
                sent = sock.send(data)
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                self._lose(ConnectionLost(f"connection to {self._dest} lost: {exc}", self._dest, exc))
                return
            buffer.mark_sent(sent)
            if sent < len(data):
                break
        if self.transport.close_if_flushed():
            self._lose(ConnectionDone(f"connection to {self._dest} closed cleanly by "
                                      "loseConnection()", self._dest))
            return
        self._arm()

    def _lose(self, exc, raw=False):
        """Loop: the connection ends with ``exc`` (told to the client)."""
        if self._reason is None and not self.ended:
            self._reason = exc if raw else loss_exception(exc, self._dest)
        self._client._mark_lost(self._conn, exc)

    def settle(self, exc):
        """Loop, the client is handling the loss: the reason it ended."""
        if self._reason is None:
            self._reason = loss_exception(exc, self._dest)
        return self._reason

    def close(self):
        """Loop, before the socket is closed (every way a connection ends):
        stop, close in order unless aborted, and queue connectionLost."""
        if self.ended:
            return
        self.ended = True
        self.made = False
        if os.getpid() != self._pid:  # a forked child: the parent's protocol is not ours
            return
        self._io.close()
        dropped = self.transport.connection_lost()
        reason = self._reason
        if reason is None:  # not a loss the client handled: close() or user code raised
            client = self._client
            if client._halted is not None:
                reason = client._halted
            elif dropped:
                reason = ConnectionAborted(
                    f"{client.name} was closed with {dropped} bytes unsent", self._dest)
            else:
                reason = ConnectionDone(f"{client.name} was closed", self._dest)
            self._reason = reason
        if not isinstance(reason, ConnectionAborted):
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._user.run(self.protocol.connectionLost, (as_failure(reason),), self._lost_done)

    def _lost_done(self, result, exc):
        if exc is not None:
            self._client._user_failed(f"{type(self.protocol).__name__}.connectionLost()", exc)

    # The idle watch's other methods: a protocol's connection is never leased.
    def leased(self):
        pass

    released = rearm = leased


class ProtocolMode:
    """Mixin for :class:`~rcf_sync.ReconnectingClient`: the protocol side."""

    _proto_mode = False  # immutable once set in __init__

    @property
    def protocol(self):
        """The live protocol (its ``connectionMade`` has returned and its
        connection has not ended), or ``None``. Read it from anywhere; call
        into it with :meth:`call_protocol`."""
        with self._lock:
            driver = self._driver_locked()
            return driver.protocol if driver is not None and driver.made else None

    def wait_protocol(self, timeout=None, fail_after_failures=None):
        """Block until a protocol is live and return it (as :attr:`protocol`).

        Waits and raises as :meth:`wait_connected` does: ``ConnectTimeout``,
        ``GaveUp`` (also after ``fail_after_failures`` failed attempts),
        ``ClientClosed``; ``ProtocolModeError`` if the factory has no protocol."""
        if not self._proto_mode:
            raise ProtocolModeError(
                f"{self.name}: the factory has no protocol (set factory.protocol or override "
                "buildProtocol); use wait_connected() and connection()", self.destination)
        return self._wait_live(self._live_protocol_locked, timeout, fail_after_failures)

    def call_protocol(self, fn, *args, timeout=None, **kwargs):
        """Run ``fn(protocol, *args, **kwargs)`` in the protocol's own order
        (after the callbacks already queued, never concurrently with them)
        and return its result or raise its exception. Waits for a live
        protocol first; ``timeout`` bounds the whole call
        (``ConnectTimeout``). ``ConnectionLost`` if the connection ends
        before ``fn`` runs. Blocks the caller; do not call it from the
        protocol's own callbacks (it would wait for itself)."""
        from ._handle import _deadline, _remaining

        deadline = _deadline(timeout)
        self.wait_protocol(timeout=timeout)
        with self._lock:
            driver = self._driver_locked()
        if driver is None:
            raise self._protocol_gone(None)
        done = self._backend.event()
        outcome = []

        def run():
            if driver.ended:
                raise self._protocol_gone(driver)
            return fn(driver.protocol, *args, **kwargs)

        call = self._user.run(run, (), lambda result, exc: (outcome.append((result, exc)),
                                                            done.set()))
        remaining = _remaining(deadline)
        if not done.wait(None if remaining is None else max(0.0, remaining)):
            self._user.abandon(call)
            raise self._timed_out()
        result, exc = outcome[0]
        if exc is not None:
            raise exc
        return result

    # -- the handle methods, refused -------------------------------------------------

    def _refuse_socket(self, what):
        if self._proto_mode:
            raise ProtocolModeError(
                f"{self.name} runs a protocol ({type(self.factory).__name__} builds one): its "
                f"socket belongs to the protocol, so {what} is not available; use "
                "client.protocol, client.wait_protocol() or client.call_protocol()",
                self.destination)

    def connection(self, timeout=None):
        self._refuse_socket("connection()")
        return super().connection(timeout)

    def call(self, fn, *args, **kwargs):
        self._refuse_socket("call()")
        return super().call(fn, *args, **kwargs)

    # -- loop side -------------------------------------------------------------------

    def _steps(self, pending):
        sock = yield from super()._steps(pending)
        if self._proto_mode:
            try:
                addr = address_of(sock.getpeername(), sock.family)
                pending.protocol = yield UserCall(self.factory.buildProtocol, addr)
            except BaseException as exc:
                if isinstance(exc, Exception):  # not a cancellation
                    # As Twisted: logged, closed in order, a failed attempt.
                    log.error("%s: %s.buildProtocol() raised %s: %s; the attempt failed",
                              self.name, type(self.factory).__name__, type(exc).__name__, exc,
                              exc_info=(type(exc), exc, exc.__traceback__))
                _close_in_order(sock)
                raise
        return sock

    def _protocol_built(self, pending, sock):
        """Loop: the attempt made a connection and buildProtocol returned."""
        if pending.protocol is not None:
            self._factory_calls([("resetDelay", ())], lambda _: self._connected(pending, sock))
            return
        # Twisted: loseConnection() on the new transport, closed in order on
        # the next turn without reading, then clientConnectionLost with
        # ConnectionDone and doStop; the back-off goes on (no resetDelay).
        _close_in_order(sock)
        reason = ConnectionDone(
            f"connection to {self.destination} closed: "
            f"{type(self.factory).__name__}.buildProtocol() returned None", self.destination)
        with self._lock:
            self._stats.connects += 1
            self._stats.losses += 1
            self._stats.last_error = reason
            self._failures += 1
            closed = self._closed
        if closed:
            self._factory_calls([("doStop", ())])
            return

        def after(_):
            self._after_factory(Event.FAILED)
            if self._on_disconnect is not None:
                self._user_callback("on_disconnect()", self._on_disconnect, reason)

        self._factory_calls([("clientConnectionLost", (self._connector, as_failure(reason))),
                             ("doStop", ())], after)

    def _drive(self, conn, protocol):
        """Loop: ``conn`` is installed; start driving ``protocol`` over it."""
        driver = Driver(self, conn, protocol)
        conn.watch = driver
        driver.start()

    def _settle_reason(self, conn, exc):
        """Loop, ``conn`` was lost with ``exc``: the reason as an exception."""
        driver = conn.watch
        if isinstance(driver, Driver):
            return driver.settle(exc)
        return self._loss_reason(exc)

    def _lose_protocol_connection(self):
        """``connector.disconnect()`` in protocol mode: the transport's
        ``loseConnection()`` (True if there was a protocol to tell)."""
        with self._lock:
            driver = self._driver_locked()
        if driver is None:
            return False
        driver.transport.loseConnection()
        return True

    # -- helpers -----------------------------------------------------------------------

    def _driver_locked(self):
        conn = self._conn
        if conn is None or conn.owner is Owner.DEAD:
            return None
        driver = conn.watch
        return driver if isinstance(driver, Driver) and not driver.ended else None

    def _live_protocol_locked(self):
        driver = self._driver_locked()
        return driver.protocol if driver is not None and driver.made else None

    def _protocol_gone(self, driver):
        return ConnectionLost(f"the connection to {self.destination} ended before the call ran",
                              self.destination, driver and driver._reason)


def _close_in_order(sock):
    """Close ``sock`` as Twisted's orderly close does: shutdown, then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
