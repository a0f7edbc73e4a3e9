"""Connectors: how a client makes a connection, in Twisted's IConnector shape.

A connector is a value describing a destination (``TCPConnector``,
``UNIXConnector``, or a plain socket factory wrapped by
:class:`SocketFactoryConnector`). Once a client adopts it, its
``connect()`` / ``stopConnecting()`` / ``disconnect()`` drive that client,
as a Twisted connector drives its transport.

Theory of operation: a connection attempt is written once, as a generator
(``_attempt``) that does the non-blocking socket work itself and *yields*
what it needs to wait for, as the step objects of ``_steps`` (name lookup,
readiness, TLS, user code). Each backend interprets the steps its own way
(the thread backend from its selector loop, the gevent backend from a
greenlet), so the address walk, socket options and clean-up on failure exist
in one place only.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl
from collections.abc import Generator, Iterable, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    NamedTuple,
    Union,
)

from ._address import UNIXAddress
from ._connector_args import (
    _check_host,
    _check_options,
    _check_ssl,
    _check_timeout,
    _is_integer,
    _numeric_addresses,
)
from ._errors import NotConnectingError
from ._steps import TLS, Resolve, Step, UserCall, Writable

if TYPE_CHECKING:
    from typing_extensions import TypeAlias

__all__ = [
    "Connector",
    "TCPConnector",
    "UNIXConnector",
    "SocketFactoryConnector",
    "TCPAddress",
    "UNIXAddress",
    "as_connector",
]



class TCPAddress(NamedTuple):
    """Where a TCP connector connects: ``('TCP', host, port)``."""

    type: str
    host: str
    port: int


#: A connection attempt: yields steps, returns the connected socket.
Attempt: TypeAlias = Generator[Step, Any, socket.socket]
#: getaddrinfo's answer less the canonical name: (family, type, proto, sockaddr).
_Address: TypeAlias = tuple[int, int, int, Any]

#: Connect timeout used when none is given, as Twisted's ``connectTCP``.
DEFAULT_TIMEOUT = 30.0

# Made non-blocking by socket() itself where the platform can (a system call
# less per attempt); Python then treats it as non-blocking too.
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_INET_FAMILIES = tuple(getattr(socket, name) for name in ("AF_INET", "AF_INET6") if hasattr(socket, name))
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)}


_socket_class: list[type[socket.socket]] = []


def _stdlib_socket() -> type[socket.socket]:
    # The attempt steps do their own non-blocking I/O and waiting; a gevent
    # socket (under monkey-patching) would add its own layer to every call.
    # Backends turn the result into what their callers need ("adopt").
    if not _socket_class:
        from ._backends._base import original

        _socket_class.append(original("socket", "socket"))
    return _socket_class[0]


class Connector:
    """Base of the built-in connectors: Twisted's ``IConnector`` shape.

    ``connect()``, ``stopConnecting()`` and ``disconnect()`` act on the client
    that adopted the connector (a connector serves one client or pool); they
    are thread-safe and never block.

    The built-in connectors keep their fields in slots (there is one per
    client). A subclass without ``__slots__`` has an attribute dict as
    usual, and falls back on the class defaults below for the two fields it
    may leave unset.
    """

    __slots__ = ("__weakref__",)

    timeout: float | None = DEFAULT_TIMEOUT
    # The client or pool that adopted this connector (core: typed as a
    # protocol once the client is annotated).
    _owner: Any = None

    # -- IConnector -----------------------------------------------------------

    def connect(self) -> None:
        """Start a connection attempt now (what a scheduled retry calls).
        ``RuntimeError`` when no client uses this connector."""
        self._require_owner()._connector_connect(self)

    def stopConnecting(self) -> None:
        """Abandon the attempt in progress; :class:`~rcf_sync.NotConnectingError`
        when there is none."""
        owner = self._owner
        if owner is None or not owner._connector_stop_connecting(self):
            raise NotConnectingError(
                f"not connecting to {self.describe()}", destination=self.describe()
            )

    def disconnect(self) -> None:
        """Drop the current connection (the factory hears of the loss), or
        abandon the attempt in progress."""
        owner = self._owner
        if owner is not None:
            owner._connector_disconnect(self)

    def getDestination(self) -> object:
        """The address this connector connects to."""
        raise NotImplementedError

    # -- used by clients ------------------------------------------------------

    def describe(self) -> str:
        """A short text naming the destination, for messages and logs."""
        raise NotImplementedError

    def _adopt(self, owner: object) -> None:
        if self._owner is not None and self._owner is not owner:
            raise ValueError(f"{self!r} already serves {self._owner!r}; give each client its own connector")
        self._owner = owner

    def _release(self, owner: object) -> None:
        if self._owner is owner:
            self._owner = None

    def _require_owner(self) -> Any:
        owner = self._owner
        if owner is None:
            raise RuntimeError(f"{self!r} is not used by any client")
        return owner

    def _attempt(self) -> Attempt:
        """Generator of one connection attempt; returns the connected socket."""
        raise NotImplementedError

    def _direct_address(self) -> _Address | None:
        """An address to connect to without :meth:`_attempt`, or None (see
        :class:`_SocketConnector`)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class _SocketConnector(Connector):
    """Shared by TCP and Unix: option setting, the address walk, TLS."""

    __slots__ = ("_owner", "timeout", "_ssl_context", "_server_hostname", "_socket_options")

    _ssl_context: ssl.SSLContext | None
    _server_hostname: str | None
    _socket_options: tuple[tuple[Any, ...], ...]

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The ``ssl.SSLContext`` used for TLS, or ``None``."""
        return self._ssl_context

    @property
    def server_hostname(self) -> str | None:
        """The name the server's certificate must match (TCP default: ``host``)."""
        return self._server_hostname

    def _addresses(self) -> Generator[Step, Any, list[_Address]]:
        """Generator step(s) producing a list of getaddrinfo-style tuples."""
        raise NotImplementedError

    def _prepare(self, sock: socket.socket, family: int) -> None:
        """Before the connect: the caller's own socket options."""
        for level, option, value in self._socket_options:
            sock.setsockopt(level, option, value)

    def _established(self, sock: socket.socket, family: int) -> None:
        """Once connected (before TLS): our options for the connection."""

    def _direct_address(self) -> _Address | None:
        """The one address an attempt would try, when it is known without a
        lookup and the attempt has no step but the connect (no TLS, and our
        own address walk): a backend may then connect without the attempt
        generator, by :meth:`_start_connect` and :meth:`_check_connected`."""
        if self._ssl_context is not None or type(self)._attempt is not _SocketConnector._attempt:
            return None
        addresses = self._known_addresses()
        return addresses[0] if addresses is not None and len(addresses) == 1 else None

    def _known_addresses(self) -> Sequence[_Address] | None:
        """The addresses, when known without a lookup; else None."""
        return None

    def _start_connect(self, sock: socket.socket, family: int, sockaddr: Any) -> int:
        """Begin a non-blocking connect of the new ``sock``: ``connect_ex``'s
        error number (one of ``_IN_PROGRESS``: wait until it is writable)."""
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        self._prepare(sock, family)
        return sock.connect_ex(sockaddr)

    def _open_direct(self, address: _Address) -> tuple[socket.socket, int]:
        """For a backend's connect without the attempt generator (see
        :meth:`_direct_address`): a new non-blocking socket with its connect
        to ``address`` begun, and ``connect_ex``'s error number. The socket
        is closed if beginning fails."""
        family, type_, proto, sockaddr = address
        sock = _stdlib_socket()(family, type_ | _SOCK_NONBLOCK, proto)
        try:
            return sock, self._start_connect(sock, family, sockaddr)
        except BaseException:
            sock.close()
            raise

    def _check_connected(self, sock: socket.socket, family: int, err: int) -> None:
        """Once the connect ended with ``err`` (0, or ``SO_ERROR``): raise
        ``OSError`` if it failed, else set our options on the connection."""
        if err:
            raise OSError(err, f"{os.strerror(err)} ({self.describe()})")
        self._established(sock, family)

    def _attempt(self) -> Attempt:
        addresses = yield from self._addresses()
        if not addresses:
            raise OSError(f"no addresses for {self.describe()}")
        last_error: OSError | None = None
        socket_class = _stdlib_socket()
        for family, type_, proto, sockaddr in addresses:
            sock = socket_class(family, type_ | _SOCK_NONBLOCK, proto)
            try:
                err = self._start_connect(sock, family, sockaddr)
                if err in _IN_PROGRESS:
                    yield Writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._check_connected(sock, family, err)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            if self._ssl_context is not None:
                try:
                    sock = yield TLS(sock, self)
                except BaseException:
                    sock.close()
                    raise
            return sock
        assert last_error is not None  # one per address tried, and there was one
        raise last_error


#: Keepalive timings left to the system (shared: most connectors have them).
_SYSTEM_KEEPALIVE: tuple[int | None, int | None, int | None] = (None, None, None)


class TCPConnector(_SocketConnector):
    """Connect over TCP to ``host:port``.

    ``timeout``: seconds allowed for one attempt (connect and TLS handshake;
    default 30, ``None`` for none). ``source_address``: ``(host, port)`` to
    bind first. ``socket_options``: ``(level, option, value)`` triples set
    before connecting. ``ssl_context``: an ``ssl.SSLContext``; certificates and
    host names are verified as that context says (``ssl.create_default_context()``
    verifies both), with ``server_hostname`` defaulting to ``host``.
    ``keepalive``: TCP keepalive on the connection (default on), with
    ``keepalive_idle``, ``keepalive_interval`` (seconds) and
    ``keepalive_count`` (probes) where the platform supports them (Linux:
    all three; macOS: idle; others: the system defaults).

    Raises ``ValueError`` for a bad host, port, timeout or option.
    """

    __slots__ = ("host", "port", "source_address", "keepalive", "_keepalive", "_numeric")

    def __init__(self, host: str, port: int, *, timeout: float | None = DEFAULT_TIMEOUT,
                 source_address: tuple[str, int] | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 socket_options: Iterable[tuple[int, int, int | bytes]] = (),
                 keepalive: bool = True, keepalive_idle: int | None = None,
                 keepalive_interval: int | None = None,
                 keepalive_count: int | None = None) -> None:
        _check_host(host)
        if not _is_integer(port) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
        if source_address is not None:
            if not (isinstance(source_address, tuple) and len(source_address) == 2):
                raise ValueError(f"source_address must be (host, port), got {source_address!r}")
        settings = (keepalive_idle, keepalive_interval, keepalive_count)
        if settings != _SYSTEM_KEEPALIVE:
            for name, value in zip(("keepalive_idle", "keepalive_interval", "keepalive_count"),
                                   settings):
                if value is not None and (not _is_integer(value) or value < 1):
                    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self._owner = None
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout = _check_timeout(timeout)
        self.source_address = source_address
        self._server_hostname = _check_ssl(ssl_context, server_hostname, self.host)
        self._ssl_context = ssl_context
        self._socket_options = _check_options(socket_options)
        self.keepalive = bool(keepalive)
        self._keepalive = _SYSTEM_KEEPALIVE if settings == _SYSTEM_KEEPALIVE else settings
        # The addresses, when host is an IP literal (empty: it is not).
        self._numeric: Sequence[_Address] | None = None

    def getDestination(self) -> TCPAddress:
        """``TCPAddress("TCP", host, port)``."""
        return TCPAddress("TCP", self.host, self.port)

    def describe(self) -> str:
        """``host:port`` (``[v6]:port`` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _known_addresses(self) -> Sequence[_Address] | None:
        numeric = self._numeric
        if numeric is None:
            numeric = self._numeric = _numeric_addresses(self.host, self.port)
        return numeric or None

    def _addresses(self) -> Generator[Step, Any, list[_Address]]:
        numeric = self._known_addresses()
        if numeric:
            return list(numeric)
        infos = yield Resolve(self.host, self.port)
        return [(af, st, proto, sa) for af, st, proto, _, sa in infos]

    def _established(self, sock: socket.socket, family: int) -> None:
        # After the connect, not before: a refused attempt costs no system
        # call for options it would never use.
        if family in _INET_FAMILIES:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for value, name in zip(self._keepalive, ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")):
                    if value is not None and hasattr(socket, name):
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
                if self._keepalive[0] is not None and not hasattr(socket, "TCP_KEEPIDLE") \
                        and hasattr(socket, "TCP_KEEPALIVE"):
                    # macOS names the idle time TCP_KEEPALIVE.
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPALIVE"), self._keepalive[0])  # noqa: B009 (macOS only)

    def _prepare(self, sock: socket.socket, family: int) -> None:
        super()._prepare(sock, family)
        if self.source_address is not None:
            sock.bind(self.source_address)


class UNIXConnector(_SocketConnector):
    """Connect to the Unix stream socket at ``path``.

    ``timeout``, ``socket_options``, ``ssl_context`` and ``server_hostname``
    as for :class:`TCPConnector` (TLS over a Unix socket needs an explicit
    ``server_hostname`` when the context checks host names).
    """

    __slots__ = ("path",)

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *,
                 timeout: float | None = DEFAULT_TIMEOUT, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None,
                 socket_options: Iterable[tuple[int, int, int | bytes]] = ()) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError("Unix sockets are not available on this platform")
        if not isinstance(path, (str, bytes, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"path must be a non-empty path, got {path!r}")
        self._owner = None
        self.path = os.fspath(path)
        self.timeout = _check_timeout(timeout)
        self._ssl_context = ssl_context
        self._server_hostname = _check_ssl(ssl_context, server_hostname, None)
        self._socket_options = _check_options(socket_options)

    def getDestination(self) -> UNIXAddress:
        """``UNIXAddress(path)`` (Twisted's shape: ``name`` is the path as bytes)."""
        return UNIXAddress(self.path)

    def describe(self) -> str:
        """The socket's path."""
        return os.fsdecode(self.path)

    def _known_addresses(self) -> Sequence[_Address]:
        return ((socket.AF_UNIX, socket.SOCK_STREAM, 0, self.path),)

    def _addresses(self) -> Generator[Step, Any, list[_Address]]:
        return list(self._known_addresses())
        yield  # a generator with no waiting steps


class SocketFactoryConnector(Connector):
    """Wrap a zero-argument callable that returns a connected socket.

    The callable runs off the background loop (it may block); it must return
    a ``socket.socket`` (TLS sockets included), otherwise the attempt fails
    with ``TypeError``. ``timeout`` bounds how long the client waits for it.
    """

    __slots__ = ("_owner", "timeout", "factory", "name")

    def __init__(self, factory: Callable[[], socket.socket], *, name: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        if not callable(factory):
            raise ValueError(f"a socket factory must be callable, got {factory!r}")
        self._owner = None
        self.factory = factory
        self.name = name or _callable_name(factory)
        self.timeout = _check_timeout(timeout)

    def getDestination(self) -> str:
        """The factory's name (given, or its qualified name)."""
        return self.name

    def describe(self) -> str:
        """The factory's name."""
        return self.name

    def _attempt(self) -> Attempt:
        sock = yield UserCall(self.factory, threaded=True)
        if not isinstance(sock, socket.socket):
            if hasattr(sock, "close"):
                try:
                    sock.close()
                except Exception:
                    pass
            raise TypeError(f"socket factory {self.name} returned {type(sock).__name__}, not a socket")
        return sock


def _callable_name(fn: Callable[..., object]) -> str:
    """A name for a callable that never shows its arguments (a partial's
    bound arguments may hold credentials)."""
    inner: Callable[..., object] = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    name: str = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return name if inner is fn else f"partial({name})"


#: What ``ReconnectingClient`` accepts as a destination.
Target: TypeAlias = Union[
    "Connector", tuple[str, int], str, "os.PathLike[str]", Callable[[], socket.socket]
]


def as_connector(target: Target) -> Connector:
    """Turn what ``ReconnectingClient`` accepts into a :class:`Connector`:
    a connector, ``(host, port)``, a Unix path (``str``/path-like) or a
    zero-argument callable. ``ValueError`` for anything else."""
    if isinstance(target, Connector):
        return target
    if isinstance(target, tuple):
        if len(target) != 2:
            raise ValueError(f"a TCP destination must be (host, port), got {target!r}")
        return TCPConnector(*target)
    if isinstance(target, (str, os.PathLike)):
        return UNIXConnector(target)
    if callable(target):
        return SocketFactoryConnector(target)
    raise ValueError(
        f"cannot connect to {target!r}: give (host, port), a Unix socket path, "
        "a Connector or a callable returning a socket"
    )
