"""Protocol mode: a client that drives the protocol its factory builds.

Theory of operation. When the factory has a protocol (``uses_protocol``),
each connection attempt ends, after ``on_connect``, with
``factory.buildProtocol(addr)`` in the handle's user-code queue (raising
fails the attempt, as in Twisted). A ``None`` protocol gets Twisted's
treatment: the new connection is closed in order at once, never read, and
the factory hears ``clientConnectionLost(connector, Failure(ConnectionDone))``
and ``doStop()``; the back-off goes on. Otherwise the delay is reset and the
connection is installed with a :class:`~rcf_sync._driver.Driver` in place of
the idle watch (``conn.watch``: the handle closes it before the socket,
whatever ends the connection), so the idle watch and the leases never see
the protocol's bytes. The factory's methods then run in the same user-code
queue as the protocol's callbacks, so ``connectionLost`` comes before
``clientConnectionLost``, as in Twisted.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._connection import Connection, Owner
from ._driver import Driver, peer_address
from ._errors import ConnectionDone, ConnectionLost, ConnectTimeout, ProtocolModeError
from ._parts import HandleParts
from ._state import Event
from ._steps import UserCall
from ._timeouts import _deadline, _remaining

if TYPE_CHECKING:
    from ._handle import _Pending
    from ._steps import Step

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["ProtocolMode"]

log = logging.getLogger("rcf_sync")


class ProtocolMode(HandleParts):
    """Mixin for :class:`~rcf_sync.ReconnectingClient`: the protocol side."""

    __slots__ = ()

    if TYPE_CHECKING:  # the client's, used here
        _conn: Connection | None

        def _wait_live(self, pick_locked: Callable[[], T | None], timeout: float | None,
                       fail_after_failures: int | None) -> T: ...
        def _connected(self, pending: _Pending, sock: socket.socket) -> None: ...
        def _after_factory(self, event: Event | None) -> None: ...
        def _tell_lost(self, reason: BaseException, event: Event) -> None: ...

    @property
    def protocol(self) -> Any:
        """The live protocol (its ``connectionMade`` has returned and its
        connection has not ended), or ``None``. Read it from anywhere; call
        into it with :meth:`call_protocol`."""
        with self._lock:
            driver = self._driver_locked()
            return driver.protocol if driver is not None and driver.made else None

    def wait_protocol(self, timeout: float | None = None,
                      fail_after_failures: int | None = None) -> Any:
        """Block until a protocol is live and return it (as :attr:`protocol`).

        Waits and raises as :meth:`wait_connected` does: ``ConnectTimeout``,
        ``GaveUp`` (also after ``fail_after_failures`` failed attempts),
        ``ClientClosed``; ``ProtocolModeError`` if the factory has no protocol."""
        if not self._proto_mode:
            raise ProtocolModeError(
                f"{self.name}: the factory has no protocol (set factory.protocol or override "
                "buildProtocol); use wait_connected() and connection()", self.destination)
        return self._wait_live(self._live_protocol_locked, timeout, fail_after_failures)

    def call_protocol(self, fn: Callable[..., R], *args: Any, timeout: float | None = None,
                      **kwargs: Any) -> R:
        """Run ``fn(protocol, *args, **kwargs)`` in the protocol's own order
        (after the callbacks already queued, never concurrently with them)
        and return its result or raise its exception. Waits for a live
        protocol first; ``timeout`` bounds the whole call
        (``ConnectTimeout``). ``ConnectionLost`` if the connection ends
        before ``fn`` runs. Blocks the caller; do not call it from the
        protocol's own callbacks (it would wait for itself)."""
        deadline = _deadline(timeout)
        self.wait_protocol(timeout=timeout)
        with self._lock:
            driver = self._driver_locked()
        if driver is None:
            raise self._protocol_gone(None)
        done = self._backend.event()
        outcome: list[tuple[Any, BaseException | None]] = []

        def run() -> Any:
            if driver.ended:
                raise self._protocol_gone(driver)
            return fn(driver.protocol, *args, **kwargs)

        def finished(result: Any, exc: BaseException | None) -> None:
            outcome.append((result, exc))
            done.set()

        call = self._user.run(run, (), finished)
        remaining = _remaining(deadline)
        if not done.wait(None if remaining is None else max(0.0, remaining)):
            self._user.abandon(call)
            raise ConnectTimeout(
                f"{self.name}: call_protocol({getattr(fn, '__name__', fn)!r}) did not finish in "
                f"{timeout}s (it waits behind the protocol's callbacks)", self.destination)
        result, exc = outcome[0]
        if exc is not None:
            raise exc
        answer: R = result
        return answer

    # -- the handle methods, refused -------------------------------------------------

    def _refuse_socket(self, what: str) -> None:
        if self._proto_mode:
            raise ProtocolModeError(
                f"{self.name} runs a protocol ({type(self.factory).__name__} builds one): its "
                f"socket belongs to the protocol, so {what} is not available; use "
                "client.protocol, client.wait_protocol() or client.call_protocol()",
                self.destination)

    # -- loop side -------------------------------------------------------------------

    def _plain_steps(self) -> bool:
        return not self._proto_mode and super()._plain_steps()

    def _steps(self, pending: _Pending) -> Generator[Step, Any, Any]:
        # Handle mode: the handle's steps as they are, no generator around them.
        steps = super()._steps(pending)
        return self._protocol_steps(steps, pending) if self._proto_mode else steps

    def _protocol_steps(self, steps: Generator[Step, Any, Any],
                        pending: _Pending) -> Generator[Step, Any, Any]:
        sock = yield from steps
        try:
            addr = peer_address(sock)
            pending.protocol = yield UserCall(self.factory.buildProtocol, addr)
        except BaseException as exc:
            if isinstance(exc, Exception):  # not a cancellation
                # As Twisted: logged, closed in order, a failed attempt.
                log.error("%s: %s.buildProtocol() raised %s: %s; the attempt failed",
                          self.name, type(self.factory).__name__, type(exc).__name__, exc,
                          exc_info=(type(exc), exc, exc.__traceback__))
            _close_in_order(sock)
            raise
        return sock

    def _protocol_built(self, pending: _Pending, sock: socket.socket) -> None:
        """Loop: the attempt made a connection and buildProtocol returned."""
        if pending.protocol is not None:
            self._factory_calls([("resetDelay", ())], lambda _: self._connected(pending, sock))
            return
        # Twisted: loseConnection() on the new transport, closed in order on
        # the next turn without reading, then clientConnectionLost with
        # ConnectionDone and doStop; the back-off goes on (no resetDelay).
        _close_in_order(sock)
        reason = ConnectionDone(
            f"connection to {self.destination} closed: "
            f"{type(self.factory).__name__}.buildProtocol() returned None", self.destination)
        with self._lock:
            self._stats.connects += 1
            self._stats.losses += 1
            self._stats.last_error = reason
            self._failures += 1
        # A connection that never had a protocol: to the state, a failed attempt.
        self._tell_lost(reason, Event.FAILED)

    def _drive(self, conn: Connection, protocol: Any) -> None:
        """Loop: ``conn`` is installed; start driving ``protocol`` over it."""
        driver = Driver(self, conn, protocol)
        conn.watch = driver
        driver.start()

    def _settle_reason(self, conn: Connection, exc: BaseException) -> BaseException:
        """Loop, ``conn`` was lost with ``exc``: the reason as an exception."""
        driver = conn.watch
        if isinstance(driver, Driver):
            return driver.settle(exc)
        return self._loss_reason(exc)

    def _lose_protocol_connection(self) -> bool:
        """``connector.disconnect()`` in protocol mode: the transport's
        ``loseConnection()`` (True if there was a protocol to tell)."""
        with self._lock:
            driver = self._driver_locked()
        if driver is None:
            return False
        driver.transport.loseConnection()
        return True

    # -- helpers -----------------------------------------------------------------------

    def _driver_locked(self) -> Driver | None:
        conn = self._conn
        if conn is None or conn.owner is Owner.DEAD:
            return None
        driver = conn.watch
        return driver if isinstance(driver, Driver) and not driver.ended else None

    def _live_protocol_locked(self) -> Any:
        driver = self._driver_locked()
        return driver.protocol if driver is not None and driver.made else None

    def _protocol_gone(self, driver: Driver | None) -> ConnectionLost:
        return ConnectionLost(f"the connection to {self.destination} ended before the call ran",
                              self.destination, driver._reason if driver is not None else None)


def _close_in_order(sock: socket.socket) -> None:
    """Close ``sock`` as Twisted's orderly close does: shutdown, then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
