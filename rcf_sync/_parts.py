"""What the parts of a handle may rely on of one another.

A client or pool is put together from parts (``Handle`` and the mixins of
``_usercode``, ``_fork``, ``_liveness`` and ``_protocol_mode``; the client's
loop side is ``_client_loop``). They share
the fields below, set in ``Handle.__init__`` (and the client's or pool's),
and call one another's methods. This base holds the slots of those fields
and declares them and the methods for type checkers; at run time it adds
only ``name`` and the user-code queue made on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ._callbacks import UserCode

if TYPE_CHECKING:
    from collections.abc import Generator

    from ._backends._seam import Backend, Event, Lock
    from ._connection import Connection
    from ._connectors import Connector
    from ._handle import _Pending
    from ._interfaces import IReactorTime
    from ._lease import LeaseQueue, Ticket
    from ._state import State
    from ._stats import Stats
    from ._steps import Step
    from ._tracking import _TrackingClock

__all__ = ["HandleParts"]


class HandleParts:
    """Base of every part of a handle (not public). It owns the slots of
    the fields the parts share; each part adds none, ``Handle``, the client
    and the pool add their own."""

    __slots__ = (
        "__weakref__", "_name", "factory", "clock", "_backend", "_connector", "_user_code",
        "_trusted", "_ours", "_tell_watch", "_caller_thread", "_caller_id",
        "_thread_ident", "_idle", "_lost_on", "_on_connect", "_on_connect_timeout", "_on_disconnect",
        "_saved_clock", "_heartbeat", "_heartbeat_interval", "_lock", "_leases", "_state",
        "_closed", "_halted", "_stats", "_stop_reason", "_changed", "_waiters",
        "_waiting_seen", "_revive", "_serial", "_failures", "_factory_clock",
    )

    @property
    def name(self) -> str:
        """The name logs and messages use: ``name=`` as given, else the
        connector's description (made when asked for: most handles never
        log)."""
        name = self._name
        return name if name is not None else self._connector.describe()

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def _user(self) -> UserCode:
        """The handle's user-code queue (``_callbacks``), made at its first
        use: a client of a factory of ours with no hooks never runs user
        code. Never asked for with the lock held."""
        user = self._user_code
        if user is None:
            with self._lock:
                user = self._user_code
                if user is None:
                    user = self._user_code = UserCode(self._backend, self._lock)
        return user

    def _user_queue(self) -> UserCode:
        """:attr:`_user`, for an attempt that may run user code."""
        return self._user

    if TYPE_CHECKING:
        # -- immutable after construction --------------------------------------
        _name: str | None
        factory: Any
        clock: IReactorTime[Any]
        _backend: Backend
        _connector: Connector
        _trusted: bool
        _ours: frozenset[str]
        _tell_watch: bool
        _caller_thread: int | None
        _caller_id: Callable[[], object]
        _thread_ident: Callable[[], int] | None
        _lost_on: tuple[type[BaseException], ...]
        _on_connect: Callable[[Any], Any] | None
        _on_connect_timeout: float | None
        _on_disconnect: Callable[[Any], Any] | None
        _saved_clock: IReactorTime[Any] | None
        _heartbeat: Callable[[Any], Any] | None
        _heartbeat_interval: float | None
        _proto_mode: bool

        # -- under the handle's lock -----------------------------------------
        _lock: Lock
        _user_code: UserCode | None  # shares the lock; see _user
        _idle: list[Connection]  # popped without the lock by a lease (see _connection)
        _leases: LeaseQueue
        _state: State
        _closed: bool
        _halted: BaseException | None
        _stats: Stats
        _stop_reason: str | None
        _changed: Event | None
        _waiters: int
        _waiting_seen: Event | None
        _revive: bool
        _serial: int
        _failures: int

        # -- the loop's ------------------------------------------------------
        _factory_clock: _TrackingClock | None

        # -- what each part provides the others --------------------------------
        def _mark_lost(self, conn: Connection, exc: BaseException, wait: bool = False) -> bool: ...
        def _close_conn(self, conn: Connection) -> None: ...
        def _cancel_attempt(self, pending: _Pending) -> None: ...
        def _halt_locked(self) -> list[Connection | _Pending]: ...
        def _claim_locked(self, conn: Connection) -> bool: ...
        def _held_locked(self, conn: Connection) -> bool: ...
        def _hand_on_locked(self, conn: Connection) -> Ticket | None: ...
        def _still_ours_locked(self, conn: Connection) -> bool: ...
        def _user_failed(self, where: str, exc: BaseException) -> None: ...
        def _factory_calls(self, calls: list[tuple[str, tuple[Any, ...]]],
                           then: Callable[[Any], None] | None = None,
                           always: bool = False) -> None: ...
        def _user_callback(self, label: str, fn: Callable[..., Any], *args: Any) -> None: ...
        def _on_loop(self, fn: Callable[[], object], timeout: float = 5.0,
                     urgent: bool = False) -> bool: ...
        def _soon_on_loop(self, fn: Callable[[], object]) -> None: ...
        def _enter(self) -> None: ...
        def _forked_locked_state(self) -> None: ...
        def _drop_in_child(self, conn: Connection) -> None: ...
        def _changed_locked(self) -> None: ...
        def _raise_if_hopeless_locked(self) -> None: ...
        def _wait_event_locked(self) -> Event: ...
        def _wait(self, event: Event, deadline: float | None) -> None: ...
        def _steps(self, pending: _Pending) -> Generator[Step, Any, Any]: ...
        def _plain_steps(self) -> bool: ...
        def _take_locked(self) -> Connection | None: ...
        def _wants_more_locked(self) -> bool: ...
        def _fill(self, minimum: int = 0) -> None: ...
        def _refuse_socket(self, what: str) -> None: ...
        def _loss_reason(self, exc: BaseException) -> BaseException: ...
        @property
        def destination(self) -> str: ...
