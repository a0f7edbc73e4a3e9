"""Liveness for blocking code: TCP keepalive and the heartbeat."""

import socket

import pytest
from conftest import echo

import rcf_sync
from rcf_sync import ReconnectingClient, ReconnectingClientFactory, State
from rcf_sync.testing import FaultProxy


def test_keepalive_is_on_by_default(kit, server, no_leaks):
    """If a TCP connection is made, then SO_KEEPALIVE is set on it."""
    with ReconnectingClient(server.address, backend=kit.name) as c:
        sock = c.wait_connected(timeout=5)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux keepalive options")
def test_keepalive_settings_are_applied(kit, server, no_leaks):
    """If keepalive idle, interval and count are given, then the socket carries them."""
    connector = rcf_sync.TCPConnector(*server.address, keepalive_idle=7, keepalive_interval=3,
                                      keepalive_count=4)
    with ReconnectingClient(connector, backend=kit.name) as c:
        sock = c.wait_connected(timeout=5)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


def test_keepalive_can_be_turned_off(kit, server, no_leaks):
    """If keepalive=False, then SO_KEEPALIVE stays off."""
    connector = rcf_sync.TCPConnector(*server.address, keepalive=False)
    with ReconnectingClient(connector, backend=kit.name) as c:
        sock = c.wait_connected(timeout=5)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_bad_keepalive_values(server):
    """If a keepalive setting is not a positive integer, then ValueError names it."""
    with pytest.raises(ValueError, match="keepalive_idle"):
        rcf_sync.TCPConnector(*server.address, keepalive_idle=0)


def ping(sock):
    assert echo(sock, b"ping") == b"ping"


def test_heartbeat_finds_a_half_open_connection(kit, server, no_leaks):
    """If the path goes silent while nobody uses the connection, then the heartbeat times out and the client reconnects."""
    factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)
    with FaultProxy(server.address) as proxy:
        with ReconnectingClient(proxy.address, factory=factory, backend=kit.name,
                                heartbeat=ping, heartbeat_interval=0.1) as c:
            c.wait_connected(timeout=5)
            proxy.blackhole()
            c.wait_state(State.WAITING, State.CONNECTING, timeout=5)
            assert c.stats.losses >= 1
            assert isinstance(c.stats.last_error, (socket.timeout, TimeoutError, OSError))
            proxy.heal()
            proxy.close_all()
            assert c.call(echo, b"after", attempts=5, timeout=5) == b"after"


def test_heartbeat_skips_a_busy_connection(kit, server, no_leaks):
    """If a caller holds the connection, then the heartbeat does not touch it."""
    beats = []

    def counting(sock):
        beats.append(1)
        ping(sock)

    witness_beats = []
    three = kit.event()

    def witness_beat(sock):
        witness_beats.append(1)
        if len(witness_beats) >= 3:
            three.set()
        ping(sock)

    with ReconnectingClient(server.address, backend=kit.name, heartbeat=counting,
                            heartbeat_interval=0.05) as c:
        with c.connection(timeout=5) as sock:
            before = len(beats)
            # A second client with the same interval on an idle connection
            # beats three times: several periods have passed meanwhile.
            with ReconnectingClient(server.address, backend=kit.name, heartbeat=witness_beat,
                                    heartbeat_interval=0.05):
                assert three.wait(10)
            assert len(beats) == before
            assert echo(sock, b"mine") == b"mine"


def test_heartbeat_needs_interval(server):
    """If heartbeat is given without heartbeat_interval, then ValueError says so."""
    with pytest.raises(ValueError, match="heartbeat_interval"):
        ReconnectingClient(server.address, heartbeat=ping)
