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

import collections
import numbers

from ._core import _DEFAULT_HOOK_TIMEOUT, _Handle, _Pending
from ._state import State

__all__ = ["ReconnectingPool"]


class ReconnectingPool(_Handle):
    """Up to ``size`` connections for thread-pool workers (or greenlets),
    leased one per caller, sharing one back-off schedule.

    Arguments as for :class:`~rcf_sync.ReconnectingClient`, plus ``size``
    (an integer >= 1, ``ValueError`` otherwise). :meth:`connection` and
    :meth:`call` behave as the client's, except that concurrent callers get
    different connections. ``state`` is ``CONNECTED`` while any connection is
    up, ``CONNECTING`` while attempts run with none up, ``WAITING`` during
    the back-off (or with nothing to do), ``STOPPED`` when the factory gave
    up, ``CLOSED`` after :meth:`close`. Thread-safe.
    """

    def __init__(self, connector, size, factory=None, backend="auto", clock=None,
                 on_connect=None, on_disconnect=None, name=None, *,
                 on_connect_timeout=_DEFAULT_HOOK_TIMEOUT, lost_on=()):
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        super().__init__(connector, factory, backend, clock, on_connect, on_disconnect, name,
                         on_connect_timeout, lost_on)
        self.size = int(size)
        self._keeps_idle = True
        self._idle = collections.deque()
        self._conns = set()      # live connections, idle or leased
        self._attempts = set()   # _Pending handles in flight
        self._probe = None
        self._backoff = False
        self._stopped = False
        self._probes = 0

    def __repr__(self):
        return (f"<ReconnectingPool {self.name!r} {self._state.name} "
                f"{len(self._conns)}/{self.size} backend={self._backend.name}>")

    @property
    def probes(self):
        """How many attempts the factory's retries started (back-off probes)."""
        return self._probes

    def start(self):
        """Start: the first connection attempt begins at once. Returns ``self``."""
        with self._lock:
            if self._state is not State.IDLE:
                raise RuntimeError(f"{self!r} was already started")
            self._connector._adopt(self)
            self._state = State.CONNECTING
            self._changed_locked()
        self._track_factory_clock()
        self._backend.acquire()
        self._backend.call_soon(self._fill, 1)
        return self

    def _closing_locked(self):
        self._state = State.CLOSED
        self._changed_locked()

    # -- caller side ------------------------------------------------------------

    def _take_locked(self):
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: least likely to be stale
            if not conn.dead:
                conn.leased = True
                return conn
        return None

    def _wants_more_locked(self):
        return not (self._closed or self._stopped or self._backoff) and self._room_locked() > 0

    def _room_locked(self):
        pending = len(self._attempts)
        if not self._conns:
            return 1 - pending  # nothing proves the server is up: one at a time
        need = len(self._queue) - pending - len(self._idle)
        return min(need, self.size - len(self._conns) - pending)

    def _returned_locked(self, conn):
        self._idle.append(conn)

    def _gave_up_locked(self):
        return self._stopped and not self._conns and not self._attempts

    def _forget_locked(self, conn, exc):
        self._conns.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._update_state_locked()

    # -- loop side ----------------------------------------------------------------

    def _update_state_locked(self):
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

    def _fill(self, minimum=0):
        with self._lock:
            if self._closed or self._stopped or self._backoff:
                return
            n = max(minimum - len(self._attempts) - len(self._conns), self._room_locked())
            handles = [_Pending() for _ in range(max(0, n))]
            self._attempts.update(handles)
            if handles:
                self._update_state_locked()
        for handle in handles:
            self._start_attempt(handle)

    def _start_attempt(self, handle):
        self.factory.doStart()
        self.factory.startedConnecting(self._connector)
        with self._lock:
            if handle not in self._attempts or self._closed:
                return
        self._launch(handle, self._attempt_done)

    def _attempt_done(self, handle, sock, exc):
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
        self.factory.resetDelay()
        with self._lock:
            self._backoff = False
            self._stopped = False
            conn = self._new_connection_locked(sock, handle.session)
            self._conns.add(conn)
            if not self._handoff_locked(conn):
                self._idle.append(conn)
            self._update_state_locked()
        self._watch(conn)
        self._fill()

    def _attempt_failed(self, probe, exc):
        reason = self._describe_error(exc)
        with self._lock:
            self._failures += 1
            self._stats.connect_failures += 1
            self._stats.last_error = reason
            tell = probe or not self._backoff
            self._backoff = True
        if tell:
            self.factory.clientConnectionFailed(self._connector, reason)
        self.factory.doStop()
        self._after_factory()

    def _after_factory(self):
        factory = self.factory
        gave_up = not factory.continueTrying or (
            callable(getattr(factory, "gaveUp", None)) and factory.gaveUp())
        with self._lock:
            if self._closed:
                return
            if gave_up and self._probe is None:
                self._stopped = True
                self._stop_reason = ("stop_trying() was called" if not factory.continueTrying
                                     else f"gave up after {factory.retries - 1} retries")
            self._update_state_locked()

    def _lost(self, conn, exc):
        self._close_conn(conn)
        self.factory.doStop()  # each connection was one doStart()
        if self._closed:
            return
        if self._on_disconnect is not None:
            self._backend.run_callback(self._on_disconnect, self._loss_reason(exc))
        self._fill()

    def _shutdown(self):
        try:
            self.factory.stopTrying()
        finally:
            self._factory_clock.cancel_all()
            with self._lock:
                attempts, self._attempts = list(self._attempts), set()
                conns, self._conns = list(self._conns), set()
                self._idle.clear()
            for handle in attempts:
                handle.cancel()
            for conn in conns:
                conn.dead = True
                self._close_conn(conn)
                self.factory.doStop()
            self._connector._release(self)

    # -- connector side (the factory's retries land here) -------------------------

    def _connector_connect(self, connector):
        with self._lock:
            if not self._closed and self._probe is None and not self._conns:
                # Seen at once by whoever called connect() (a clock being advanced).
                self._state = State.CONNECTING
                self._changed_locked()
        self._backend.call_soon(self._probe_now)

    def _probe_now(self):
        with self._lock:
            if self._closed or self._probe is not None:
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

    def _connector_stop_connecting(self, connector):
        with self._lock:
            attempts, self._attempts = list(self._attempts), set()
            self._probe = None
        for handle in attempts:
            handle.cancel()
            self.factory.doStop()
        if attempts:
            self._after_factory()
        return bool(attempts)

    def _connector_disconnect(self, connector):
        with self._lock:
            conns = [c for c in self._conns if not c.leased]
        for conn in conns:
            self._mark_lost(conn, ConnectionAbortedError("disconnect() was called"))
