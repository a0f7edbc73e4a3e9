"""The loop side of a protocol's connection: :class:`Driver`.

The driver reads with one-shot readiness (the thread backend's poller, or
libev watchers on the gevent hub) and non-blocking ``recv`` of up to 64 KiB,
and queues ``dataReceived`` for each chunk in the client's user-code queue,
behind ``makeConnection``: protocol callbacks run in order, never two at
once, never on the loop. It stops reading while 1 MiB handed to the
protocol is still unprocessed. It is the transport's sender: ``wake()`` (any
thread) posts a flush to the loop, which sends without blocking and asks for
writability while the socket buffer is full. The reason the connection
ended is settled once (:meth:`Driver.settle`, or :meth:`Driver.close` for a
close the client decided); then ``connectionLost`` is queued.

Ownership: every field of :class:`Driver` is the loop's, except ``_broken``
(written and read by the user-code queue) and the transport (thread-safe).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
from typing import Any, Callable

from ._address import address_of
from ._errors import ConnectionAborted, ConnectionDone, ConnectionLost
from ._failure import as_failure
from ._protocol import Transport
from ._reasons import loss_exception

__all__ = ["Driver", "peer_address"]

log = logging.getLogger("rcf_sync")

_CHUNK = 64 * 1024          # bytes per recv()
_SEND_MAX = 256 * 1024      # bytes per send()
_READS_PER_TURN = 16        # then let the other connections have the loop
_HIGH_WATER = 1024 * 1024   # unprocessed bytes at which reading pauses
_LOW_WATER = _HIGH_WATER // 4
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _ThreadIO:
    """Readiness on the thread backend's poller (loop thread only)."""

    def __init__(self, backend: Any, sock: Any, on_ready: Callable[[], None]) -> None:
        self._rt = backend._rt
        self._sock = sock
        self._on_ready = on_ready
        self._closed = False

    def want(self, read: bool, write: bool) -> None:
        from ._backends._runtime import READ, READ_WRITE, WRITE

        if self._closed or not (read or write):
            return
        kind = READ_WRITE if read and write else READ if read else WRITE
        try:
            self._rt.arm(self._sock, kind, self._fire)
        except (OSError, ValueError):  # closed under us: let the next recv say so
            self._rt.post(self._fire)

    def _fire(self) -> None:
        if not self._closed:
            self._on_ready()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._rt.forget(self._sock)


class _GeventIO:
    """Readiness from two libev watchers on the hub."""

    def __init__(self, backend: Any, sock: Any, on_ready: Callable[[], None]) -> None:
        loop = backend._hub.loop
        self._on_ready = on_ready
        self._watchers: tuple[Any, Any] | None = (loop.io(sock.fileno(), 1), loop.io(sock.fileno(), 2))

    def want(self, read: bool, write: bool) -> None:
        if self._watchers is None:
            return
        for watcher, on in zip(self._watchers, (read, write)):
            if on and not watcher.active:
                watcher.start(self._fire)
            elif not on and watcher.active:
                watcher.stop()

    def _fire(self) -> None:
        if self._watchers is not None:
            for watcher in self._watchers:
                watcher.stop()
            try:
                self._on_ready()
            except Exception:
                log.exception("unexpected error in rcf_sync's protocol driver")

    def close(self) -> None:
        watchers, self._watchers = self._watchers, None
        for watcher in watchers or ():
            watcher.stop()
            watcher.close()


def peer_address(sock: Any) -> Any:
    """The Twisted-shaped address of ``sock``'s peer (``None`` if it has
    none that Twisted would name)."""
    return _address(sock, "getpeername")


def _address(sock: Any, which: str) -> Any:
    try:
        return address_of(getattr(sock, which)(), sock.family)
    except (OSError, ValueError):
        return None


class Driver:
    """Drives one protocol over one connection; the transport's sender."""

    def __init__(self, client: Any, conn: Any, protocol: Any) -> None:
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
        self._reason: BaseException | None = None  # the exception that ended it, once settled
        self._queued = 0        # bytes queued for dataReceived, not yet processed
        self._paused = False
        self._broken = False    # a dataReceived raised: later chunks are dropped
        self._pid = os.getpid()
        io: type[_GeventIO] | type[_ThreadIO] = (
            _GeventIO if self._backend.name == "gevent" else _ThreadIO)
        self._io = io(self._backend, sock, self._ready)

    def __repr__(self) -> str:
        return f"<Driver of {self.protocol!r} over {self.transport!r}>"

    def start(self) -> None:
        """Loop: queue makeConnection and start reading."""
        self._user.run(self.protocol.makeConnection, (self.transport,), self._made)
        self._arm()

    # -- the transport's sender (any thread) ------------------------------------------

    def wake(self) -> None:
        self._backend.call_soon(self._flush)

    def abort(self) -> None:
        self._backend.call_soon(self._lose, ConnectionAborted(
            f"connection to {self._dest} aborted by abortConnection()", self._dest))

    # -- loop ---------------------------------------------------------------------

    def _made(self, result: Any, exc: BaseException | None) -> None:
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
            waiting = client._wake_all_locked() if self.made else []
        for event in waiting:  # wait_protocol() callers
            event.set()

    def _arm(self) -> None:
        if not self.ended:
            self._io.want(not self._paused, not self.transport.buffer.empty)

    def _ready(self) -> None:
        if self.ended:
            return
        if not self._paused and not self._read():
            return
        self._flush()

    def _read(self) -> bool:
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
            self._user.run(self._data, (data,), functools.partial(self._data_done, len(data)))
            if self._queued >= _HIGH_WATER:
                self._paused = True
                return True
        self._backend.call_soon(self._ready)  # more may be waiting (or decrypted)
        return True

    def _data(self, data: bytes) -> None:
        # User-code queue.
        if self._broken:
            return
        try:
            self.protocol.dataReceived(data)
        except BaseException:
            self._broken = True
            raise

    def _data_done(self, size: int, result: Any, exc: BaseException | None) -> None:
        self._queued -= size
        if exc is not None:
            self._client._user_failed(f"{type(self.protocol).__name__}.dataReceived()", exc)
            return
        if self._paused and self._queued <= _LOW_WATER:
            self._paused = False
            self._arm()

    def _flush(self) -> None:
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

    def _lose(self, exc: BaseException, raw: bool = False) -> None:
        """Loop: the connection ends with ``exc`` (told to the client)."""
        if self._reason is None and not self.ended:
            self._reason = exc if raw else loss_exception(exc, self._dest)
        self._client._mark_lost(self._conn, exc)

    def settle(self, exc: BaseException) -> BaseException:
        """Loop, the client is handling the loss: the reason it ended."""
        if self._reason is None:
            self._reason = loss_exception(exc, self._dest)
        return self._reason

    def close(self) -> None:
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

    def _lost_done(self, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self._client._user_failed(f"{type(self.protocol).__name__}.connectionLost()", exc)

    def abandon(self) -> None:
        """In a forked child: forget the parent's protocol without a word
        (no callback, nothing sent, nothing started here)."""
        self.ended = True
        self.made = False

    # The idle watch's other methods: a protocol's connection is never leased.
    def leased(self) -> None:
        pass

    def released(self, now: float = 0.0) -> None:
        pass

    rearm = leased
