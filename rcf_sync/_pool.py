"""``ReconnectingPool``: up to ``size`` connections with one shared back-off.

Theory of operation. Connections are opened on demand, when a caller has to
wait and there is room, and go back to an idle list on release. The factory
sees the pool as one Twisted client: while the pool has no live connection
(nothing proves the server is up), at most one attempt is in flight; its
failure goes to ``factory.clientConnectionFailed`` and the pool *backs off*:
no attempt starts until the factory's scheduled ``connector.connect()``, the
*probe*. So a dead server sees one probe per delay, however many callers
wait. When a probe (or any attempt) succeeds the factory's delay is reset and
the pool opens connections for the callers still waiting. Losing one pooled
connection does not by itself start a back-off: the next attempt tells.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable

from ._connection import Connection, Owner
from ._factory import uses_protocol
from ._failure import as_failure
from ._fork import live as _live
from ._handle import _DEFAULT_HOOK_TIMEOUT, Handle, _Pending
from ._liveness import Liveness
from ._reasons import ClosedHere
from ._state import State
from ._timeouts import is_integer

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = ["ReconnectingPool"]


class ReconnectingPool(Liveness, Handle):
    """Up to ``size`` connections for thread-pool workers (or greenlets),
    leased one per caller, sharing one back-off schedule.

    Arguments as for :class:`~rcf_sync.ReconnectingClient`, plus ``size``
    (an integer >= 1, ``ValueError`` otherwise). :meth:`connection` and
    :meth:`call` behave as the client's, except that concurrent callers get
    different connections. ``state`` is ``CONNECTED`` while any connection is
    up, ``CONNECTING`` while attempts run with none up, ``WAITING`` during
    the back-off (or with nothing to do), ``STOPPED`` when the factory gave
    up (or user code raised), ``CLOSED`` after :meth:`close`. Thread-safe;
    user code and fork as for the client.

    A pool hands out sockets only: a factory that builds protocols
    (``protocol`` set, or ``buildProtocol`` overridden) raises
    ``ValueError``; drive a protocol with a ``ReconnectingClient``.
    """

    __slots__ = ("_attempts", "_backoff", "_conns", "_probe", "_probes", "_stopped", "size")

    def __init__(self, connector: Any, size: int, factory: Any = None, backend: object = "auto",
                 clock: Any = None, on_connect: Callable[[socket.socket], Any] | None = None,
                 on_disconnect: Callable[[BaseException], Any] | None = None,
                 name: str | None = None, *,
                 on_connect_timeout: float | None = _DEFAULT_HOOK_TIMEOUT,
                 lost_on: type[BaseException] | tuple[type[BaseException], ...] = ()) -> None:
        if not is_integer(size) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        if factory is not None and uses_protocol(factory):
            raise ValueError(
                f"{type(factory).__name__} builds protocols, which a pool does not drive: give "
                "it to a ReconnectingClient (one protocol per client)")
        super().__init__(connector, factory, backend, clock, on_connect, on_disconnect, name,
                         on_connect_timeout, lost_on)
        self.size: int = int(size)  # immutable
        self._heartbeat = None
        # Under the lock:
        self._conns: set[Connection] = set()     # live connections, idle or leased
        self._attempts: set[_Pending] = set()    # attempts in flight
        self._probe: _Pending | None = None      # the attempt the factory's retry started
        self._backoff: bool = False  # an attempt failed: wait for the factory's retry
        self._stopped: bool = False
        self._probes: int = 0

    def __repr__(self) -> str:
        return (f"<ReconnectingPool {self.name!r} {self._state.name} "
                f"{len(self._conns)}/{self.size} backend={self._backend.name}>")

    def reconnect_now(self) -> None:
        """After the factory gave up or user code raised (``STOPPED``):
        reset the factory's delay and start trying again. No effect
        otherwise, before :meth:`start` or after :meth:`close`."""
        self._enter()
        if self._closed or self._state is State.IDLE:
            return
        self._on_loop(self._do_reconnect_now)

    def _do_reconnect_now(self) -> None:
        with self._lock:
            if self._closed or not self._stopped:
                return
            self._halted = None
            self._stopped = self._backoff = False
            self._update_state_locked()

        self._factory_calls([("resetDelay", ())], lambda _: self._fill(1))

    @property
    def probes(self) -> int:
        """How many attempts the factory's retries started (back-off probes)."""
        return self._probes

    def start(self) -> Self:
        """Start: the first connection attempt begins at once. Returns ``self``."""
        self._enter()
        with self._lock:
            if self._state is not State.IDLE:
                raise RuntimeError(f"{self!r} was already started")
            self._connector._adopt(self)
            self._state = State.CONNECTING
            self._changed_locked()
        self._track_factory_clock()
        self._backend.acquire()
        _live[self] = None
        self._backend.call_soon(self._fill, 1)
        return self

    def _closing_locked(self) -> None:
        self._state = State.CLOSED
        self._changed_locked()

    # -- caller side ------------------------------------------------------------

    def _still_ours_locked(self, conn: Connection) -> bool:
        return conn in self._conns

    def _wants_more_locked(self) -> bool:
        return not (self._closed or self._stopped or self._backoff) and self._room_locked() > 0

    def _room_locked(self) -> int:
        pending = len(self._attempts)
        if not self._conns:
            return 1 - pending  # nothing proves the server is up: one at a time
        need = len(self._leases) - pending - len(self._idle)
        return min(need, self.size - len(self._conns) - pending)

    def _gave_up_locked(self) -> bool:
        return self._stopped and not self._conns and not self._attempts

    def _forget_locked(self, conn: Connection, exc: BaseException) -> None:
        self._conns.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._update_state_locked()

    # -- loop side ----------------------------------------------------------------

    def _update_state_locked(self) -> None:
        if self._closed:
            state = State.CLOSED
        elif self._conns:
            state = State.CONNECTED
        elif self._stopped:
            state = State.STOPPED
        elif self._attempts and (self._probe is not None or not self._backoff):
            state = State.CONNECTING
        else:
            state = State.WAITING
        if state is not self._state:
            self._state = state
        self._changed_locked()

    def _fill(self, minimum: int = 0) -> None:
        with self._lock:
            if self._closed or self._stopped or self._backoff or self._halted is not None:
                return
            n = max(minimum - len(self._attempts) - len(self._conns), self._room_locked())
            handles = [_Pending() for _ in range(max(0, n))]
            self._attempts.update(handles)
            if handles:
                self._update_state_locked()
        for handle in handles:
            self._start_attempt(handle)

    def _start_attempt(self, handle: _Pending) -> None:
        def launch(_: object) -> None:
            with self._lock:
                current = handle in self._attempts and not self._closed
            if current:
                self._launch(handle, self._attempt_done)

        self._factory_calls([("doStart", ()), ("startedConnecting", (self._connector,))], launch)

    def _attempt_done(self, handle: _Pending, sock: Any, exc: BaseException | None) -> None:
        with self._lock:
            current = handle in self._attempts
            self._attempts.discard(handle)
            probe = handle is self._probe
            if probe:
                self._probe = None
        if not current or self._closed:
            if sock is not None:
                sock.close()
            return
        if exc is not None:
            self._attempt_failed(probe, exc)
            return
        self._factory_calls([("resetDelay", ())], lambda _: self._connected(handle, sock))

    def _connected(self, handle: _Pending, sock: socket.socket) -> None:
        with self._lock:
            usable = not self._closed and self._halted is None
            if usable:
                conn = self._new_connection_locked(sock, handle.session)
        if not usable:
            sock.close()
            return
        self._watch(conn)
        with self._lock:
            if self._closed:
                conn.owner = Owner.DEAD
            else:
                self._backoff = False
                self._stopped = False
                self._conns.add(conn)
                ticket = self._hand_on_locked(conn)
                self._update_state_locked()
        if conn.owner is Owner.DEAD:
            self._close_conn(conn)
            return
        if ticket is not None:
            ticket.event.set()
        self._fill()

    def _attempt_failed(self, probe: bool, exc: BaseException) -> None:
        reason = self._describe_error(exc)
        with self._lock:
            self._failures += 1
            self._stats.connect_failures += 1
            self._stats.last_error = reason
            tell = probe or not self._backoff
            self._backoff = True
        calls: list[tuple[str, tuple[Any, ...]]] = [("doStop", ())]
        if tell:
            calls.insert(0, ("clientConnectionFailed", (self._connector, as_failure(reason))))
        self._factory_calls(calls, lambda _: self._after_factory())

    def _after_factory(self) -> None:
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if self._closed or self._halted is not None:
                return
            if gave_up and self._probe is None:
                self._stopped = True
                self._stop_reason = ("stop_trying() was called" if not factory.continueTrying
                                     else f"gave up after {factory.retries - 1} retries")
            self._update_state_locked()

    def _lost(self, conn: Connection, exc: BaseException) -> None:
        self._close_conn(conn)
        self._factory_calls([("doStop", ())])  # each connection was one doStart()
        if self._closed:
            return
        if self._on_disconnect is not None:
            self._user_callback("on_disconnect()", self._on_disconnect, self._loss_reason(exc))
        self._fill()

    def _halt_locked(self) -> list[Connection | _Pending]:
        to_close: list[Connection | _Pending] = list(self._attempts)
        self._attempts = set()
        self._probe = None
        for conn in list(self._conns):
            if self._held_locked(conn):
                conn.doomed = conn.doomed or self._halted
            else:
                conn.owner = Owner.DEAD
                to_close.append(conn)
                self._conns.discard(conn)
        self._idle.clear()
        self._stopped = True
        self._update_state_locked()
        return to_close

    def _shutdown(self) -> None:
        with self._lock:
            attempts, self._attempts = list(self._attempts), set()
            conns, self._conns = list(self._conns), set()
            self._idle.clear()
            for conn in conns:
                conn.owner = Owner.DEAD
        for handle in attempts:
            self._cancel_attempt(handle)
        for conn in conns:
            self._close_conn(conn)
        self._factory_calls([("stopTrying", ())] + [("doStop", ())] * len(conns),
                            self._shutdown_done, always=True)

    def _forked(self) -> None:
        self._forked_locked_state()
        attempts, self._attempts = list(self._attempts), set()
        self._probe = None
        for handle in attempts:
            if handle.attempt is not None:
                handle.attempt.cancel()
        conns, self._conns = list(self._conns), set()
        self._idle.clear()
        for conn in conns:
            self._drop_in_child(conn)
        self._backoff = False

    def _revived(self) -> None:
        with self._lock:
            self._update_state_locked()
        self._fill(1)

    # -- connector side (the factory's retries land here) -------------------------

    def _connector_connect(self, connector: object) -> None:
        with self._lock:
            if self._halted is not None:
                return
            if not self._closed and self._probe is None and not self._conns:
                # Seen at once by whoever called connect() (a clock being advanced).
                self._state = State.CONNECTING
                self._changed_locked()
        self._backend.call_soon(self._probe_now)

    def _probe_now(self) -> None:
        with self._lock:
            if self._closed or self._probe is not None or self._halted is not None:
                return
            if len(self._conns) + len(self._attempts) >= self.size:
                self._backoff = False
                return
            self._stopped = False
            handle = self._probe = _Pending()
            self._attempts.add(handle)
            self._probes += 1
            self._update_state_locked()
        self._start_attempt(handle)

    def _connector_stop_connecting(self, connector: object) -> bool:
        with self._lock:
            attempts, self._attempts = list(self._attempts), set()
            self._probe = None
        if not attempts:
            return False

        def stop() -> None:
            for handle in attempts:
                self._cancel_attempt(handle)
            self._factory_calls([("doStop", ())] * len(attempts), lambda _: self._after_factory())

        self._soon_on_loop(stop)
        return True

    def _connector_disconnect(self, connector: object) -> None:
        reason = ClosedHere("disconnect() was called")
        with self._lock:
            conns = []
            for conn in self._conns:
                if self._held_locked(conn):
                    conn.doomed = conn.doomed or reason  # discarded when its lease ends
                else:
                    conns.append(conn)
        for conn in conns:
            self._mark_lost(conn, reason)
