"""The client's states and the transitions between them, as a table.

Pure: :func:`transition` takes a state and an event and returns the next
state, or raises ``RuntimeError`` naming both when the event is illegal
there. The client feeds it every change so that ``state`` can only move the
way this table says.
"""

from __future__ import annotations

import enum

__all__ = ["State", "Event", "transition"]


class State(enum.Enum):
    """Where a :class:`~rcf_sync.ReconnectingClient` is."""

    #: Created, not started.
    IDLE = "idle"
    #: A connection attempt (connect, TLS handshake, ``on_connect``) is running.
    CONNECTING = "connecting"
    #: A connection is up and can be leased.
    CONNECTED = "connected"
    #: Between attempts: the back-off delay is running (or the factory has
    #: yet to schedule the next attempt).
    WAITING = "waiting"
    #: No further attempt will be made: ``stop_trying()``, ``maxRetries`` or
    #: ``maxElapsed``. ``reconnect_now()`` or ``reset_delay()`` start again.
    STOPPED = "stopped"
    #: ``close()`` was called; final.
    CLOSED = "closed"


class Event(enum.Enum):
    """What happened to a client (input of :func:`transition`)."""

    START = "start"
    ATTEMPT = "attempt"
    CONNECTED = "connected"
    FAILED = "failed"        # an attempt failed
    LOST = "lost"            # an established connection died
    GAVE_UP = "gave up"      # the factory will schedule nothing more
    HALT = "halt"            # user code raised: stop until reconnect_now()
    CLOSE = "close"


S, E = State, Event

_TABLE = {
    (S.IDLE, E.START): S.CONNECTING,
    (S.CONNECTING, E.CONNECTED): S.CONNECTED,
    (S.CONNECTING, E.FAILED): S.WAITING,
    (S.CONNECTING, E.GAVE_UP): S.STOPPED,
    (S.CONNECTED, E.LOST): S.WAITING,
    (S.WAITING, E.ATTEMPT): S.CONNECTING,
    (S.WAITING, E.GAVE_UP): S.STOPPED,
    (S.STOPPED, E.ATTEMPT): S.CONNECTING,
    (S.STOPPED, E.GAVE_UP): S.STOPPED,
    (S.CONNECTING, E.HALT): S.STOPPED,
    (S.CONNECTED, E.HALT): S.STOPPED,
    (S.WAITING, E.HALT): S.STOPPED,
    (S.STOPPED, E.HALT): S.STOPPED,
}


def transition(state: State, event: Event) -> State:
    """Return the state that ``event`` leads to from ``state``.

    ``CLOSE`` leads to ``CLOSED`` from anywhere; ``CLOSED`` is final.
    """
    if event is E.CLOSE:
        return S.CLOSED
    try:
        return _TABLE[state, event]
    except KeyError:
        raise RuntimeError(f"illegal transition: {event.value!r} in state {state.name}") from None
