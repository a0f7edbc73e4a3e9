"""Per-connection objects returned by ``on_connect`` and ``lost_on=``, on
both backends."""

import pytest
from conftest import echo

from rcf_sync import ConnectionLost, ReconnectingClient, ReconnectingClientFactory, ReconnectingPool


class Session:
    """A per-connection object: the socket and a count of its requests."""

    def __init__(self, sock):
        self.sock = sock
        self.requests = 0

    def ask(self, payload):
        self.requests += 1
        return echo(self.sock, payload)


class Desync(Exception):
    """A parser's 'this stream is broken' error (not an OSError)."""


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)


def test_lease_hands_out_what_on_connect_returned(kit, server, no_leaks):
    """If on_connect returns an object, then connection() and call() hand out that object."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_connect=Session) as c:
        with c.connection(timeout=5) as s:
            assert isinstance(s, Session)
            assert s.ask(b"one") == b"one"
        assert c.call(lambda s: s.ask(b"two"), timeout=5) == b"two"
        assert c.call(lambda s: s.requests, timeout=5) == 2


def test_session_is_dropped_with_its_connection(kit, server, no_leaks):
    """If the connection is lost, then the next lease gets a new session for the new connection."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_connect=Session) as c:
        first = c.call(lambda s: s, timeout=5)
        with pytest.raises(ConnectionLost):
            with c.connection(timeout=5):
                raise ConnectionResetError("simulated")
        second = c.call(lambda s: s, timeout=5)
        assert second is not first and second.sock is not first.sock
        assert second.requests == 0


def test_handle_io_uses_the_socket_under_a_session(kit, server, no_leaks):
    """If on_connect made a session, then sendall()/recv() on the handle still use the socket."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_connect=Session) as c:
        c.sendall(b"raw", timeout=5)
        assert c.recv(3, timeout=5) == b"raw"


def test_lost_on_discards_and_reruns(kit, server, no_leaks):
    """If fn raises an exception of the client's lost_on, then call() discards the connection and runs fn again."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            lost_on=(Desync,)) as c:
        socks = []

        def fn(sock):
            socks.append(sock)
            if len(socks) == 1:
                raise Desync("bad frame")
            return echo(sock, b"ok")

        assert c.call(fn, timeout=5) == b"ok"
        assert len(socks) == 2 and socks[0] is not socks[1]
        assert c.stats.losses == 1


def test_lost_on_in_a_lease_surfaces_as_connection_lost(kit, server, no_leaks):
    """If a lost_on exception escapes a lease, then ConnectionLost chained to it is raised."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            lost_on=Desync) as c:
        with pytest.raises(ConnectionLost) as info:
            with c.connection(timeout=5):
                raise Desync("bad frame")
        assert isinstance(info.value.__cause__, Desync)


def test_per_call_lost_on(kit, server, no_leaks):
    """If call() is given lost_on, then that exception also re-runs fn; without it, it propagates unchanged."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        runs = []

        def fn(sock):
            runs.append(sock)
            if len(runs) == 1:
                raise Desync("bad frame")
            return len(runs)

        assert c.call(fn, timeout=5, lost_on=(Desync,)) == 2
        runs.clear()
        with pytest.raises(Desync):
            c.call(fn, timeout=5)


def test_pool_sessions_and_lost_on(kit, server, no_leaks):
    """If a pool's on_connect returns an object, then its leases hand it out, and lost_on re-runs call()."""
    with ReconnectingPool(server.address, 2, factory=quick(), backend=kit.name,
                          on_connect=Session, lost_on=(Desync,)) as pool:
        seen = []

        def fn(s):
            seen.append(s)
            if len(seen) == 1:
                raise Desync("bad frame")
            return s.ask(b"p")

        assert pool.call(fn, timeout=5) == b"p"
        assert all(isinstance(s, Session) for s in seen)


@pytest.mark.parametrize("bad", [42, (ValueError, "x"), ["nope"]])
def test_bad_lost_on_is_rejected(bad):
    """If lost_on is not exception classes, then ValueError names lost_on."""
    with pytest.raises(ValueError, match="lost_on"):
        ReconnectingClient(("127.0.0.1", 1), lost_on=bad)
