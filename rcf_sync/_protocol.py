"""Protocols in Twisted's ``IProtocol`` shape, and the transport they write to.

:class:`Protocol` is the base class an application subclasses (as
``twisted.internet.protocol.Protocol``): the client calls
``makeConnection(transport)`` once connected, ``dataReceived(data)`` for
every chunk read and ``connectionLost(reason)`` once at the end.

:class:`Transport` is what a protocol writes to. It does no I/O itself:

* the protocol (or any thread or greenlet) calls ``write()`` and friends,
  which only append to a :class:`_WriteBuffer` under a lock, never block and
  ask the *sender* to flush by calling ``sender.wake()``;
* the sender (the client's background) takes bytes from ``transport.buffer``
  with ``take(n)``, sends them, reports ``mark_sent(n)`` and keeps at it
  until ``mark_sent`` says nothing is left; ``close_if_flushed()`` tells it
  when a ``loseConnection()`` may now close the socket;
* ``abortConnection()`` drops what is buffered and calls ``sender.abort()``;
* when the connection ends, the sender calls ``connection_lost()``: later
  writes are dropped, as Twisted drops writes to a closed transport.

``wake()`` is called only when the buffer goes from empty to non-empty (and
for ``loseConnection()``), and ``mark_sent`` reports the remaining length
under the same lock as ``write`` appends, so no write can go unnoticed.
``wake()`` and ``abort()`` run in the caller's thread or greenlet, never
under a lock of ours: they must not block (set a flag, poke a wake-up
socket, schedule on the loop).
"""

from __future__ import annotations

import _thread
import collections
import sys
from collections.abc import Iterable
from typing import Any, Union
from typing import Protocol as _Shape

from ._errors import ConnectionDone
from ._failure import Failure

_BytesLike = Union[bytes, bytearray, memoryview]


class _Sender(_Shape):
    """What a :class:`Transport` asks to flush or abort (see above)."""

    def wake(self) -> None: ...

    def abort(self) -> None: ...

__all__ = ["Protocol", "Transport", "connectionDone"]


def _real_lock() -> _thread.LockType:
    """A lock that excludes native threads even under gevent's
    monkey-patching. Safe for greenlets too: it is only held for short
    sections that never block or switch."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        lock: _thread.LockType = monkey.get_original("_thread", "allocate_lock")()
        return lock
    return _thread.allocate_lock()


# -- protocols -------------------------------------------------------------------


class BaseProtocol:
    """The part of Twisted's ``BaseProtocol`` a client uses: ``connected``,
    ``transport``, :meth:`makeConnection` and :meth:`connectionMade`."""

    connected: int = 0
    #: The :class:`Transport` (or any object of Twisted's ``ITransport``
    #: shape) once connected.
    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        """Attach ``transport``: set ``connected`` to 1 and ``transport``,
        then call :meth:`connectionMade`. Called by the client, once."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """Called once the connection is up; send a greeting or subscribe
        here. Does nothing by default."""


#: The reason Twisted passes by default for a clean close.
connectionDone = Failure(ConnectionDone("Connection was closed cleanly."))


class Protocol(BaseProtocol):
    """Base class for stream protocols, as Twisted's ``Protocol``.

    Override :meth:`dataReceived` to handle bytes as they arrive (in chunks
    of any size: buffer partial messages yourself) and :meth:`connectionLost`
    to hear of the end. Write with ``self.transport.write(data)``. The
    ``factory`` attribute is set by ``ReconnectingClientFactory.buildProtocol``.
    As in Twisted, ``connected`` stays 1 after ``connectionLost``.
    """

    #: The factory that built this protocol (set by ``buildProtocol``).
    factory: Any = None

    def logPrefix(self) -> str:
        """The class name, for log messages."""
        return self.__class__.__name__

    def dataReceived(self, data: bytes) -> None:
        """Called with each chunk of bytes received. Does nothing by default."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Called once when the connection ends, with a
        :class:`~rcf_sync.Failure` saying why (``ConnectionDone`` for a clean
        close). Does nothing by default."""


# -- the write side of a transport ----------------------------------------------


class _WriteBuffer:
    """Bytes waiting to be sent, in order: appended from any thread, taken by
    one sender. Pure (no I/O); every method is atomic under ``lock``.

    Theory of operation: chunks are kept as written (no copying on append);
    ``take`` coalesces small chunks at the front into one so a run of tiny
    writes goes out in one send, and never copies a chunk only to split it.
    After :meth:`close` everything is dropped and appends are refused.
    """

    def __init__(self, lock: _thread.LockType | None = None) -> None:
        self._lock = _real_lock() if lock is None else lock
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of _chunks[0] already sent
        self._length = 0  # bytes not yet sent
        self._closed = False

    def __len__(self) -> int:
        return self._length

    @property
    def empty(self) -> bool:
        """True when nothing is waiting to be sent."""
        return not self._length

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def append(self, data: _BytesLike) -> bool:
        """Queue ``data`` (bytes-like; copied unless ``bytes``). Returns True
        when the buffer was empty and now is not: the caller should wake the
        sender. Returns False (and drops ``data``) once closed."""
        return self.extend((data,))

    def extend(self, chunks: Iterable[_BytesLike]) -> bool:
        """Queue several chunks at once, in order; returns as :meth:`append`."""
        copied = [c if type(c) is bytes else bytes(c) for c in chunks]
        copied = [c for c in copied if c]
        with self._lock:
            if self._closed or not copied:
                return False
            was_empty = not self._length
            self._chunks.extend(copied)
            self._length += sum(map(len, copied))
            return was_empty

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the front, without removing them
        (``b""`` when empty). ``ValueError`` unless ``limit`` >= 1."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        with self._lock:
            if not self._length:
                return b""
            chunks = self._chunks
            first = chunks[0]
            start = self._offset
            if len(first) - start >= limit or len(chunks) == 1:
                return first[start:start + limit] if start or len(first) > limit else first
            parts = [first[start:] if start else first]
            size = len(parts[0])
            index = 1
            while index < len(chunks) and size + len(chunks[index]) <= limit:
                parts.append(chunks[index])
                size += len(chunks[index])
                index += 1
            if index > 1:
                for _ in range(index):
                    chunks.popleft()
                joined = b"".join(parts)
                chunks.appendleft(joined)
                self._offset = 0
                return joined
            return parts[0]

    def mark_sent(self, count: int) -> int:
        """Remove ``count`` bytes from the front (what a send reported);
        returns how many bytes remain. ``ValueError`` for a count below 0 or
        above :func:`len`. After :meth:`close` it returns 0."""
        with self._lock:
            if self._closed:
                return 0
            if not 0 <= count <= self._length:
                raise ValueError(f"count must be in 0..{self._length}, got {count!r}")
            self._length -= count
            chunks = self._chunks
            while count:
                available = len(chunks[0]) - self._offset
                if count >= available:
                    chunks.popleft()
                    self._offset = 0
                    count -= available
                else:
                    self._offset += count
                    count = 0
            return self._length

    def close(self) -> int:
        """Drop everything and refuse later appends; returns how many bytes
        were dropped."""
        with self._lock:
            return self._close_locked()

    def close_if_empty(self) -> bool:
        """Close (as :meth:`close`) only if nothing is waiting; returns
        whether it closed. Atomic against appends."""
        with self._lock:
            if self._length:
                return False
            self._close_locked()
            return True

    def _close_locked(self) -> int:
        dropped = self._length
        self._closed = True
        self._chunks.clear()
        self._offset = 0
        self._length = 0
        return dropped


class Transport:
    """What a protocol writes to: Twisted's ``ITransport`` shape
    (``write``, ``writeSequence``, ``loseConnection``, ``abortConnection``,
    ``getPeer``, ``getHost``, ``disconnecting``).

    Every method is thread-safe and never blocks: writes are buffered and a
    background ``sender`` sends them (see the module's description for the
    sender's side). ``peer`` and ``host`` are what :meth:`getPeer` and
    :meth:`getHost` return (``IPv4Address``, ``IPv6Address``, ``UNIXAddress``).

    Flags, as Twisted's: ``connected`` (True until the connection ended),
    ``disconnecting`` (set by :meth:`loseConnection`), ``disconnected``
    (True once it ended).
    """

    def __init__(
        self, sender: _Sender, peer: object = None, host: object = None, *,
        lock: _thread.LockType | None = None,
    ) -> None:
        self._sender = sender
        self._peer = peer
        self._host = host
        self._lock = _real_lock() if lock is None else lock
        self.buffer = _WriteBuffer()
        self.connected = True
        self.disconnected = False
        self.disconnecting = False
        self.aborting = False

    def __repr__(self) -> str:
        state = ("aborting" if self.aborting else "disconnecting" if self.disconnecting
                 else "connected" if self.connected else "disconnected")
        return f"<{type(self).__name__} to {self._peer!r} {state}, {len(self.buffer)} bytes buffered>"

    # -- ITransport ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` (``bytes``; ``TypeError`` otherwise) to be sent
        after what was written before. Returns at once. Dropped silently once
        the connection has ended or been aborted, as Twisted does; still sent
        after :meth:`loseConnection` until the buffer has been flushed."""
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if self.connected and self.buffer.append(data):
            self._sender.wake()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Queue every chunk of ``iovec`` in order, all at once; as :meth:`write`."""
        chunks = list(iovec)
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                raise TypeError("Data must be bytes")
        if self.connected and self.buffer.extend(chunks):
            self._sender.wake()

    def loseConnection(self) -> None:
        """Close the connection once everything written so far has been
        sent; the protocol then hears ``ConnectionDone``. Sets
        ``disconnecting``. Does nothing after the first call or once the
        connection has ended."""
        with self._lock:
            if not self.connected or self.disconnecting:
                return
            self.disconnecting = True
        self._sender.wake()

    def abortConnection(self) -> None:
        """Close the connection now, dropping anything not yet sent; the
        protocol then hears ``ConnectionAborted``. Does nothing after the
        first call or once the connection has ended."""
        with self._lock:
            if not self.connected or self.aborting:
                return
            self.aborting = True
        self.buffer.close()
        self._sender.abort()

    def getPeer(self) -> Any:
        """The address of the other end."""
        return self._peer

    def getHost(self) -> Any:
        """The address of this end."""
        return self._host

    # -- the sender's side --------------------------------------------------------

    def close_if_flushed(self) -> bool:
        """For the sender: True when a :meth:`loseConnection` is pending and
        everything has been sent, so the socket may be closed now; from then
        on writes are dropped."""
        return self.disconnecting and self.buffer.close_if_empty()

    def connection_lost(self) -> int:
        """For the sender: the connection has ended. Clears ``connected``,
        sets ``disconnected`` and drops what was still buffered; returns how
        many bytes were dropped."""
        with self._lock:
            self.connected = False
            self.disconnected = True
        return self.buffer.close()
