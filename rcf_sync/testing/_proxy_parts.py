"""The pieces of ``FaultProxy`` (``_proxy``) its loop (``_proxy_loop``)
works on: argument checks, the two ways of closing a socket, the pipes and
connections, and a queued command."""

from __future__ import annotations

import collections
import ipaddress
import logging
import operator
import socket
import struct
import threading
from typing import Any, Callable

__all__: list[str] = []

log = logging.getLogger("rcf_sync.testing")

_RECV_SIZE = 65536
_BUFFER_LIMIT = 256 * 1024  # per direction, per connection
_ACCEPT_BATCH = 64  # connections accepted per readiness event
_DRAIN_LIMIT = 16  # recv calls spent discarding unread input before a FIN
_LINGER_RESET = struct.pack("ii", 1, 0)

_WAKE = object()
_LISTEN = object()

# States of a connection's upstream side.
_PENDING = "pending"  # not yet connecting (accepted while blackholed)
_CONNECTING = "connecting"
_CONNECTED = "connected"


def _loopback_host(host: object, owner: str = "FaultProxy") -> tuple[socket.AddressFamily, str]:
    """Return ``(family, literal)`` for a loopback listen host, else raise
    ``ValueError`` saying that ``owner`` listens on loopback only."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a string, got {host!r}")
    if host.lower() == "localhost":
        return socket.AF_INET, "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{owner} listens on loopback only; {host!r} is not a loopback "
            "address (use 127.0.0.1, ::1 or 'localhost')"
        ) from None
    if not addr.is_loopback:
        raise ValueError(
            f"{owner} listens on loopback only; {host!r} is not a loopback address"
        )
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return family, str(addr)


def _port(value: Any, what: str) -> int:
    try:
        port = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} must be in 0..65535, got {port!r}")
    return port


def _close_reset(sock: socket.socket) -> None:
    """Close ``sock`` abortively: the peer gets a RST (ECONNRESET)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _close_fin(sock: socket.socket) -> None:
    """Close ``sock`` in an orderly way: the peer reads end-of-file.

    Unread input is discarded first, because closing a socket that still has
    unread input makes the kernel send a RST instead of a FIN.
    """
    try:
        for _ in range(_DRAIN_LIMIT):
            if not sock.recv(_RECV_SIZE):
                break
    except OSError:  # includes BlockingIOError: nothing (more) to discard
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of a proxied connection: chunks waiting for delivery."""

    __slots__ = ("chunks", "buffered", "eof_in", "eof_out")

    def __init__(self) -> None:
        # Each chunk is [due time, data] (a list: _flush trims the data in place).
        self.chunks: collections.deque[list[Any]] = collections.deque()
        self.buffered = 0
        self.eof_in = False  # the source sent a FIN
        self.eof_out = False  # the FIN was passed on to the destination

    def head_due(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None


class _Conn:
    """A proxied connection: the accepted client socket and its upstream."""

    __slots__ = (
        "client", "upstream", "state", "addr_index", "budget",
        "to_up", "to_client", "masks", "closed",
    )

    def __init__(self, client: socket.socket, budget: int | None) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = _PENDING
        self.addr_index = 0
        self.budget = budget  # bytes left before the cut, or None
        self.to_up = _Pipe()
        self.to_client = _Pipe()
        self.masks: dict[socket.socket, int] = {}  # socket -> registered selector mask
        self.closed = False


class _Command:
    __slots__ = ("func", "args", "done", "result", "error")

    def __init__(self, func: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None
