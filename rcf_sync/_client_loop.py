"""The client's loop and connector sides: attempts, the factory's calls,
losses, stop/reconnect and fork, for :class:`~rcf_sync.ReconnectingClient`
(whose public surface is ``_client``).

Connector calls (``connect()``, ``stopConnecting()``, ``disconnect()``)
come from any thread and hand work to the loop; everything in "loop side"
runs on the loop. The fields below are the client's own (set up by its
``__init__``); their owners are written there.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ._connection import Connection, Owner
from ._failure import as_failure
from ._handle import Handle, _Pending
from ._liveness import Liveness
from ._protocol_mode import ProtocolMode
from ._reasons import ClosedHere
from ._state import Event, State, transition

__all__ = ["ClientLoop"]


class ClientLoop(ProtocolMode, Liveness, Handle):
    """The single connection's loop and connector sides (not public)."""

    __slots__ = ("_attempt", "_attempts_started", "_conn", "_connect_requested", "_proto_mode")

    if TYPE_CHECKING:
        _conn: Connection | None      # under the lock: the live connection
        _attempt: _Pending | None     # under the lock: the attempt in flight
        _connect_requested: bool      # under the lock
        _attempts_started: int        # under the lock
        _proto_mode: bool             # immutable

    # -- connector side (IConnector calls land here, from any thread) ----------

    def _connector_connect(self, connector: object) -> None:
        with self._lock:
            if self._closed or self._halted is not None:
                return
            self._connect_requested = True
            # Seen at once by whoever called connect() (a clock being advanced).
            if self._state in (State.WAITING, State.STOPPED) and self._conn is None:
                self._set_state(Event.ATTEMPT)
        # Always a turn later, even from a retry timer on the loop: timers due
        # together (a herd) then each cost a post, not a whole attempt, before
        # the next one runs; the attempts follow in the order they were due.
        self._backend.call_soon(self._attempt_now)

    def _connector_stop_connecting(self, connector: object) -> bool:
        with self._lock:
            pending, self._attempt = self._attempt, None
        if pending is None:
            return False

        def stop() -> None:
            self._cancel_attempt(pending)
            self._attempt_failed(ConnectionAbortedError("the connection attempt was stopped"))

        self._soon_on_loop(stop)
        return True

    def _connector_disconnect(self, connector: object) -> None:
        if self._proto_mode and self._lose_protocol_connection():
            return
        reason = ClosedHere("disconnect() was called")
        with self._lock:
            conn = self._conn
            if conn is not None and self._held_locked(conn):
                # Its holder keeps the socket until the lease ends.
                if conn.doomed is None:
                    conn.doomed = reason
                return
        if conn is not None:
            self._mark_lost(conn, reason)
        else:
            self._connector_stop_connecting(connector)

    # -- loop side -----------------------------------------------------------

    def _attempt_now(self) -> None:
        with self._lock:
            if self._closed or not self._connect_requested or self._halted is not None:
                return
            self._connect_requested = False
            if self._attempt is not None or self._conn is not None:
                return
            if self._state is State.CONNECTED:
                # The connection is gone and a retry came (a factory subclass's
                # clientConnectionLost scheduled it) before the loss was noted.
                self._set_state(Event.LOST)
            if self._state is not State.CONNECTING:
                self._set_state(Event.ATTEMPT)
            self._attempts_started += 1
            self._stats.retries = self._attempts_started - 1
            pending = self._attempt = _Pending()  # so that startedConnecting may stopConnecting()

        def launch(_: object) -> None:
            with self._lock:
                current = self._attempt is pending and not self._closed
            if current:
                self._launch(pending, self._attempt_done)

        self._factory_calls([("doStart", ()), ("startedConnecting", (self._connector,))], launch)

    def _attempt_done(self, pending: _Pending, sock: Any, exc: BaseException | None) -> None:
        with self._lock:
            current = self._attempt is pending
            if current:
                self._attempt = None
        if not current:
            if sock is not None:
                sock.close()
            return
        if exc is not None:
            self._attempt_failed(exc)
            return
        if self._closed:
            sock.close()
            return
        if self._proto_mode:
            self._protocol_built(pending, sock)
            return
        self._factory_calls([("resetDelay", ())], lambda _: self._connected(pending, sock))

    def _connected(self, pending: _Pending, sock: socket.socket) -> None:
        with self._lock:
            usable = not self._closed and self._halted is None and self._conn is None
            if usable:
                conn = self._new_connection_locked(sock, pending.session)
        if not usable:
            sock.close()
            return
        if pending.protocol is None:
            self._watch(conn)
        with self._lock:
            if self._closed:
                conn.owner = Owner.DEAD
            else:
                self._conn = conn
                ticket = self._hand_on_locked(conn)
                self._set_state(Event.CONNECTED)
        if conn.owner is Owner.DEAD:
            self._close_conn(conn)
            return
        if ticket is not None:
            ticket.event.set()
        if pending.protocol is not None:
            self._drive(conn, pending.protocol)
        if self._heartbeat is not None:
            self._schedule_heartbeat(conn)

    def _attempt_failed(self, exc: BaseException) -> None:
        reason = self._describe_error(exc)
        with self._lock:
            self._failures += 1
            self._stats.connect_failures += 1
            self._stats.last_error = reason
        calls: list[tuple[str, tuple[Any, ...]]] = [("doStop", ())]
        if not self._closed:
            calls.insert(0, ("clientConnectionFailed", (self._connector, as_failure(reason))))
        self._factory_calls(calls, lambda _: self._after_factory(Event.FAILED))

    def _after_factory(self, event: Event | None) -> None:
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if (self._closed or self._state is State.IDLE or self._attempt is not None
                    or self._conn is not None or self._halted is not None):
                return
            if (event is Event.FAILED and self._state is State.CONNECTING) or (
                    event is Event.LOST and self._state is State.CONNECTED):
                self._set_state(event)
            if gave_up and not self._connect_requested and self._state is not State.STOPPED:
                if not factory.continueTrying:
                    self._stop_reason = "stop_trying() was called"
                else:
                    self._stop_reason = f"gave up after {factory.retries - 1} retries"
                self._set_state(Event.GAVE_UP)

    def _forget_locked(self, conn: Connection, exc: BaseException) -> None:
        if self._conn is conn:
            self._conn = None

    def _lost(self, conn: Connection, exc: BaseException) -> None:
        reason = self._settle_reason(conn, exc)  # before a protocol hears of it
        self._close_conn(conn)
        self._tell_lost(reason, Event.LOST)

    def _tell_lost(self, reason: BaseException, event: Event) -> None:
        """Loop: a connection ended with ``reason``: the factory hears
        ``clientConnectionLost`` (and ``doStop``), then the state moves on
        (``event``) and ``on_disconnect`` runs."""
        if self._closed:
            self._factory_calls([("doStop", ())])
            return

        def after(_: object) -> None:
            self._after_factory(event)
            if self._on_disconnect is not None:
                self._user_callback("on_disconnect()", self._on_disconnect, reason)

        self._factory_calls([("clientConnectionLost", (self._connector, as_failure(reason))),
                             ("doStop", ())], after)

    def _halt_locked(self) -> list[Connection | _Pending]:
        to_close: list[Connection | _Pending] = []
        pending, self._attempt = self._attempt, None
        if pending is not None:
            to_close.append(pending)
        conn = self._conn
        if conn is not None:
            if self._held_locked(conn):
                conn.doomed = conn.doomed or self._halted
            else:
                conn.owner = Owner.DEAD
                to_close.append(conn)
            self._conn = None
        self._connect_requested = False
        self._set_state(Event.HALT)
        return to_close

    def _do_stop_trying(self) -> None:
        def after(_: object) -> None:
            with self._lock:
                pending = self._attempt
            if pending is not None:
                # Before its first failure the factory has no connector to stop
                # (as in Twisted); the client abandons the attempt itself.
                self._connector_stop_connecting(self._connector)
            self._after_factory(None)

        self._factory_calls([("stopTrying", ())], after)

    def _do_reconnect_now(self) -> None:
        with self._lock:
            if self._closed or self._attempt is not None or self._conn is not None:
                return
            stopped = self._state is State.STOPPED
            self._halted = None
            if stopped:
                # Callers wait for the coming attempt from now on, even while
                # a factory subclass's resetDelay() runs in the user queue.
                self._connect_requested = True
                self._set_state(Event.ATTEMPT)

        def go(_: object) -> None:
            if self._factory_clock is not None:
                self._factory_clock.cancel_all()  # skip the wait of the pending retry
            with self._lock:
                self._connect_requested = True
            self._attempt_now()

        if stopped:
            self._factory_calls([("resetDelay", ())], go)
        else:
            go(None)

    def _shutdown(self) -> None:
        with self._lock:
            pending, self._attempt = self._attempt, None
            conn, self._conn = self._conn, None
            self._idle.clear()  # a caller that popped it already sees _closed
            if conn is not None:
                conn.owner = Owner.DEAD
        if pending is not None:
            self._cancel_attempt(pending)  # also when startedConnecting() has not returned yet
        if conn is not None:
            self._close_conn(conn)
        calls = [("stopTrying", ())] + [("doStop", ())] * ((pending is not None) + (conn is not None))
        self._factory_calls(calls, self._shutdown_done, always=True)

    def _forked(self) -> None:
        self._forked_locked_state()
        pending, self._attempt = self._attempt, None
        if pending is not None and pending.attempt is not None:
            pending.attempt.cancel()
        conn, self._conn = self._conn, None
        while self._idle:  # not clear(): it would free the list's room (_idle_list)
            self._idle.pop()
        if conn is not None:
            self._drop_in_child(conn)
        if self._revive and self._state in (State.CONNECTED, State.CONNECTING):
            self._state = State.CONNECTING
            self._connect_requested = True

    def _revived(self) -> None:
        self._attempt_now()

    def _gave_up_locked(self) -> bool:
        return self._state is State.STOPPED

    def _set_state(self, event: Event) -> None:
        # With self._lock held.
        self._state = transition(self._state, event)
        self._changed_locked()
