"""The factory's view of the client's clock: what it schedules is
remembered, so that the client can cancel it for the factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._interfaces import IDelayedCall, IReactorTime

__all__ = ["_TrackingClock", "_TrackedCall"]


class _TrackingClock:
    """The client's clock as its factory sees it while the client runs:
    every call scheduled through it is remembered, so that ``close()`` and
    ``reconnect_now()`` can cancel them (even a retry that ``resetDelay()``
    made the factory forget). Everything else is the wrapped clock's."""

    __slots__ = ("_clock", "_calls", "_prune_at")

    def __init__(self, clock: IReactorTime[Any]) -> None:
        self._clock = clock
        self._calls: list[_TrackedCall] | None = None  # made by the first callLater
        self._prune_at = 8

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, fn: Callable[..., object], *args: object,
                  **kw: object) -> _TrackedCall:
        call = _TrackedCall(self._clock.callLater(delay, fn, *args, **kw))
        calls = self._calls
        if calls is None:
            calls = self._calls = []
        calls.append(call)
        if len(calls) > self._prune_at:
            calls[:] = [c for c in calls if c.active()]
            self._prune_at = max(8, 2 * len(calls))
        return call

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()

    def cancel_all(self) -> int:
        """Cancel every call still pending; return how many there were."""
        calls, self._calls = self._calls, None
        n = 0
        for call in calls or ():
            if call.active():
                try:
                    call.cancel()
                    call.swept = True
                    n += 1
                except Exception:
                    pass
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clock, name)

    def __repr__(self) -> str:
        return repr(self._clock)


class _TrackedCall:
    """A delayed call as the factory holds it: once the client has
    cancelled it on the factory's behalf (``reconnect_now()``, ``close()``),
    the factory's own later ``cancel()`` (from ``stopTrying()``) is quiet,
    as if it had been the one to cancel."""

    __slots__ = ("_call", "swept")

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call
        self.swept = False

    def cancel(self) -> None:
        if not self.swept:
            self._call.cancel()

    def active(self) -> bool:
        return self._call.active()

    def getTime(self) -> float:
        return self._call.getTime()

    def reset(self, secondsFromNow: float) -> None:
        self._call.reset(secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        self._call.delay(secondsLater)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __repr__(self) -> str:
        return repr(self._call)

