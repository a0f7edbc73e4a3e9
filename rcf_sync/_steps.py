"""The vocabulary of a connection attempt, defined once.

A connection attempt (and a heartbeat) is a generator that does its own
non-blocking socket work and *yields* one of the step objects below when it
has to wait or to hand work elsewhere; the value (or exception) the step
produces is sent back into the generator. Each backend has one interpreter
for these steps (``_backends._attempt`` for the thread loop, the gevent
backend's greenlet), so the address walk, socket options, TLS and clean-up
exist once while each backend waits its own way.

Steps are immutable once made.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._connectors import _SocketConnector

__all__ = ["Step", "Resolve", "Readable", "Writable", "TLS", "UserCall", "Adopt"]


class Step:
    """Base of every step."""

    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"


class Resolve(Step):
    """Look ``host``/``port`` up (``getaddrinfo`` for stream sockets);
    produces the getaddrinfo list."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class Readable(Step):
    """Wait until ``sock`` is readable; produces ``None``."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Writable(Step):
    """Wait until ``sock`` is writable (a non-blocking connect finished);
    produces ``None``."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class TLS(Step):
    """Wrap the connected ``sock`` in ``connector``'s TLS context and
    complete the handshake; produces the TLS socket."""

    __slots__ = ("sock", "connector")

    def __init__(self, sock: socket.socket, connector: _SocketConnector) -> None:
        self.sock, self.connector = sock, connector


class UserCall(Step):
    """Run user code (a socket factory, ``on_connect``, a heartbeat) in its
    handle's user-code queue (``_callbacks``): in order with that handle's
    other callbacks, never concurrently with them, off the loop;
    produces its result. ``threaded``: the code may block its OS thread
    (a socket factory using the standard library's sockets), so a gevent
    backend without monkey-patching runs it in its thread pool; otherwise
    it gets our sockets and runs where those cooperate."""

    __slots__ = ("fn", "args", "threaded")

    def __init__(self, fn: Callable[..., Any], *args: Any, threaded: bool = False) -> None:
        self.fn, self.args, self.threaded = fn, args, threaded


class Adopt(Step):
    """Turn the connected ``sock`` into the socket callers will use
    (blocking; a gevent socket on that backend); produces it."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
