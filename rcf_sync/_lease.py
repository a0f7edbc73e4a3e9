"""Who gets a connection next: callers queued for a lease, oldest first.

The queue lives under its handle's lock and performs nothing itself: each
method returns what the handle must do once it has released the lock (set a
ticket's event, pass a connection on). Hand-over is fair: a connection that
comes back while callers are queued goes to the oldest of them, so a caller
releasing and re-leasing in a loop cannot starve the others.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._backends._seam import Event
    from ._connection import Connection

__all__ = ["Ticket", "LeaseQueue"]


class Ticket:
    """A queued caller: ``conn`` is set when a connection is handed to it,
    ``event`` is what it waits on (replaced at every wait)."""

    __slots__ = ("event", "conn")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.conn: Connection | None = None


class LeaseQueue:
    """Queued callers of one handle (every method: handle lock held)."""

    __slots__ = ("_tickets",)

    def __init__(self) -> None:
        self._tickets: collections.deque[Ticket] = collections.deque()

    def __len__(self) -> int:
        return len(self._tickets)

    def __bool__(self) -> bool:
        return bool(self._tickets)

    def join(self, event: Event) -> Ticket:
        """Queue a new caller; return its ticket."""
        ticket = Ticket(event)
        self._tickets.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> Connection | None:
        """The caller of ``ticket`` stops waiting. Returns the connection
        handed to it meanwhile (the handle must pass it on), or None."""
        try:
            self._tickets.remove(ticket)
        except ValueError:
            pass
        return ticket.conn

    def hand(self, conn: Connection) -> Ticket | None:
        """Give ``conn`` to the oldest queued caller: return its ticket (the
        handle sets ``ticket.event`` after releasing the lock), or None when
        nobody waits."""
        if not self._tickets:
            return None
        ticket = self._tickets.popleft()
        ticket.conn = conn
        return ticket

    def events(self) -> list[Event]:
        """The events of every queued caller (to wake them all)."""
        return [t.event for t in self._tickets]

    def clear(self) -> None:
        """Forget every ticket (after a fork: their callers are not here)."""
        self._tickets.clear()
