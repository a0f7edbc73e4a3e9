"""How a handle notices that an idle connection is no good: bytes nobody
asked for, a peer's FIN or RST, or a failing heartbeat.

The backend's idle watch calls :meth:`Liveness._idle_event` on the loop.
The loop then takes the connection (``Owner.LOOP``) so that no caller can
lease it half-checked, looks without blocking, and either gives it back
(quiet: TLS records without data) or discards it. A connection leased at
that moment is only marked *doomed* if the peer hung up (its holder's
release discards it); bytes arriving during a lease are the holder's reply.

A heartbeat is user code: it runs in the handle's user-code queue on a
connection nobody has leased for ``heartbeat_interval`` seconds, leased to
the background meanwhile; raising, or not returning within the interval
(its socket times out), is a loss.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Generator
from typing import Any

from ._backends._base import idle_status, peer_gone
from ._connection import Connection, Owner, stream_check
from ._parts import HandleParts
from ._reasons import peer_closed
from ._steps import UserCall

__all__ = ["Liveness"]


# One function each for every idle watch: no bound method held per connection.
def _idle_event_of(conn: Connection) -> None:
    conn.handle._idle_event(conn)


def _idle_since_of(conn: Connection) -> float | None:
    return conn.released_at if conn.owner is Owner.IDLE else None


class Liveness(HandleParts):
    """Mixin for handles (uses the handle's lock, backend and losses)."""

    __slots__ = ()

    def _watch(self, conn: Connection) -> None:
        """Loop: start the idle watch of a new connection."""
        conn.watch = self._backend.watch_idle(conn.sock, _idle_event_of, conn, _idle_since_of)

    def _idle_event(self, conn: Connection) -> None:
        with self._lock:
            owner = conn.owner
            if owner is Owner.IDLE:
                if self._claim_locked(conn):
                    conn.owner = Owner.LOOP
                else:  # a caller is taking it
                    owner = Owner.LEASED
        if owner is Owner.DEAD:
            return
        if owner is not Owner.IDLE:  # leased: only a hang-up concerns us now
            if owner is Owner.LEASED and peer_gone(conn.sock):
                with self._lock:
                    if conn.doomed is None:
                        conn.doomed = peer_closed(conn.sock)
            return
        if conn.stream:
            problem = stream_check(conn)
            if problem is not None:
                self._mark_lost(conn, problem)
            else:  # its user's reply is waiting: watch again after the next lease
                self._give_back(conn, rearm=False)
            return
        status = idle_status(conn.sock)
        if status == "quiet":
            self._give_back(conn)
            return
        if status == "closed":
            exc = peer_closed(conn.sock)
        else:
            # Bytes nobody asked for: handing this stream to a caller could
            # give it a reply that is not its own.
            exc = ConnectionError("unexpected data from the peer on an idle connection")
        self._mark_lost(conn, exc)

    def _give_back(self, conn: Connection, rearm: bool = True) -> None:
        """Loop: the loop is done with ``conn`` and it is healthy."""
        ticket = None
        with self._lock:
            if conn.owner is not Owner.LOOP:
                return
            ticket = self._hand_on_locked(conn)
        if ticket is not None:
            ticket.event.set()
        elif rearm and conn.watch is not None:
            conn.watch.rearm()

    # -- heartbeat ------------------------------------------------------------

    def _schedule_heartbeat(self, conn: Connection, delay: float | None = None) -> None:
        interval = self._heartbeat_interval
        assert interval is not None, "a heartbeat needs its interval"
        conn.heartbeat = self._backend.call_later_real(
            interval if delay is None else delay, self._heartbeat_due, conn)

    def _heartbeat_due(self, conn: Connection) -> None:
        conn.heartbeat = None
        interval, heartbeat = self._heartbeat_interval, self._heartbeat
        assert interval is not None and heartbeat is not None
        with self._lock:
            if conn.owner is Owner.DEAD or self._closed:
                return
            idle_for = time.monotonic() - conn.released_at
            busy = (conn.owner is not Owner.IDLE or idle_for < interval
                    or not self._claim_locked(conn))
            if not busy:
                conn.owner = Owner.LOOP
        if busy:
            self._schedule_heartbeat(conn, max(0.0, interval - idle_for)
                                     if conn.owner is Owner.IDLE else None)
            return
        if self._tell_watch and conn.watch is not None:
            conn.watch.leased()

        def beat(sock: socket.socket = conn.sock) -> None:
            sock.settimeout(interval)
            try:
                heartbeat(conn.session)
            finally:
                sock.settimeout(None)

        def steps() -> Generator[UserCall, Any, None]:
            yield UserCall(beat)

        def done(_: Any, exc: BaseException | None) -> None:
            conn.heartbeat = None
            if exc is not None:
                self._mark_lost(conn, exc)
                return
            conn.released_at, conn.holder = time.monotonic(), None
            self._give_back(conn)
            with self._lock:
                alive = conn.owner is not Owner.DEAD
            if alive:
                self._schedule_heartbeat(conn)

        # Run as an attempt so that a heartbeat that hangs past twice the
        # interval is abandoned (and the connection lost) like a hung connect.
        # Kept where the timer was, so that closing the connection cancels it.
        conn.heartbeat = self._backend.start_attempt(steps(), interval * 2, done,
                                                     self._user_queue)
