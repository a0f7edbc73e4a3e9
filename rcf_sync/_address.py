"""Socket addresses in Twisted's shape (``twisted.internet.address``).

``IPv4Address(type='TCP', host='127.0.0.1', port=8080)``,
``IPv6Address(type='TCP', host='::1', port=8080, flowInfo=0, scopeID=0)`` and
``UNIXAddress('/run/app.sock')``: immutable values with equality, hashing and
Twisted's ``repr``, so code written against Twisted's addresses (a factory's
``buildProtocol(addr)``, a transport's ``getPeer()``) reads the same
attributes. :func:`address_of` turns what ``socket.getpeername()`` /
``getsockname()`` return into one of them.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Union

__all__ = ["IPv4Address", "IPv6Address", "UNIXAddress", "address_of"]

_TYPES = ("TCP", "UDP")


class _Value:
    """Equality, hashing and a keyword ``repr`` from ``_fields``."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)  # the same type, checked above
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__,) + self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._key())


def _check_type(type_: str) -> str:
    if type_ not in _TYPES:
        raise ValueError(f"type must be 'TCP' or 'UDP', got {type_!r}")
    return type_


class IPv4Address(_Value):
    """The address of an IPv4 endpoint: ``type`` (``'TCP'`` or ``'UDP'``),
    ``host`` (dotted quad) and ``port``, as Twisted's."""

    __slots__ = ("type", "host", "port")
    _fields = __slots__
    type: str
    host: str
    port: int

    def __init__(self, type: str, host: str, port: int) -> None:
        object.__setattr__(self, "type", _check_type(type))
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)


class IPv6Address(_Value):
    """The address of an IPv6 endpoint: ``type``, ``host``, ``port``,
    ``flowInfo`` and ``scopeID`` (both default 0), as Twisted's."""

    __slots__ = ("type", "host", "port", "flowInfo", "scopeID")
    _fields = __slots__
    type: str
    host: str
    port: int
    flowInfo: int
    scopeID: int

    def __init__(self, type: str, host: str, port: int, flowInfo: int = 0, scopeID: int = 0) -> None:
        object.__setattr__(self, "type", _check_type(type))
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "flowInfo", flowInfo)
        object.__setattr__(self, "scopeID", scopeID)


class UNIXAddress(_Value):
    """The address of a Unix socket: ``name``, its path (``None`` for an
    unnamed socket).

    As with Twisted, ``name`` is stored as bytes (a ``str`` or path-like is
    encoded with the file-system encoding) and the ``repr`` shows it as text:
    ``UNIXAddress('/run/app.sock')``. Two addresses are equal when their
    names are (Twisted also compares the files on disk; we do not touch the
    file system)."""

    __slots__ = ("name",)
    _fields = __slots__
    name: bytes | None

    def __init__(self, name: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> None:
        encoded = None if name is None else os.fsencode(name)
        object.__setattr__(self, "name", encoded)

    def __repr__(self) -> str:
        shown = None if self.name is None else os.fsdecode(self.name)
        return f"UNIXAddress({shown!r})"


#: What :func:`address_of` returns.
Address = Union[IPv4Address, IPv6Address, UNIXAddress]


def address_of(sockaddr: Any, family: int) -> Address:
    """The Twisted-shaped address for ``sockaddr`` as returned by
    ``getpeername()`` / ``getsockname()`` on a socket of ``family``:
    :class:`IPv4Address`, :class:`IPv6Address` (for a scoped address the
    ``host`` ends in ``%interface``, as Twisted has it) or :class:`UNIXAddress`
    (an empty name, as for an unbound client socket, becomes ``None``).
    ``ValueError`` for another family."""
    if family == socket.AF_INET:
        host, port = sockaddr
        return IPv4Address("TCP", host, port)
    if family == getattr(socket, "AF_INET6", None):
        host, port, flow, scope = sockaddr
        if scope and "%" not in host:
            # Python leaves the interface out of a link-local host; Twisted
            # puts it back, and so do we.
            host = socket.getnameinfo(sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        return IPv6Address("TCP", host, port, flow, scope)
    if family == getattr(socket, "AF_UNIX", None):
        return UNIXAddress(sockaddr or None)
    raise ValueError(f"no address type for socket family {family!r}")
