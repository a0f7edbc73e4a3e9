"""Who owns a connection, and what the background does on its own: pushed
bytes, peers that closed, disconnect() inside a lease, the factory's clock,
blocked callers, and callers on the wrong thread (both backends where it
applies)."""

import threading
import time

import pytest
from conftest import echo, loop_held

from rcf_sync import (
    ConnectionLost,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
    _leasing,
)
from rcf_sync.testing import FakeClock

S = State


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)


def losses_event(kit):
    """An on_disconnect hook and the event it sets (losses noticed by the background)."""
    lost = kit.event()
    reasons = []

    def on_disconnect(reason):
        reasons.append(reason)
        lost.set()

    return on_disconnect, lost, reasons


# -- pushed bytes --------------------------------------------------------------


def test_pushed_bytes_on_an_idle_connection_discard_it(kit, server, no_leaks):
    """If the server pushes bytes on an idle connection, then the background discards it and reconnects, and the next call reads its own reply."""
    on_disconnect, lost, reasons = losses_event(kit)
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_disconnect=on_disconnect) as c:
        assert c.call(echo, b"first", timeout=5) == b"first"
        assert server.push(b"+not-your-reply\r\n") == 1
        assert lost.wait(5), "the background did not notice the pushed bytes"
        assert c.stats.losses == 1
        assert "unexpected data" in str(reasons[0])
        assert c.call(echo, b"mine", timeout=5) == b"mine"
        assert c.stats.connects == 2


@pytest.fixture
def check_every_lease(monkeypatch):
    """The kernel check on every lease, however soon the same caller comes
    back (the tests below push bytes a few microseconds after a release)."""
    monkeypatch.setattr(_leasing, "RECHECK_AFTER", 0.0)


def test_lease_never_hands_out_a_connection_with_unread_bytes(kit, server, no_leaks,
                                                               check_every_lease):
    """If bytes were pushed just before a lease, then the lease discards that connection and waits for a new one instead of handing it out."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        for i in range(20):
            assert c.call(echo, b"req%d" % i, timeout=5) == b"req%d" % i
            server.push(b"junk")  # arrives before the next lease: loopback delivers at once
        assert c.stats.losses >= 1
        assert c.call(echo, b"last", timeout=5) == b"last"


def test_lease_never_hands_out_a_connection_the_peer_closed(kit, server, no_leaks,
                                                            check_every_lease):
    """If the peer closed the connection a moment before a lease, then the caller gets a new connection, not ConnectionLost."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        for _ in range(10):
            assert c.call(echo, b"x", timeout=5, attempts=1) == b"x"
            n = c.stats.connects
            assert kit.block(server.wait_accepted, n, 5)
            server.drop_all()  # FIN, then at once the next lease
        assert c.call(echo, b"still", timeout=5, attempts=1) == b"still"


def test_pushed_bytes_wait_for_their_reader_on_the_handle_stream(kit, server, no_leaks):
    """If the handle itself is used as a socket (sendall, then recv), then the reply waiting between the two is kept for recv."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        for i in range(5):
            c.sendall(b"ping%d" % i, timeout=5)
            got = b""
            while len(got) < 5:
                got += c.recv(5 - len(got), timeout=5)
            assert got == b"ping%d" % i
        assert c.stats.losses == 0


# -- disconnect() inside a lease ---------------------------------------------------


def test_disconnect_inside_a_lease_takes_effect_when_it_ends(kit, server, no_leaks):
    """If the function under call() calls connector.disconnect(), then call() returns its result and the next call gets a new connection."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        socks = []

        def fn(sock):
            sock.settimeout(5)
            socks.append(sock)
            c.connector.disconnect()
            return echo(sock, b"done")

        for _ in range(50):
            assert c.call(fn, timeout=5, attempts=1) == b"done"
        assert len(set(map(id, socks))) == 50
        assert c.stats.losses == 50


# -- the factory's clock -----------------------------------------------------------


def test_clock_set_on_the_factory_is_used(kit, free_port, no_leaks):
    """If the factory has a clock and the client gets none, then the back-off runs on the factory's clock, which it gets back at close()."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0, clock=clock)
    with ReconnectingClient(("127.0.0.1", free_port), factory=factory, backend=kit.name) as c:
        assert c.clock is clock
        c.wait_state(S.WAITING, timeout=5)
        [call] = clock.getDelayedCalls()
        assert call.getTime() == pytest.approx(1.0)
    assert factory.clock is clock and clock.getDelayedCalls() == []


def test_two_different_clocks_are_refused(free_port):
    """If the factory has a clock and the client is given another, then ValueError says to give one."""
    factory = ReconnectingClientFactory(clock=FakeClock())
    with pytest.raises(ValueError, match="give one of them"):
        ReconnectingClient(("127.0.0.1", free_port), factory=factory, clock=FakeClock())


# -- observing blocked callers ----------------------------------------------------


def test_stats_waiting_counts_blocked_callers(kit, free_port, no_leaks):
    """If callers block waiting for a connection, then stats.waiting counts them and wait_waiting() returns once they are there."""
    with ReconnectingClient(("127.0.0.1", free_port), factory=quick(), backend=kit.name,
                            clock=FakeClock()) as c:
        assert c.stats.waiting == 0
        outcomes = []

        def caller():
            try:
                c.wait_connected(timeout=10)
            except Exception as exc:
                outcomes.append(exc)

        workers = [kit.spawn(caller) for _ in range(3)]
        assert c.wait_waiting(3, timeout=5) == 3
        assert c.stats.waiting == 3
    kit.join_all(workers, 5)
    assert len(outcomes) == 3


def test_wait_waiting_times_out(kit, server, no_leaks):
    """If nobody blocks, then wait_waiting() raises ConnectTimeout after its timeout."""
    from rcf_sync import ConnectTimeout

    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        with pytest.raises(ConnectTimeout, match="callers"):
            c.wait_waiting(1, timeout=0.05)


# -- gevent from another OS thread -------------------------------------------------


def test_gevent_client_used_from_another_thread_names_the_thread(server, no_leaks):
    """If a gevent-backend client is used from an OS thread other than its hub's, then RuntimeError names both threads."""
    pytest.importorskip("gevent")
    errors = []
    with ReconnectingClient(server.address, factory=quick(), backend="gevent") as c:
        def other():
            try:
                c.call(echo, b"x", timeout=1)
            except Exception as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert not t.is_alive()
        assert c.call(echo, b"own", timeout=5) == b"own"
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    message = str(errors[0])
    assert "hub of thread" in message and "called from thread" in message


def test_gevent_backend_is_dropped_with_its_hub():
    """If a hub is destroyed, then its backend object is no longer kept alive."""
    pytest.importorskip("gevent")
    import gc
    import weakref

    refs = []

    def in_thread():
        import gevent

        from rcf_sync._backends._gevent import shared_backend

        refs.append(weakref.ref(shared_backend()))
        gevent.get_hub().destroy(destroy_loop=True)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(10)
    gc.collect()
    assert refs and refs[0]() is None


def test_gevent_clock_cancel_races_one_winner():
    """If two threads cancel the same gevent delayed call at once, then exactly one succeeds."""
    gevent = pytest.importorskip("gevent")
    from rcf_sync import AlreadyCancelled
    from rcf_sync._backends._gevent import shared_backend

    clock = shared_backend().clock
    for _ in range(100):
        call = clock.callLater(60, lambda: None)
        barrier = threading.Barrier(2)
        outcomes = []

        def cancel(call=call, barrier=barrier, outcomes=outcomes):
            barrier.wait(5)
            try:
                call.cancel()
                outcomes.append("ok")
            except AlreadyCancelled:
                outcomes.append("already")

        threads = [threading.Thread(target=cancel) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert sorted(outcomes) == ["already", "ok"]
    gevent.sleep(0)  # let the hub drop the cancelled timers
    assert clock.getDelayedCalls() == []


# -- close() bounded by its timeout -------------------------------------------------


def test_close_is_bounded_when_the_loop_is_stuck(server, no_leaks, caplog):
    """If the shared loop cannot answer, then close(timeout) still returns after about that long and says so."""
    with ReconnectingClient(server.address, factory=quick(), backend="thread") as c:
        c.wait_connected(timeout=5)
        with loop_held():
            start = time.monotonic()
            c.close(timeout=0.3)
            took = time.monotonic() - start
    assert took < 2.0
    assert "did not see the background finish" in caplog.text


def test_oserror_in_lease_still_reported(kit, server, no_leaks):
    """If an OSError escapes a lease, then ConnectionLost is raised (the lease-time check changes nothing there)."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        with pytest.raises(ConnectionLost):
            with c.connection(timeout=5):
                raise ConnectionResetError("simulated")
        assert c.call(echo, b"again", timeout=5) == b"again"
