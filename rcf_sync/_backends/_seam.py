"""The backend seam: what a client or pool asks of its backend, as
:class:`typing.Protocol` classes (for type checkers; nothing inherits).

A backend hands a handle every concurrency primitive it needs, so client
code never imports ``threading`` or ``gevent``."""

from __future__ import annotations

import socket
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .._callbacks import UserCode
    from .._interfaces import IDelayedCall, IReactorTime
    from .._steps import Step

__all__ = ["Backend", "Event", "Lock", "IdleWatch", "Cancellable", "Abandonable",
           "Steps", "Deliver"]

#: An attempt: a generator of steps that returns the connected socket.
Steps = Generator["Step", Any, Any]
#: ``deliver(result, exc)``: exactly one of them is not None.
Deliver = Callable[[Any, "BaseException | None"], None]


class Lock(Protocol):
    """A mutual-exclusion lock (``with lock:``)."""

    def __enter__(self) -> bool: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> None: ...


class Event(Protocol):
    """An event callers of the backend may wait on."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool | None: ...


class IdleWatch(Protocol):
    """Watches an idle connection for bytes nobody asked for and hang-ups."""

    def leased(self) -> None:
        """The lease holder took the connection (called only when the
        backend's ``watch_follows_leases`` is true)."""
        ...

    def released(self, now: float) -> None:
        """The lease holder gave it back idle (at ``time.monotonic()``
        ``now``; called only when ``watch_follows_leases`` is true)."""
        ...

    def rearm(self) -> None:
        """Loop: watch again (after a check found it quiet)."""
        ...

    def close(self) -> None:
        """Stop watching (before the socket is closed)."""
        ...

    def abandon(self) -> None:
        """After a fork: stop reacting, starting nothing in the child."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Abandonable(Protocol):
    def abandon(self) -> None: ...


class Backend(Protocol):
    """What :class:`~rcf_sync.ReconnectingClient` and the pool use."""

    @property
    def name(self) -> str: ...

    @property
    def clock(self) -> IReactorTime[Any]:
        """The real clock (monotonic seconds) whose calls run on the loop."""
        ...

    @property
    def watch_follows_leases(self) -> bool:
        """True: the handle tells each idle watch of every lease
        (``leased()``/``released()``); false: the watch reads
        ``idle_since(arg)`` when it needs to know, and a lease costs it
        nothing."""
        ...

    @property
    def caller_thread(self) -> int | None:
        """The OS thread allowed to call the handle's methods, or None for any."""
        ...

    def lock(self) -> Lock: ...
    def event(self) -> Event: ...

    def thread_ident(self) -> int:
        """The calling OS thread's identity (even under monkey-patching)."""
        ...

    def caller_id(self) -> object:
        """Who is calling, as the backend schedules callers: the thread's
        identity, or the greenlet."""
        ...

    def describe_caller_error(self) -> str:
        """Why the calling thread may not use this backend's handles."""
        ...

    def acquire(self) -> None:
        """Count a handle using the backend (its background starts)."""
        ...

    def release(self, timeout: float = 5.0) -> None:
        """Uncount a handle; after the last, stop the background."""
        ...

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the loop soon; never blocks."""
        ...

    def call_first(self, fn: Callable[..., object], *args: object) -> None:
        """As :meth:`call_soon`, ahead of what is already queued."""
        ...

    def in_loop(self) -> bool: ...

    def wake(self, event: Event) -> None:
        """Set ``event``, for a waiter to see a change: the loop may gather
        its wake-ups and set them at the end of its current slice of work."""
        ...

    def call_later_real(self, seconds: float, fn: Callable[..., object],
                        *args: object) -> IDelayedCall:
        """A timer in real time, whatever the handle's back-off clock."""
        ...

    def start_attempt(self, steps: Steps, timeout: float | None,
                      deliver: Callable[[Any, BaseException | None], None],
                      user_code: Callable[[], UserCode]) -> Cancellable:
        """Drive an attempt; ``deliver(sock, exc)`` on the loop at its end;
        ``user_code()``: the queue its user calls run in."""
        ...

    def run_blocking(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     deliver: Deliver, threaded: bool = False) -> Abandonable:
        """Run user code off the loop; ``deliver(result, exc)`` on the loop."""
        ...

    def watch_idle(self, sock: socket.socket, callback: Callable[[Any], None], arg: Any,
                   idle_since: Callable[[Any], float | None]) -> IdleWatch:
        """Call ``callback(arg)`` on the loop when the idle connection on
        ``sock`` has bytes or hangs up. ``idle_since(arg)``: the
        ``time.monotonic()`` at which it was last given back, None while
        someone holds it."""
        ...

    def settle(self, timeout: float) -> None:
        """Wait (bounded) until what the backend cancelled is gone."""
        ...
