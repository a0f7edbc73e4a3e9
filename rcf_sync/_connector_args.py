"""What a connector is given, checked; and the numeric address lookup.

Each check raises ``ValueError`` naming the argument and the value given.
"""

from __future__ import annotations

import _socket
import functools
import math
import re
import socket
import ssl
from typing import TYPE_CHECKING, Any

from ._timeouts import is_integer as _is_integer
from ._timeouts import is_real

if TYPE_CHECKING:
    from typing_extensions import TypeAlias

__all__ = ["_is_integer", "_numeric_addresses", "_check_timeout", "_check_ssl", "_check_host",
           "_check_options"]

#: getaddrinfo's answer less the canonical name: (family, type, proto, sockaddr).
_Address: TypeAlias = tuple[int, int, int, Any]


@functools.lru_cache(maxsize=1024)
def _numeric_addresses(host: str, port: int) -> tuple[_Address, ...]:
    """The addresses of an IP literal (empty when ``host`` is a name), once
    per process: a numeric lookup never blocks, so it asks the C library
    directly (``socket.getaddrinfo`` may be gevent's, which uses threads),
    with the host already encoded (``str`` hosts go through the IDNA codec,
    the dearest part of an attempt to a thousand new clients)."""
    try:
        encoded = host.encode("ascii")
    except UnicodeEncodeError:
        return ()  # not an IP literal
    try:
        infos = _socket.getaddrinfo(encoded, port, 0, socket.SOCK_STREAM, 0,
                                    socket.AI_NUMERICHOST)
    except socket.gaierror:
        return ()
    return tuple((af, st, proto, sa) for af, st, proto, _, sa in infos)


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not is_real(timeout):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    seconds = float(timeout)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout!r}")
    return seconds


def _check_ssl(
    ssl_context: ssl.SSLContext | None, server_hostname: str | None, default_hostname: str | None
) -> str | None:
    if ssl_context is None:
        if server_hostname is not None:
            raise ValueError("server_hostname given without an ssl_context")
        return None
    if not isinstance(ssl_context, ssl.SSLContext):
        raise ValueError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
    if server_hostname is None:
        server_hostname = default_hostname
    return server_hostname


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _check_host(host: object) -> None:
    """``ValueError`` unless ``host`` is an IP address or a DNS name."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty host name or address, got {host!r}")
    if not _valid_host(host):
        raise ValueError(
            f"host must be an IP address or a DNS name (labels of letters, digits and "
            f"hyphens, at most 253 characters), got {host!r}"
        )


@functools.lru_cache(maxsize=1024)
def _valid_host(host: str) -> bool:
    # Once per host and process: a thousand clients of one server ask alike.
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    for family in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        if family is None:
            continue
        try:
            socket.inet_pton(family, bare.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    name = bare[:-1] if bare.endswith(".") else bare
    return len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


def _check_options(socket_options: Any) -> tuple[tuple[Any, ...], ...]:
    if socket_options == ():
        return ()  # the default
    options = tuple(tuple(opt) for opt in socket_options)
    for opt in options:
        if len(opt) != 3:
            raise ValueError(f"socket_options entries must be (level, option, value), got {opt!r}")
    return options
