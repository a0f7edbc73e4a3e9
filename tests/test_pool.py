"""ReconnectingPool on both backends: leasing, sizing, the shared back-off."""

import socket
import threading

import pytest
from conftest import echo, unique_payload_run

from rcf_sync import (
    ClientClosed,
    ConnectionLost,
    ConnectTimeout,
    GaveUp,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
)
from rcf_sync.testing import FakeClock

S = State


def make_pool(kit, target, size, clock=None, **kw):
    factory = kw.pop("factory", None)
    if factory is None:
        factory = (ReconnectingClientFactory(initialDelay=1.0, jitter=0) if clock is not None
                   else ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0))
    return ReconnectingPool(target, size, factory=factory, backend=kit.name, clock=clock, **kw)


class CountingConnector:
    """A socket factory that counts its calls and can be switched off."""

    def __init__(self, address):
        self.address = address
        self.calls = 0
        self.up = False
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("server down")
        return socket.create_connection(self.address, 5)


def test_concurrent_callers_get_different_connections(kit, server, no_leaks):
    """If three callers lease at once, then each gets its own connection, opened on demand."""
    seen, ready = [], kit.event()
    with make_pool(kit, server.address, 3) as pool:
        def worker():
            with pool.connection(timeout=5) as sock:
                seen.append(sock)
                if len(seen) == 3:
                    ready.set()
                ready.wait(5)
                assert echo(sock, b"x") == b"x"

        workers = [kit.spawn(worker) for _ in range(3)]
        kit.join_all(workers, 10)
        assert len({id(s) for s in seen}) == 3
        assert pool.stats.connects == 3


def test_size_bounds_connections(kit, server, no_leaks):
    """If more callers than size want a connection, then the extra one waits for a release."""
    with make_pool(kit, server.address, 1) as pool:
        with pool.connection(timeout=5):
            with pytest.raises(ConnectTimeout):
                with pool.connection(timeout=0.2):
                    pass
        with pool.connection(timeout=5):
            pass
        assert pool.stats.connects == 1


def test_released_connection_is_reused(kit, server, no_leaks):
    """If a caller releases a healthy connection, then the next caller gets the same one."""
    with make_pool(kit, server.address, 4) as pool:
        with pool.connection(timeout=5) as first:
            pass
        with pool.connection(timeout=5) as second:
            assert second is first


def test_failed_connection_is_discarded(kit, server, no_leaks):
    """If an OSError escapes a lease, then ConnectionLost is raised and that connection is never reused."""
    with make_pool(kit, server.address, 2) as pool:
        with pytest.raises(ConnectionLost):
            with pool.connection(timeout=5) as first:
                raise BrokenPipeError("gone")
        with pool.connection(timeout=5) as second:
            assert second is not first
            assert echo(second, b"ok") == b"ok"


def test_dead_server_sees_one_probe_per_delay(kit, server, no_leaks):
    """If the server is down while several callers wait, then it sees one attempt per back-off delay."""
    clock = FakeClock()
    target = CountingConnector(server.address)
    results = []
    with make_pool(kit, target, 4, clock) as pool:
        def worker():
            try:
                with pool.connection(timeout=20) as sock:
                    results.append(echo(sock, b"hi"))
            except Exception as exc:  # reported below
                results.append(exc)

        pool.wait_state(S.WAITING, timeout=5)
        workers = [kit.spawn(worker) for _ in range(4)]
        pool.wait_waiting(4, timeout=5)
        assert target.calls == 1
        for _ in range(5):
            [call] = clock.getDelayedCalls()
            clock.advance(call.getTime() - clock.seconds())
            pool.wait_state(S.WAITING, timeout=5)  # the probe ran and failed
        assert target.calls == 6 and pool.probes == 5
        target.up = True
        [call] = clock.getDelayedCalls()
        clock.advance(call.getTime() - clock.seconds())
        kit.join_all(workers, 10)
        assert results == [b"hi"] * 4
        assert 1 <= pool.stats.connects <= 4 and pool.factory.retries == 0


def test_close_wakes_waiters(kit, free_port, server, no_leaks):
    """If the pool is closed while callers wait, then they get ClientClosed."""
    pool = make_pool(kit, ("127.0.0.1", free_port), 2, FakeClock()).start()
    errors = []

    def worker():
        try:
            with pool.connection(timeout=10):
                pass
        except Exception as exc:
            errors.append(exc)

    workers = [kit.spawn(worker) for _ in range(3)]
    pool.wait_waiting(3, timeout=5)
    pool.close()
    kit.join_all(workers, 5)
    assert len(errors) == 3 and all(isinstance(e, ClientClosed) for e in errors)
    assert pool.state is S.CLOSED


def test_gave_up_pool_raises(kit, free_port, server, no_leaks):
    """If the factory gives up, then callers get GaveUp."""
    factory = ReconnectingClientFactory(initialDelay=0.001, jitter=0, maxRetries=1)
    with make_pool(kit, ("127.0.0.1", free_port), 2, factory=factory) as pool:
        with pytest.raises(GaveUp):
            for _ in range(100):
                with pool.connection(timeout=5):
                    pass


def test_workers_never_get_another_callers_reply(kit, server, no_leaks):
    """If workers share a pool while the server restarts, then no caller ever receives another caller's bytes."""
    with make_pool(kit, server.address, 4) as pool:
        done, errors, mismatches = unique_payload_run(kit, pool, server, workers=8, requests=30,
                                                      restarts=4)
    assert mismatches == [] and done


def test_bad_size(server, no_leaks):
    """If size is not a positive integer, then ValueError names it."""
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size must be an integer >= 1"):
            ReconnectingPool(server.address, size)


def test_close_rejects_a_negative_timeout(server, no_leaks):
    """If close() gets a negative timeout, then ValueError names it and the pool stays open."""
    pool = ReconnectingPool(server.address, 2, backend="thread").start()
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        pool.close(timeout=-1)
    assert pool.state is not S.CLOSED
    pool.close()
