"""One connection and who owns it.

A :class:`Connection` is, at any moment, in exactly one of the
:class:`Owner` states:

``IDLE``     nobody uses it; the handle may lease it, the loop may check it.
``LEASED``   one caller holds it (a lease, ``call()``).
``LOOP``     the loop is using it (an idle watch fired, a heartbeat); callers
             wait.
``DEAD``     out of service: closed or about to be; never handed out again.

An idle connection sits in its handle's ``_idle`` list, and taking it out of
that list is what claims it: a caller pops it without the handle's lock (the
hot path of a lease: ``list.pop()`` is one atomic step), the loop removes it
under the lock. Whoever took it then writes ``owner``; every other change of
``owner`` is made under the lock. So, under the lock, a connection whose
``owner`` still reads ``IDLE`` but that is no longer in ``_idle`` is being
taken or given back by a caller, and is treated as leased (see
``Handle._claim_locked``). A caller gives one back without the lock too
(``IDLE``, then the append), then reads ``doomed``, the handle's
``_closed`` and its queued callers, each written under the lock by whoever
looked for it in the list first; if any is set it claims the connection
back under the lock, unless somebody already took it, who then sees the
same.

A connection used through the handle's own ``sendall()`` / ``recv()`` is
a *stream*: its user reads the reply in a later lease than the one that sent
the request, so bytes waiting between leases are expected there and only a
hang-up discards it.

A connection is *doomed* when something decided, while it was leased, that
it must go (the peer hung up, ``connector.disconnect()``): the lease holder
keeps using the socket until the lease ends, then the connection is
discarded with that reason.
"""

from __future__ import annotations

import enum
import select
import socket
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._backends._seam import Cancellable, IdleWatch
    from ._interfaces import IDelayedCall

from ._backends._base import idle_status, original
from ._reasons import peer_closed

__all__ = ["Owner", "IDLE", "LEASED", "LOOP", "DEAD", "Connection", "lease_check", "stream_check"]


class Owner(enum.Enum):
    """Who may use a :class:`Connection` now."""

    IDLE = "idle"
    LEASED = "leased"
    LOOP = "loop"
    DEAD = "dead"


# The hot paths compare against these module constants: an attribute of an
# Enum class costs a descriptor call each time.
IDLE, LEASED, LOOP, DEAD = Owner.IDLE, Owner.LEASED, Owner.LOOP, Owner.DEAD


_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
_POLL_EVENTS = select.POLLIN | _POLLRDHUP
_BROKEN = select.POLLHUP | select.POLLERR | select.POLLNVAL
_poll_class: list[Callable[[], Any] | None] = []


def _new_poll() -> Any:
    if not _poll_class:
        try:
            _poll_class.append(original("select", "poll"))
        except AttributeError:  # pragma: no cover - no poll() on this platform
            _poll_class.append(None)
    cls = _poll_class[0]
    return None if cls is None else cls()


class Connection:
    """A live connection of a client or pool (not public)."""

    __slots__ = ("sock", "session", "serial", "handle", "owner", "doomed", "stream", "watch",
                 "heartbeat", "released_at", "holder", "_poll", "_pending")

    def __init__(self, sock: socket.socket, serial: int, session: object = None,
                 handle: Any = None) -> None:
        # Immutable after creation:
        self.sock = sock
        self.session: Any = sock if session is None else session  # what a lease hands out
        self.serial = serial
        self.handle = handle    # the client or pool it belongs to (its idle watch calls it)
        # Written by whoever took it from the idle list, else under the lock:
        self.owner = Owner.IDLE
        self.doomed: BaseException | None = None  # discard with it when the lease ends
        self.stream = False     # set (once, for good) by the handle's sendall()/recv()
        # Loop only (set right after creation, cleared on close):
        self.watch: IdleWatch | None = None
        self.heartbeat: IDelayedCall | Cancellable | None = None  # timer, or beat running
        # Written by the caller it is handed to (``holder``: the backend's
        # caller_id()) and as it gives it back (``released_at``); by the loop
        # after a heartbeat, and by the usual path of a release (``holder``
        # None: check it at the next lease). Read by the next lease and the
        # heartbeat.
        self.released_at = 0.0
        self.holder: object = None
        self._poll: Any = None  # lease_check's poll object, made on first use
        # TLS: bytes already decrypted wait in the SSL object, not the kernel.
        self._pending: Callable[[], int] | None = getattr(sock, "pending", None)

    def __repr__(self) -> str:
        return f"<Connection #{self.serial} {self.owner.name}>"


def lease_check(conn: Connection) -> BaseException | None:
    """Called by a caller that was just handed ``conn``: ``None`` when it
    can be used, else the exception to discard it with (bytes nobody asked
    for are waiting, or the peer closed it). One non-blocking ``poll()``
    system call; through TLS, also the bytes already decrypted."""
    sock = conn.sock
    poll = conn._poll
    if poll is None:
        poll = conn._poll = _new_poll()
        if poll is None:  # pragma: no cover
            return None
        try:
            poll.register(sock.fileno(), _POLL_EVENTS)
        except (OSError, ValueError):
            return ConnectionResetError("the connection is closed")
    events = poll.poll(0)
    if not events:
        pending = conn._pending
        if pending is None or not pending():
            return None
    if conn.stream:
        return _stream_problem(events, sock)
    status = idle_status(sock)
    if status == "quiet":  # TLS records without data (session tickets)
        return None
    if status == "closed":
        return peer_closed(sock)
    return ConnectionError("unexpected data from the peer on an idle connection")


def _stream_problem(events: list[tuple[int, int]], sock: Any) -> BaseException | None:
    # A stream may have its reply waiting; only a hang-up with nothing left
    # to read (or an error) makes it unusable.
    mask = events[0][1] if events else 0
    if mask & _BROKEN or (mask & _POLLRDHUP and not mask & select.POLLIN):
        return peer_closed(sock)
    return None


def stream_check(conn: Connection) -> BaseException | None:
    """Loop, idle watch fired on a stream: the exception to discard it with,
    or None (its waiting bytes are its user's)."""
    poll = conn._poll
    if poll is None:
        lease_check(conn)  # makes the poll object
        poll = conn._poll
    return _stream_problem(poll.poll(0), conn.sock) if poll is not None else None
