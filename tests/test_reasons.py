"""What the client and the pool tell the factory (and on_disconnect) when an
attempt fails or a connection ends: Twisted-shaped Failures, on both backends."""

import pytest
from conftest import echo

from rcf_sync import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectTimeout,
    Failure,
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
    TCPConnector,
)
from rcf_sync.testing import FaultProxy


class Telling(ReconnectingClientFactory):
    """Records every reason it is given, then does what the base class does."""

    def __init__(self, kit, **kw):
        super().__init__(initialDelay=0.02, maxDelay=0.1, jitter=0, **kw)
        self.failed, self.lost = [], []
        self.told = kit.event()

    def clientConnectionFailed(self, connector, reason):
        self.failed.append(reason)
        self.told.set()
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector, reason):
        self.lost.append(reason)
        self.told.set()
        super().clientConnectionLost(connector, reason)


def test_a_refused_attempt_is_a_failure_of_the_connect_error(kit, free_port, no_leaks):
    """If the connect is refused, then clientConnectionFailed gets a Failure of ConnectionRefusedError and last_error is the plain exception."""
    factory = Telling(kit)
    with ReconnectingClient(("127.0.0.1", free_port), factory=factory, backend=kit.name) as c:
        assert factory.told.wait(5)
        reason = factory.failed[0]
        assert isinstance(reason, Failure) and reason.check(ConnectionRefusedError)
        assert reason.trap(OSError) is OSError
        assert isinstance(c.stats.last_error, ConnectionRefusedError)
        assert not isinstance(c.stats.last_error, Failure)


def test_a_timed_out_attempt_is_a_failure_of_connect_timeout(kit, hung_address, no_leaks):
    """If the connect times out, then the factory's Failure holds ConnectTimeout (also a TimeoutError)."""
    factory = Telling(kit)
    connector = TCPConnector(*hung_address, timeout=0.2)
    with ReconnectingClient(connector, factory=factory, backend=kit.name):
        assert factory.told.wait(5)
    assert factory.failed[0].check(ConnectTimeout) and factory.failed[0].check(TimeoutError)


def test_a_fin_on_an_idle_connection_is_connection_done(kit, server, no_leaks):
    """If the server closes an idle connection in order, then the factory gets ConnectionDone and on_disconnect the same exception."""
    factory = Telling(kit)
    seen = []
    with ReconnectingClient(server.address, factory=factory, backend=kit.name,
                            on_disconnect=seen.append) as c:
        c.wait_connected(timeout=5)
        kit.drop(server)
        assert factory.told.wait(5)
        c.wait_connected(timeout=5)
    reason = factory.lost[0]
    assert reason.check(ConnectionDone) and not reason.check(ConnectionLost)
    assert isinstance(c.stats.last_error, ConnectionResetError)  # as before: a plain exception
    assert seen and seen[0] is reason.value


def test_a_reset_is_connection_lost_never_done(kit, server, no_leaks):
    """If the peer resets an idle connection, then the factory gets ConnectionLost chained to the reset, not ConnectionDone."""
    factory = Telling(kit)
    with FaultProxy(server.address) as proxy:
        with ReconnectingClient(proxy.address, factory=factory, backend=kit.name) as c:
            c.wait_connected(timeout=5)
            kit.block(proxy.reset_all)
            assert factory.told.wait(5)
    reason = factory.lost[0]
    assert reason.check(ConnectionLost) and not reason.check(ConnectionDone, ConnectionAborted)
    assert isinstance(reason.value.reason, ConnectionResetError)


def test_disconnect_is_an_orderly_close(kit, server, no_leaks):
    """If connector.disconnect() closes the connection, then the factory hears ConnectionDone, as from Twisted's loseConnection()."""
    factory = Telling(kit)
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        c.wait_connected(timeout=5)
        c.connector.disconnect()
        assert factory.told.wait(5)
        assert c.wait_state(State.WAITING, State.CONNECTING, State.CONNECTED, timeout=5)
    assert factory.lost[0].check(ConnectionDone)


def test_the_pool_tells_the_factory_with_a_failure(kit, free_port, no_leaks):
    """If a pool's attempt is refused, then its factory gets a Failure of ConnectionRefusedError."""
    factory = Telling(kit)
    with ReconnectingPool(("127.0.0.1", free_port), 2, factory=factory, backend=kit.name) as pool:
        with pytest.raises(ConnectTimeout):
            pool.call(echo, b"x", timeout=0.5)
        assert factory.told.wait(5)
    assert factory.failed[0].check(ConnectionRefusedError)
