"""``ReconnectingClientFactory``: Twisted's reconnection policy, faithfully.

The class mirrors ``twisted.internet.protocol.ReconnectingClientFactory``
(Twisted 26.10) attribute for attribute, including its quirks; the
differences are opt-in (keyword arguments with validation, ``jitterMode``,
``maxElapsed``, ``rng``) and leave the default path untouched. It talks only
to an ``IReactorTime``-shaped clock and an ``IConnector``-shaped connector,
so it runs the same under our clocks, a ``FakeClock`` or Twisted's own.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from ._errors import NotConnectingError
from ._interfaces import IConnector, IDelayedCall, IReactorTime
from ._policy import JitterMode, SupportsUniform, jittered_delay, validate_policy_value

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["ReconnectingClientFactory", "uses_protocol"]

log = logging.getLogger("rcf_sync")

# Attributes the constructor accepts as keyword arguments.
_SETTABLE = (
    "maxDelay", "initialDelay", "factor", "jitter", "maxRetries", "noisy",
    "clock", "jitterMode", "maxElapsed", "rng", "delay", "protocol",
)

# State that retries mutate: never pickled (Twisted's list, then ours).
_TRANSIENT = ("connector", "retries", "delay", "continueTrying", "_callID", "clock")
_TRANSIENT_EXTRA = ("_failingSince", "_lastWait")


class FactoryOptions(TypedDict, total=False):
    """The keyword arguments :class:`ReconnectingClientFactory` accepts."""

    maxDelay: float
    initialDelay: float
    factor: float
    jitter: float
    maxRetries: int | None
    noisy: bool
    clock: IReactorTime[Any] | None
    jitterMode: JitterMode
    maxElapsed: float | None
    rng: random.Random | None
    delay: float
    protocol: Callable[[], Any] | None


# What a factory used without a client (and without a clock) schedules on,
# as Twisted's falls back to its reactor. The package sets it (to the thread
# backend's real clock), so that this layer imports nothing above it.
default_clock_provider: Callable[[], IReactorTime[Any]] | None = None


def _default_clock() -> IReactorTime[Any]:
    if default_clock_provider is None:
        raise RuntimeError("this factory has no clock: set factory.clock")
    return default_clock_provider()


class ReconnectingClientFactory:
    """Reconnect with exponential back-off and jitter, exactly as Twisted does.

    The defaults, the order of operations in :meth:`retry` and the log
    messages are Twisted's. Keyword arguments set the attributes of the same
    name after validating them (``ValueError`` naming the attribute); passing
    ``initialDelay`` also sets the starting ``delay`` unless ``delay`` is
    given (Twisted, where ``delay`` is fixed when the class is created, would
    keep 1.0).

    Added, opt-in:

    ``jitterMode``
        ``"twisted"`` (default), ``"full"``, ``"equal"`` or
        ``"decorrelated"``; see :mod:`rcf_sync._policy` and README.rst.
    ``maxElapsed``
        seconds of consecutive failure (on :attr:`clock`) after which trying
        stops as if ``maxRetries`` had run out: no attempt is scheduled to
        start later than that many seconds after the first failure.
    ``rng``
        the source of randomness (a ``random.Random``); ``None`` uses the
        module-level ``random`` functions, as Twisted does, so that
        ``random.seed()`` reproduces Twisted's delays.

    Not thread-safe: a client calls it from its background only. Subclasses
    may override :meth:`clientConnectionFailed`, :meth:`clientConnectionLost`,
    :meth:`startedConnecting` and :meth:`retry` as with Twisted.
    """

    maxDelay: float = 3600
    initialDelay: float = 1.0
    factor: float = 2.7182818284590451  # math.e
    jitter: float = 0.119626565582
    delay: float = initialDelay
    retries: int = 0
    maxRetries: int | None = None
    _callID: IDelayedCall | None = None
    connector: IConnector | None = None
    clock: IReactorTime[Any] | None = None
    continueTrying: int = 1

    # From Twisted's Factory/ClientFactory: what buildProtocol calls (a
    # Protocol subclass or any zero-argument callable), or None.
    protocol: Callable[[], Any] | None = None
    numPorts: int = 0
    noisy: bool = True

    # Beyond Twisted.
    jitterMode: str = "twisted"
    maxElapsed: float | None = None
    rng: random.Random | None = None
    _failingSince: float | None = None
    _lastWait: float | None = None
    _startDelay: float

    def __init__(self, **kwargs: Unpack[FactoryOptions]) -> None:
        for name in kwargs:
            if name not in _SETTABLE:
                raise TypeError(
                    f"ReconnectingClientFactory() got an unexpected keyword argument {name!r}"
                )
        for name, value in kwargs.items():
            setattr(self, name, validate_policy_value(name, value))
        if "initialDelay" in kwargs and "delay" not in kwargs:
            self.delay = self.initialDelay
        if "initialDelay" in kwargs or "delay" in kwargs:
            # Survives pickling (``delay`` does not), so that an unpickled
            # factory starts from the same delay as a new one.
            self._startDelay = self.delay

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} initialDelay={self.initialDelay!r} factor={self.factor!r} "
            f"maxDelay={self.maxDelay!r} jitter={self.jitter!r} maxRetries={self.maxRetries!r}>"
        )

    # -- Twisted's Factory/ClientFactory surface ------------------------------

    @classmethod
    def forProtocol(cls, protocol: Callable[[], Any], *args: Any, **kwargs: Any) -> Self:
        """A new factory, ``cls(*args, **kwargs)``, whose :attr:`protocol` is
        ``protocol`` (a :class:`~rcf_sync.Protocol` subclass or any
        zero-argument callable returning a protocol), as Twisted's."""
        factory = cls(*args, **kwargs)
        factory.protocol = protocol
        return factory

    def buildProtocol(self, addr: object) -> Any:
        """Make the protocol for a new connection to ``addr`` (an
        ``IPv4Address``, ``IPv6Address`` or ``UNIXAddress``): call
        :attr:`protocol` with no arguments, set the result's ``factory`` to
        this factory and return it, as Twisted does.

        Override it to build protocols another way (Twisted's documented
        reconnecting client calls :meth:`resetDelay` here); returning ``None``
        closes the new connection at once. ``TypeError`` when
        :attr:`protocol` is ``None`` (Twisted fails an assertion)."""
        if self.protocol is None:
            raise TypeError(
                f"{type(self).__name__}.protocol is None: set protocol "
                "(or use forProtocol) or override buildProtocol"
            )
        p = self.protocol()
        p.factory = self
        return p

    def logPrefix(self) -> str:
        """Describe this factory for log messages (its class name)."""
        return self.__class__.__name__

    def doStart(self) -> None:
        """Count a user and call :meth:`startFactory` for the first one.

        Called by the client before each connection attempt, as Twisted's
        connectors do; not for applications to call."""
        if not self.numPorts:
            if self.noisy:
                log.info("Starting factory %r", self)
            self.startFactory()
        self.numPorts = self.numPorts + 1

    def doStop(self) -> None:
        """Uncount a user and call :meth:`stopFactory` after the last one.

        With no user counted it does nothing at all (no hook, no log), as
        Twisted's: a stray call is tolerated rather than an error."""
        if self.numPorts == 0:
            return
        self.numPorts = self.numPorts - 1
        if not self.numPorts:
            if self.noisy:
                log.info("Stopping factory %r", self)
            self.stopFactory()

    def startFactory(self) -> None:
        """Hook run before the first connection attempt; does nothing."""

    def stopFactory(self) -> None:
        """Hook run after the last connection ends; does nothing."""

    def startedConnecting(self, connector: IConnector) -> None:
        """Hook called when a connection attempt starts; does nothing.

        An override may call ``connector.stopConnecting()`` to abandon it."""

    # -- the reconnection policy ---------------------------------------------

    def clientConnectionFailed(self, connector: IConnector, reason: object) -> None:
        """A connection attempt failed: while trying, remember the connector
        and :meth:`retry`."""
        if self.continueTrying:
            self.connector = connector
            self.retry()

    def clientConnectionLost(self, connector: IConnector, unused_reason: object) -> None:
        """An established connection was lost: while trying, remember the
        connector and :meth:`retry`."""
        if self.continueTrying:
            self.connector = connector
            self.retry()

    def retry(self, connector: IConnector | None = None) -> None:
        """Schedule ``connector.connect()`` after the next back-off delay.

        Does nothing (but log) after :meth:`stopTrying`. Raises
        ``ValueError("no connector to retry")`` when neither the argument nor
        :attr:`connector` names one. Counts the retry, abandons past
        ``maxRetries`` (or ``maxElapsed``), applies the jitter, schedules the
        call with ``clock.callLater`` (keeping the handle in ``_callID``) and
        grows ``delay`` by ``factor`` up to ``maxDelay``.
        """
        if not self.continueTrying:
            if self.noisy:
                log.info("Abandoning %s on explicit request", connector)
            return

        if connector is None:
            if self.connector is None:
                raise ValueError("no connector to retry")
            connector = self.connector

        self.retries += 1
        if self.maxRetries is not None and (self.retries > self.maxRetries):
            if self.noisy:
                log.info("Abandoning %s after %d retries.", connector, self.retries)
            return

        if self.maxElapsed is not None and self.clock is None:
            self.clock = _default_clock()

        if self.jitterMode == "twisted":
            if self.jitter:
                self.delay = (self.rng or random).normalvariate(
                    self.delay, self.delay * self.jitter
                )
            wait = self.delay
        else:
            rng: SupportsUniform = self.rng or random
            wait = jittered_delay(
                self.jitterMode,
                base=min(self.delay, self.maxDelay),
                previous=self.initialDelay if self._lastWait is None else self._lastWait,
                initial=self.initialDelay,
                factor=self.factor,
                max_delay=self.maxDelay,
                rng=rng,
            )
            self._lastWait = wait

        if self.maxElapsed is not None and self.clock is not None:  # (set just above)
            now = self.clock.seconds()
            if self._failingSince is None:
                self._failingSince = now
            if now + wait - self._failingSince > self.maxElapsed:
                if self.noisy:
                    log.info(
                        "Abandoning %s after %d retries: maxElapsed (%rs) reached.",
                        connector, self.retries, self.maxElapsed,
                    )
                self._failingSince = -float("inf")
                return

        if self.noisy:
            log.info("%s will retry in %d seconds", connector, wait)

        def reconnector() -> None:
            self._callID = None
            connector.connect()

        if self.clock is None:
            self.clock = _default_clock()
        self._callID = self.clock.callLater(wait, reconnector)

        self.delay = min(self.delay * self.factor, self.maxDelay)

    def stopTrying(self) -> None:
        """Stop reconnecting: cancel the pending retry, clear
        ``continueTrying`` and call ``connector.stopConnecting()``, ignoring
        :class:`~rcf_sync.NotConnectingError`."""
        if self._callID:
            self._callID.cancel()
            self._callID = None
        self.continueTrying = 0
        if self.connector:
            try:
                self.connector.stopConnecting()
            except NotConnectingError:
                pass
            except Exception as exc:
                # A Twisted connector raises Twisted's own NotConnectingError.
                if type(exc).__name__ != "NotConnectingError":
                    raise

    def resetDelay(self) -> None:
        """Forget past failures: ``delay = initialDelay``, ``retries = 0``,
        ``continueTrying = 1``. Like Twisted it drops ``_callID`` without
        cancelling a pending retry."""
        self.delay = self.initialDelay
        self.retries = 0
        self._callID = None
        self.continueTrying = 1
        if self._failingSince is not None or self._lastWait is not None:
            self._failingSince = None
            self._lastWait = None

    def gaveUp(self) -> bool:
        """True when :meth:`retry` abandoned because ``maxRetries`` or
        ``maxElapsed`` ran out (until :meth:`resetDelay`)."""
        if self.maxRetries is not None and self.retries > self.maxRetries:
            return True
        return self._failingSince == -float("inf")

    def __getstate__(self) -> dict[str, Any]:
        """Drop everything that attempts and failures mutate, so that an
        unpickled factory behaves as this one did when new."""
        state = self.__dict__.copy()
        for key in _TRANSIENT + _TRANSIENT_EXTRA:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_startDelay" in state:
            self.delay = state["_startDelay"]


def uses_protocol(factory: object) -> bool:
    """True when ``factory`` builds protocols: its ``protocol`` is set or its
    class overrides :meth:`ReconnectingClientFactory.buildProtocol`."""
    if getattr(factory, "protocol", None) is not None:
        return True
    build = getattr(type(factory), "buildProtocol", None)
    return build is not None and build is not ReconnectingClientFactory.buildProtocol
