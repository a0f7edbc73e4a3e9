"""The exceptions rcf_sync raises.

Every error is an :class:`RCFError` and also the standard-library type a
caller already catches (``ConnectionError``, ``TimeoutError``), carries the
``destination`` it concerns and the ``reason`` (usually the underlying
exception), and pickles with both.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = [
    "RCFError",
    "ConnectionLost",
    "ConnectionDone",
    "ConnectionAborted",
    "ConnectTimeout",
    "GaveUp",
    "ProtocolModeError",
    "ClientClosed",
    "NotConnectingError",
    "AlreadyCalled",
    "AlreadyCancelled",
]


class RCFError(Exception):
    """Root of every rcf_sync error.

    ``destination`` names what the error concerns (``"127.0.0.1:8080"``, a
    Unix path, a client's name) and ``reason`` holds the cause, when there is
    one. The message always names both.
    """

    def __init__(
        self, message: str = "", destination: str | None = None, reason: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.destination = destination
        self.reason = reason

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.destination, self.reason))


class ConnectionLost(RCFError, ConnectionError):
    """The connection in use died; the request on it may or may not have
    reached the peer. The client is already reconnecting."""


class ConnectionDone(RCFError, ConnectionError):
    """The connection was closed cleanly: by our ``loseConnection()`` or by
    the peer's orderly shutdown (Twisted's
    ``twisted.internet.error.ConnectionDone``).

    Deliberately not a :class:`ConnectionLost`: ``except ConnectionLost``
    does not catch an orderly close, and this error is never used for a
    reset or an abort. It is a ``ConnectionError`` so that code treating any
    end of the connection alike can catch both."""


class ConnectionAborted(ConnectionLost):
    """The connection was dropped at once by ``abortConnection()``, unsent
    data discarded (Twisted's ``twisted.internet.error.ConnectionAborted``,
    also a ``ConnectionLost`` there)."""


class ConnectTimeout(RCFError, TimeoutError):
    """A wait for a connection ran out of time (a caller's ``timeout=`` or a
    connect attempt's own timeout)."""


class GaveUp(RCFError):
    """The client stopped trying (``maxRetries``, ``maxElapsed``,
    ``fail_after_failures`` or ``stop_trying()``), so no connection will come."""


class ProtocolModeError(RCFError, RuntimeError):
    """A handle method that uses the socket was called while a protocol owns
    it (the factory builds protocols), or a protocol method while none
    does. The message names what to use instead."""


class ClientClosed(RCFError):
    """The client was closed; it will never connect again."""


class NotConnectingError(RCFError, RuntimeError):
    """``stopConnecting()`` was called while no connection attempt was in
    progress (Twisted's ``twisted.internet.error.NotConnectingError``)."""


class AlreadyCalled(RCFError, ValueError):
    """A delayed call that already ran was cancelled or rescheduled."""


class AlreadyCancelled(RCFError, ValueError):
    """A delayed call that was already cancelled was cancelled or
    rescheduled."""


def _timeout_compatible(exc: BaseException) -> BaseException:
    """``exc``, or for a ``socket.timeout`` that is not a ``TimeoutError``
    (Python 3.9) a ``TimeoutError`` with the same message chained to it, so
    that a read timeout is reported as one on every supported Python."""
    if isinstance(exc, socket.timeout) and not isinstance(exc, TimeoutError):
        timeout = TimeoutError(*exc.args)
        timeout.__cause__ = exc
        return timeout
    return exc
