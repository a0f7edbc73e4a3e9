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

__all__ = ["Ticket", "LeaseQueue", "NOBODY_QUEUED"]


class Ticket:
    """A queued caller: ``conn`` is set when a connection is handed to it,
    ``event`` is what it waits on (replaced at every wait)."""

    __slots__ = ("event", "conn")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.conn: Connection | None = None


class LeaseQueue:
    """Queued callers of one handle (every method: handle lock held)."""

    __slots__ = ("tickets",)

    def __init__(self) -> None:
        # Made when the first caller queues (most handles never queue anyone);
        # handles test it directly on their hot path: empty or None, nobody.
        self.tickets: collections.deque[Ticket] | None = None

    def __len__(self) -> int:
        return len(self.tickets) if self.tickets else 0

    def __bool__(self) -> bool:
        return bool(self.tickets)

    def join(self, event: Event) -> Ticket:
        """Queue a new caller; return its ticket."""
        ticket = Ticket(event)
        if self.tickets is None:
            self.tickets = collections.deque()
        self.tickets.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> Connection | None:
        """The caller of ``ticket`` stops waiting. Returns the connection
        handed to it meanwhile (the handle must pass it on), or None."""
        if self.tickets:
            try:
                self.tickets.remove(ticket)
            except ValueError:
                pass
        return ticket.conn

    def hand(self, conn: Connection) -> Ticket | None:
        """Give ``conn`` to the oldest queued caller: return its ticket (the
        handle sets ``ticket.event`` after releasing the lock), or None when
        nobody waits."""
        tickets = self.tickets
        if not tickets:
            return None
        ticket = tickets.popleft()
        ticket.conn = conn
        return ticket

    def events(self) -> list[Event]:
        """The events of every queued caller (to wake them all)."""
        return [t.event for t in self.tickets] if self.tickets else []


class _NobodyQueued(LeaseQueue):
    """The queue every handle shares until its first caller queues (most
    never do): empty for good. A handle swaps in its own before joining."""

    __slots__ = ()

    def join(self, event: Event) -> Ticket:
        raise AssertionError("the shared empty queue takes no caller: make the handle's own")


NOBODY_QUEUED: LeaseQueue = _NobodyQueued()
