"""The shapes rcf_sync talks to, as :class:`typing.Protocol` classes.

They name, for type checkers, what the factory and the clients need from a
clock, from what a clock schedules, and from a connector; nothing has to
inherit from them. Twisted's ``task.Clock`` and reactors, our
:class:`~rcf_sync.testing.FakeClock` and the thread backend's clock all
satisfy :class:`IReactorTime`; the built-in connectors, Twisted's connectors
and any object with the four methods satisfy :class:`IConnector`.

:class:`IReactorTime` is generic in the type of the delayed calls it hands
out, because Twisted declares its own as a ``zope.interface`` interface,
which no protocol can describe: ``IReactorTime[Any]`` accepts every clock,
``IReactorTime[DelayedCall]`` is what ``FakeClock`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Protocol, TypeVar

__all__ = ["IConnector", "IDelayedCall", "IReactorTime"]

_DC_co = TypeVar("_DC_co", covariant=True)


class IDelayedCall(Protocol):
    """A scheduled call, as Twisted's ``IDelayedCall``."""

    def getTime(self) -> float:
        """The clock time at which the call will run."""
        ...

    def cancel(self) -> None:
        """Unschedule the call."""
        ...

    def delay(self, secondsLater: float) -> None:
        """Run the call ``secondsLater`` after the time it is scheduled for."""
        ...

    def reset(self, secondsFromNow: float) -> None:
        """Run the call ``secondsFromNow`` after the present time."""
        ...

    def active(self) -> bool:
        """True until the call has run or been cancelled."""
        ...


class IReactorTime(Protocol[_DC_co]):
    """A clock that schedules calls, as Twisted's ``IReactorTime``."""

    def seconds(self) -> float:
        """The present time, in seconds."""
        ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> _DC_co:
        """Call ``callable(*args, **kw)`` ``delay`` seconds from now."""
        ...

    def getDelayedCalls(self) -> Sequence[_DC_co]:
        """The calls scheduled and not yet run or cancelled."""
        ...


class IConnector(Protocol):
    """What a factory drives, as Twisted's ``IConnector``."""

    def connect(self) -> None:
        """Start a connection attempt."""
        ...

    def stopConnecting(self) -> None:
        """Abandon the attempt in progress."""
        ...

    def disconnect(self) -> None:
        """Drop the connection, or abandon the attempt in progress."""
        ...

    def getDestination(self) -> object:
        """The address connected to."""
        ...
