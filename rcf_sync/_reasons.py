"""Why a connection ended, in the words Twisted code expects.

The loop notes each loss as a plain exception (what ``stats.last_error``
shows); the factory is then told with a :class:`~rcf_sync.Failure` of one of
Twisted's kinds:

* ``ConnectionDone``: an orderly close, the peer's FIN (:class:`PeerClosed`)
  or our own (:class:`ClosedHere`: ``connector.disconnect()``, a protocol's
  ``loseConnection()``);
* ``ConnectionAborted``: ``abortConnection()``;
* ``ConnectionLost``: a reset, a timeout, any other ``OSError`` or a broken
  stream;
* for a failed attempt, the connect error itself.

``ConnectionDone`` is never used for a reset or an abort.
"""

from __future__ import annotations

import select
from typing import Any, Callable

from ._backends._base import original
from ._errors import ConnectionDone, ConnectionLost, RCFError
from ._failure import Failure, as_failure

__all__ = ["PeerClosed", "ClosedHere", "peer_closed", "loss_exception", "loss_failure"]


class PeerClosed(ConnectionResetError):
    """The peer closed its side in order (a FIN). A ``ConnectionResetError``
    as the client reported it before it told a FIN from an RST, so code
    catching that keeps working."""


class ClosedHere(ConnectionAbortedError):
    """We closed the connection in order (``connector.disconnect()``)."""


_poll: list[Callable[[], Any] | None] = []


def peer_closed(sock: Any, message: str = "the peer closed the connection") -> OSError:
    """Loop or lease holder, once ``sock`` is known to be closed by the
    peer: :class:`PeerClosed` for an orderly close (a FIN), else a
    ``ConnectionResetError`` (an RST or another socket error). Looks
    without reading (one ``poll()``), so it works through TLS too."""
    if not _poll:
        try:
            _poll.append(original("select", "poll"))
        except AttributeError:  # pragma: no cover - no poll() here
            _poll.append(None)
    try:
        fd = sock.fileno()
    except OSError:
        fd = -1
    if fd < 0 or _poll[0] is None:
        return ConnectionResetError(message)
    poller = _poll[0]()
    poller.register(fd, select.POLLIN)
    events = poller.poll(0)
    mask = events[0][1] if events else 0
    # An RST sets an error (and shuts both ways); a FIN only ends the reading side.
    if mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
        return ConnectionResetError(f"{message} (reset)")
    return PeerClosed(message)


def loss_exception(exc: BaseException, destination: str) -> BaseException:
    """The exception that says why a connection to ``destination`` ended,
    for ``on_disconnect`` and (as a Failure) the factory: ours unchanged,
    an orderly close as ``ConnectionDone``, anything else as
    ``ConnectionLost`` chained to ``exc``."""
    if isinstance(exc, RCFError):
        return exc
    if isinstance(exc, (PeerClosed, ClosedHere)):
        return ConnectionDone(f"connection to {destination} closed cleanly: {exc}",
                              destination, exc)
    return ConnectionLost(f"connection to {destination} lost: {exc}", destination, exc)


def loss_failure(exc: BaseException, destination: str) -> Failure:
    """:func:`loss_exception` as a :class:`~rcf_sync.Failure`."""
    return as_failure(loss_exception(exc, destination))
