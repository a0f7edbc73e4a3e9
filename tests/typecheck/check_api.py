"""Type expectations on the public API, checked by mypy (``.ci/checks``), not run.

Each ``assert_type`` states what a user's type checker must infer; each call
states what it must accept. A change of signature that breaks a caller's
types fails the check. Lines marked ``# type: ignore[...]`` must stay errors
(mypy's ``warn_unused_ignores`` reports them if they stop being errors).
"""

from __future__ import annotations

import random
import socket
import ssl
from typing import Any

from twisted.internet import task
from typing_extensions import assert_type

import rcf_sync
from rcf_sync import (
    Failure,
    IConnector,
    IDelayedCall,
    IPv4Address,
    IPv6Address,
    IReactorTime,
    Protocol,
    ReconnectingClientFactory,
    SocketFactoryConnector,
    TCPAddress,
    TCPConnector,
    UNIXAddress,
    UNIXConnector,
)
from rcf_sync._timers import DelayedCall
from rcf_sync.testing import EchoServer, FakeClock, FaultProxy, echo_round_trip

assert_type(rcf_sync.__version__, str)

# -- the factory --------------------------------------------------------------

factory = ReconnectingClientFactory(initialDelay=0.1, maxDelay=30, maxRetries=20, jitterMode="full")
assert_type(factory.initialDelay, float)
assert_type(factory.delay, float)
assert_type(factory.maxRetries, "int | None")
assert_type(factory.retries, int)
assert_type(factory.maxElapsed, "float | None")
assert_type(factory.connector, "IConnector | None")
assert_type(factory.clock, "IReactorTime[Any] | None")
assert_type(factory.gaveUp(), bool)
assert_type(factory.retry(), None)
ReconnectingClientFactory(rng=random.Random(1), noisy=False, maxElapsed=None)
ReconnectingClientFactory(initialDelay="1")  # type: ignore[arg-type]
ReconnectingClientFactory(jitterMode="fancy")  # type: ignore[arg-type]
ReconnectingClientFactory(initialdelay=1.0)  # type: ignore[call-arg]



class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class MyFactory(ReconnectingClientFactory):
    pass


assert_type(ReconnectingClientFactory.forProtocol(Echo), ReconnectingClientFactory)
assert_type(MyFactory.forProtocol(Echo, initialDelay=0.5), MyFactory)
factory.protocol = Echo
factory.protocol = None
factory.protocol = 42  # type: ignore[assignment]

# -- reasons and addresses, in Twisted's shapes ----------------------------

reason = Failure(ConnectionRefusedError("refused"))
assert_type(reason.getErrorMessage(), str)
assert_type(reason.value, BaseException)
matched: type | str | None = reason.check(ConnectionRefusedError, "builtins.OSError")
Failure("not an exception")  # type: ignore[arg-type]
assert_type(IPv4Address("TCP", "127.0.0.1", 80).port, int)
assert_type(IPv6Address("TCP", "::1", 80).scopeID, int)
assert_type(UNIXAddress("/tmp/app.sock").name, "bytes | None")

# -- clocks: ours and Twisted's are both IReactorTime -----------------------

fake = FakeClock()
assert_type(fake.seconds(), float)
call = fake.callLater(1.0, print, "hello", sep="")
assert_type(call, DelayedCall)
assert_type(call.getTime(), float)
assert_type(call.active(), bool)
assert_type(fake.getDelayedCalls(), "list[DelayedCall]")
fake.advance(1.0)
fake.pump([0.5, 0.5])

ours: IReactorTime[IDelayedCall] = fake
twisted_clock: IReactorTime[Any] = task.Clock()
ReconnectingClientFactory(clock=fake)
ReconnectingClientFactory(clock=task.Clock())
factory.clock = task.Clock()
factory.clock = fake
ReconnectingClientFactory(clock=object())  # type: ignore[arg-type]

delayed: IDelayedCall = call


def schedule_on(clock: IReactorTime[IDelayedCall]) -> IDelayedCall:
    return clock.callLater(0.5, lambda: None)


assert_type(schedule_on(fake), IDelayedCall)

# -- connectors ---------------------------------------------------------------

tcp = TCPConnector("127.0.0.1", 6379, timeout=5, ssl_context=ssl.create_default_context())
assert_type(tcp.getDestination(), TCPAddress)
assert_type(tcp.getDestination().port, int)
assert_type(tcp.describe(), str)
assert_type(tcp.timeout, "float | None")
assert_type(tcp.ssl_context, "ssl.SSLContext | None")
unix = UNIXConnector("/tmp/app.sock")
assert_type(unix.getDestination(), UNIXAddress)
made = SocketFactoryConnector(lambda: socket.create_connection(("127.0.0.1", 1)), name="made")
assert_type(made.getDestination(), str)
TCPConnector("127.0.0.1", "6379")  # type: ignore[arg-type]


class MyConnector:
    """A user's connector: no base class, only the four methods."""

    def connect(self) -> None: ...
    def stopConnecting(self) -> None: ...
    def disconnect(self) -> None: ...
    def getDestination(self) -> str:
        return "mine"


connectors: list[IConnector] = [tcp, unix, made, MyConnector()]
factory.clientConnectionFailed(MyConnector(), ConnectionRefusedError())
factory.retry(MyConnector())
factory.retry(object())  # type: ignore[arg-type]

# -- the testing kit ----------------------------------------------------------

with EchoServer() as echo:
    assert_type(echo, EchoServer)
    assert_type(echo.address, "tuple[str, int]")
    assert_type(echo.wait_accepted(1, timeout=5), bool)
    with FaultProxy(echo.address) as proxy:
        assert_type(proxy, FaultProxy)
        assert_type(proxy.address, "tuple[str, int]")
        assert_type(proxy.connection_count, int)
        proxy.delay(0.1)
        proxy.cut_after(10)


def round_trip(sock: socket.socket) -> bytes:
    return assert_type(echo_round_trip(sock, b"ping"), bytes)


# -- the client and the pool ------------------------------------------------------


def get(sock: Any, key: str) -> int:
    return len(key)


def clients() -> None:
    client = rcf_sync.ReconnectingClient(("127.0.0.1", 6379), backend="thread",
                                         lost_on=(ValueError,), name="redis")
    assert_type(client, rcf_sync.ReconnectingClient)
    with client as c:
        assert_type(c, rcf_sync.ReconnectingClient)
        assert_type(c.call(get, "key", attempts=3, timeout=1.0), int)
        assert_type(c.call(lambda sock: b"x"), bytes)
        with c.connection(timeout=1) as conn:
            assert_type(conn, Any)
        assert_type(c.wait_connected(timeout=1), socket.socket)
        assert_type(c.state, rcf_sync.State)
        assert_type(c.stats, rcf_sync.Stats)
        assert_type(c.stats.connects, int)
        assert_type(c.stats.last_error, "BaseException | None")
        assert_type(c.wait_state(rcf_sync.State.CONNECTED, timeout=1), rcf_sync.State)
        assert_type(c.wait_waiting(2, timeout=1), int)
        c.sendall(b"ping", timeout=1)
        assert_type(c.recv(4, timeout=1), bytes)
        c.stop_trying()
        c.reconnect_now()
        assert_type(c.call_protocol(lambda p: 1), int)
        c.close(timeout=1)
    clock = FakeClock()
    rcf_sync.ReconnectingClient(TCPConnector("127.0.0.1", 1), clock=clock)
    rcf_sync.ReconnectingClient(("127.0.0.1", 1), clock=task.Clock())
    rcf_sync.ReconnectingClient(("127.0.0.1", 1), on_connect=lambda sock: sock.fileno())
    rcf_sync.ReconnectingClient("/run/app.sock")
    rcf_sync.ReconnectingClient(("127.0.0.1", 1), lost_on=42)  # type: ignore[arg-type]
    pool = rcf_sync.ReconnectingPool(("127.0.0.1", 6379), 4)
    with pool as p:
        assert_type(p, rcf_sync.ReconnectingPool)
        assert_type(p.call(get, "key"), int)
        assert_type(p.probes, int)
        p.reconnect_now()
