"""The hot path of a lease (both backends): an idle connection is taken
and given back without the handle's lock; the kernel check is skipped only
for a connection its own caller gave back an instant ago.
Time on that path is driven by replacing its clock (``_leasing._now``)."""

import threading

import pytest
from conftest import echo, loop_held

from rcf_sync import (
    ClientClosed,
    ConnectionLost,
    ConnectTimeout,
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    _leasing,
)
from rcf_sync._connection import DEAD


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)


class Now:
    """A stand-in for the hot path's monotonic clock: still until moved."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def now(monkeypatch):
    clock = Now()
    monkeypatch.setattr(_leasing, "_now", clock)
    return clock


@pytest.fixture
def checks(monkeypatch):
    """The connections the kernel check was run on, in order."""
    seen = []
    real = _leasing.lease_check

    def counting(conn):
        seen.append(conn)
        return real(conn)

    monkeypatch.setattr(_leasing, "lease_check", counting)
    return seen


def test_the_same_caller_coming_straight_back_skips_the_kernel_check(kit, server, now, checks,
                                                                      no_leaks):
    """If a caller gives the connection back and leases it again within RECHECK_AFTER, then the second lease asks the kernel nothing; once that time has passed, it asks again."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        assert c.call(echo, b"one", timeout=5) == b"one"
        assert len(checks) == 1  # a new connection is always checked
        for i in range(5):
            assert c.call(echo, b"again%d" % i, timeout=5) == b"again%d" % i
            with c.connection(timeout=5):
                pass
        assert len(checks) == 1
        now.t += 2 * _leasing.RECHECK_AFTER
        assert c.call(echo, b"later", timeout=5) == b"later"
        assert len(checks) == 2


def test_a_connection_another_caller_gave_back_is_always_checked(kit, server, now, checks,
                                                                 no_leaks):
    """If another caller gave the connection back, then the lease checks it, however soon."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        assert c.call(echo, b"mine", timeout=5) == b"mine"
        before = len(checks)
        results = []
        w = kit.spawn(lambda: results.append(c.call(echo, b"theirs", timeout=5)))
        kit.join_all([w], 5)
        assert results == [b"theirs"]
        assert len(checks) == before + 1
        assert c.call(echo, b"mine again", timeout=5) == b"mine again"
        assert len(checks) == before + 2


def test_bytes_pushed_during_a_pause_are_caught_on_the_hot_path(kit, server, now, no_leaks):
    """If the server pushes bytes after a release and the caller comes back after RECHECK_AFTER, then the lease discards that connection and the caller reads its own reply."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        for i in range(10):
            assert c.call(echo, b"req%d" % i, timeout=5) == b"req%d" % i
            assert server.push(b"junk") == 1  # loopback delivers it before the next lease
            now.t += 2 * _leasing.RECHECK_AFTER
        assert c.stats.losses >= 1
        assert c.call(echo, b"last", timeout=5) == b"last"


def test_a_timeout_set_in_the_lease_is_cleared_on_the_hot_path(kit, server, no_leaks):
    """If the caller sets a socket timeout inside the lease, then the next lease gets the socket blocking again."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        for _ in range(3):
            with c.connection(timeout=5) as sock:
                assert sock.gettimeout() is None
                sock.settimeout(2.5)
        assert c.stats.losses == 0


class Holders:
    """Who holds which socket now: a second holder of the same socket is
    noted in ``wrong``."""

    def __init__(self):
        self._held = {}
        self._guard = threading.Lock()
        self.wrong = []

    def take(self, sock, who):
        with self._guard:
            other = self._held.get(id(sock))
            self._held[id(sock)] = who
        if other is not None:
            self.wrong.append(f"socket {id(sock)} held by {other} and {who}")

    def give(self, sock):
        with self._guard:
            del self._held[id(sock)]


def hammer(kit, handle, workers, requests, during=None, holders=None):
    """``workers`` callers each doing ``requests`` leases with payloads only
    they send, checking each reply and that nobody else holds the same
    socket meanwhile (``holders``, shared with other users of the socket);
    ``during()`` runs meanwhile in the calling context. Returns (replies,
    ConnectionLost/ClientClosed/ConnectTimeout errors); a wrong reply or a
    shared socket fails."""
    holders = Holders() if holders is None else holders
    replies, errors, wrong = [], [], holders.wrong
    started = kit.event()

    def one(n, i):
        payload = b"<%d:%d>" % (n, i) * 4
        with handle.connection(timeout=5) as sock:
            holders.take(sock, n)
            got = echo(sock, payload)
            holders.give(sock)
        if got != payload:
            wrong.append(f"caller {n} sent {payload!r}, read {got!r}")
        replies.append(got)

    def worker(n):
        started.set()
        for i in range(requests):
            try:
                one(n, i)
            except (ConnectionLost, ConnectTimeout) as exc:
                errors.append(exc)
            except ClientClosed as exc:
                errors.append(exc)
                return

    workers_ = [kit.spawn(worker, n) for n in range(workers)]
    assert started.wait(5)
    if during is not None:
        during()
    kit.join_all(workers_, 30)
    assert wrong == []
    return replies, errors


def test_hot_leases_stay_exclusive_while_the_connection_is_dropped(kit, server, no_leaks):
    """If callers lease in tight loops while connector.disconnect() keeps dropping the connection, then no two callers ever hold the same socket and every reply is the caller's own."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)

        def drop_some():
            for _ in range(20):
                c.connector.disconnect()
                c.wait_connected(timeout=5)

        replies, errors = hammer(kit, c, workers=4, requests=150, during=drop_some)
        assert len(replies) + len(errors) == 4 * 150
        assert all(isinstance(e, ConnectionLost) for e in errors), errors[:3]
        assert c.stats.losses >= 1


def test_heartbeats_and_hot_leases_never_share_the_socket(kit, server, no_leaks):
    """If callers start leasing in tight loops just as the heartbeat runs on the idle connection, then they wait for it: the heartbeat and the callers never hold the socket together and each reads its own replies."""
    holders = Holders()
    beats = []
    beating = kit.event()

    def heartbeat(sock):
        holders.take(sock, "heartbeat")
        beating.set()
        payload = b"<beat %d>" % len(beats)
        got = echo(sock, payload)
        holders.give(sock)
        if got != payload:
            holders.wrong.append(f"the heartbeat sent {payload!r}, read {got!r}")
        beats.append(got)

    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            heartbeat=heartbeat, heartbeat_interval=0.02) as c:
        c.wait_connected(timeout=5)
        for _ in range(5):
            beating.clear()
            assert beating.wait(5), "no heartbeat on the idle connection"
            replies, errors = hammer(kit, c, workers=3, requests=20, holders=holders)
            assert errors == [] and len(replies) == 60
        assert holders.wrong == []
        assert len(beats) >= 5
        assert c.stats.losses == 0


def test_close_during_hot_leases_ends_every_caller(kit, server, no_leaks):
    """If the client is closed while callers lease in tight loops, then every caller ends (its own replies or ClientClosed) and nothing of the client is left."""
    c = ReconnectingClient(server.address, factory=quick(), backend=kit.name).start()
    c.wait_connected(timeout=5)

    def close_soon():
        assert c.call(echo, b"warm", timeout=5) == b"warm"
        c.close()

    replies, errors = hammer(kit, c, workers=4, requests=2000, during=close_soon)
    assert len(replies) < 4 * 2000
    assert errors and all(isinstance(e, (ClientClosed, ConnectionLost)) for e in errors)
    with pytest.raises(ClientClosed):
        c.call(echo, b"after", timeout=1)


def test_pool_hot_leases_stay_exclusive(kit, server, no_leaks):
    """If more callers than connections lease a pool in tight loops, then each connection has one holder at a time and every reply is the caller's own."""
    with ReconnectingPool(server.address, 2, factory=quick(), backend=kit.name) as pool:
        assert pool.call(echo, b"warm", timeout=5) == b"warm"
        replies, errors = hammer(kit, pool, workers=5, requests=100)
        assert errors == []
        assert len(replies) == 500
        assert pool.stats.connects <= 2


class HookedIdle(list):
    """An idle list that runs ``hook(conn)`` once, just before its next
    append: what the loop or another caller may do in the instant a lease
    ends on the hot path (the connection marked idle, not yet in the list)."""

    def __init__(self, items, hook):
        super().__init__(items)
        self.hook = hook

    def append(self, conn):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook(conn)
        super().append(conn)


def test_a_connection_doomed_as_its_lease_ends_is_discarded_at_once(kit, server, no_leaks):
    """If the connection is found lost in the instant its lease ends on the hot path, then that lease's end discards it: no idle dead connection waits for the next caller."""
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        with c.connection(timeout=5) as first:
            c._idle = HookedIdle(c._idle, lambda conn: c._mark_lost(
                conn, ConnectionResetError("lost as the lease ended")))
            assert echo(first, b"one") == b"one"
        assert list(c._idle) == []
        assert c.stats.losses == 1
        assert c.call(echo, b"two", timeout=5) == b"two"
        assert c.stats.connects == 2


def test_a_connection_given_back_as_the_client_closes_is_not_left_idle(kit, server, no_leaks):
    """If the client closes in the instant a lease ends on the hot path, then the connection does not go back to the idle list of the closed client."""
    c = ReconnectingClient(server.address, factory=quick(), backend=kit.name).start()
    c.wait_connected(timeout=5)
    with c.connection(timeout=5) as sock:
        c._idle = HookedIdle(c._idle, lambda conn: c.close())
        assert echo(sock, b"one") == b"one"
        conn = c._conn
    assert c._closed and list(c._idle) == []
    assert conn.owner is DEAD
    with pytest.raises(ClientClosed):
        c.call(echo, b"after", timeout=1)


def test_a_caller_queued_as_a_lease_ends_is_handed_the_connection(kit, server, no_leaks):
    """If a caller queues for the connection in the instant a lease ends on the hot path, then it is handed that connection at once instead of waiting beside an idle one."""
    got = []

    def second_caller():
        with c.connection(timeout=5) as sock:
            got.append(sock)
            assert echo(sock, b"two") == b"two"

    def queue_second(conn):
        workers.append(kit.spawn(second_caller))
        assert c.wait_waiting(1, timeout=5) == 1

    workers = []
    with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        with c.connection(timeout=5) as first:
            c._idle = HookedIdle(c._idle, queue_second)
            assert echo(first, b"one") == b"one"
        kit.join_all(workers, 5)
        assert got == [first]
        assert c.stats.connects == 1 and c.stats.losses == 0


def test_a_lease_after_close_is_refused_while_the_background_still_closes(server, no_leaks,
                                                                          caplog):
    """If close() returned before the background could drop the connection (its loop was busy), then a lease still raises ClientClosed instead of handing out the idle socket."""
    c = ReconnectingClient(server.address, factory=quick(), backend="thread").start()
    c.wait_connected(timeout=5)
    assert c.call(echo, b"warm", timeout=5) == b"warm"
    with loop_held():
        c.close(timeout=0.2)
        for _ in range(3):
            with pytest.raises(ClientClosed):
                with c.connection(timeout=1):
                    pass
            with pytest.raises(ClientClosed):
                c.call(echo, b"after", timeout=1)
    assert "did not see the background finish" in caplog.text
