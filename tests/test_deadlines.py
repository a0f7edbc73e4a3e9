"""Attempts at scale: the thread backend's deadlines share one timer per
timeout length, the direct connects started in one slice of the loop's work
(on gevent, one turn of the hub) begin together after it, and no attempt
leaves a reference cycle behind."""

import collections
import gc
import socket
import threading

import pytest
from conftest import echo

from rcf_sync import ReconnectingClient, ReconnectingClientFactory, State, TCPConnector
from rcf_sync._backends._attempt import Connect, Deadlines
from rcf_sync._backends._thread import get_runtime


class _Timer:
    def __init__(self, when):
        self.when = when
        self.cancelled = False

    def active(self):
        return not self.cancelled

    def cancel(self):
        self.cancelled = True


class _Runtime:
    """Records the timers a Deadlines asks for."""

    def __init__(self):
        self.timers = []

    def schedule(self, when, fn, args, kw):
        timer = _Timer(when)
        self.timers.append(timer)
        return timer

    def active(self):
        return [t for t in self.timers if t.active()]


class _Attempt:
    def __init__(self, name, expired, on_expire=None):
        self.name = name
        self._entry = None
        self._expired = expired
        self._on_expire = on_expire

    def _expire(self, timeout):
        self._expired.append((self.name, timeout))
        if self._on_expire is not None:
            self._on_expire()


def _add(deadlines, attempt):
    attempt._entry = deadlines.add(attempt)
    return attempt._entry


def test_attempts_of_one_timeout_share_one_timer():
    """If three attempts with one timeout start and end, then one timer is set (for the first); the next attempt reuses it, and the runtime's stop drops it."""
    rt, expired = _Runtime(), []
    d = Deadlines(rt, 30.0)
    entries = [_add(d, _Attempt(n, expired)) for n in "abc"]
    assert len(rt.timers) == 1 and rt.timers[0].when == entries[0][0]
    assert len(d) == 3
    d.drop_idle_timer()  # deadlines pending: the timer stays
    assert len(rt.active()) == 1
    for entry in reversed(entries):
        d.done(entry)
    assert len(d) == 0 and expired == []
    d.done(_add(d, _Attempt("d", expired)))
    assert len(rt.timers) == 1
    d.drop_idle_timer()
    assert rt.active() == []


def test_due_deadlines_expire_in_order_and_ended_ones_never():
    """If deadlines are due, then their attempts expire in start order, an attempt that already ended does not, and no timer is left."""
    rt, expired = _Runtime(), []
    d = Deadlines(rt, 0.0)
    _add(d, _Attempt("a", expired))
    ended = _add(d, _Attempt("b", expired))
    _add(d, _Attempt("c", expired))
    d.done(ended)
    d._expire_due()
    assert expired == [("a", 0.0), ("c", 0.0)]
    assert len(d) == 0 and len(rt.timers) == 1


def test_a_sweep_before_the_head_is_due_sets_one_timer_for_it():
    """If the timer fires before the earliest live deadline (its head had ended), then nothing expires and one new timer is set for that deadline."""
    rt, expired = _Runtime(), []
    d = Deadlines(rt, 60.0)
    first = _add(d, _Attempt("a", expired))
    second = _add(d, _Attempt("b", expired))
    first[1] = None  # ended without telling: the sweep must skip it
    d._expire_due()
    assert expired == []
    assert [t.when for t in rt.timers] == [first[0], second[0]]


def test_an_expiry_that_starts_another_attempt_leaves_one_timer():
    """If an expiring attempt starts a new one with the same timeout, then exactly one timer is pending afterwards, for the new deadline."""
    rt, expired = _Runtime(), []
    d = Deadlines(rt, 0.0)
    started = []

    def retry():
        started.append(_add(d, _Attempt("retry", expired)))

    _add(d, _Attempt("a", expired, on_expire=retry))
    rt.timers.clear()
    d._expire_due()
    assert expired == [("a", 0.0)]
    assert [t.when for t in rt.active()] == [started[0][0]]
    assert len(d) == 1


def test_refused_attempts_leave_no_deadlines_in_the_timer_heap(free_port, no_leaks):
    """If a client makes 50 refused attempts (30 s attempt timeout) while a later timer is pending, then the runtime's timer heap does not keep a cancelled deadline for each attempt: behind a live timer they would stay there for 30 s, as they do in a herd of retrying clients."""
    rt = get_runtime()
    factory = ReconnectingClientFactory(initialDelay=0.001, maxDelay=0.001, jitter=0)
    factory.maxRetries = 49
    connector = TCPConnector("127.0.0.1", free_port, timeout=30)
    with ReconnectingClient(connector, factory=factory, backend="thread") as c:
        later = rt.clock.callLater(10, lambda: None)
        try:
            before = len(rt.timers._heap)
            c.wait_state(State.STOPPED, timeout=20)
            assert c.stats.connect_failures == 50
            assert len(rt.timers._heap) - before < 10
        finally:
            later.cancel()


# -- no garbage cycles per attempt ---------------------------------------------------


def _cyclic_garbage(run):
    """Run ``run()`` with the cyclic collector off; return what it then finds
    unreachable (objects only a collection would have freed)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_refused_attempts_leave_no_cyclic_garbage(kit, free_port, no_leaks):
    """If a client makes 30 refused attempts, then none of them leaves objects that only the cyclic garbage collector could free (a herd would otherwise stall its loop in full collections)."""
    factory = ReconnectingClientFactory(initialDelay=0.001, maxDelay=0.001, jitter=0)
    factory.maxRetries = 29
    c = ReconnectingClient(("127.0.0.1", free_port), factory=factory, backend=kit.name)
    try:
        def run():
            c.start()
            c.wait_state(State.STOPPED, timeout=20)
        garbage = _cyclic_garbage(run)
        assert c.stats.connect_failures == 30
    finally:
        c.close()
    kinds = collections.Counter(type(o).__name__ for o in garbage)
    assert kinds["ConnectionRefusedError"] == 0 and kinds["_Pending"] == 0, kinds.most_common(8)
    assert len(garbage) < 30, kinds.most_common(8)


def test_connections_lost_and_remade_leave_no_cyclic_garbage(kit, server, no_leaks):
    """If the server drops a client's connection 10 times and the client reconnects each time, then no connection, attempt or loss leaves objects that only the cyclic garbage collector could free."""
    factory = ReconnectingClientFactory(initialDelay=0.001, maxDelay=0.001, jitter=0)
    c = ReconnectingClient(server.address, factory=factory, backend=kit.name)
    try:
        def run():
            c.start()
            for _ in range(10):
                assert c.call(echo, b"x", timeout=10) == b"x"
                assert kit.block(server.wait_accepted, c.stats.connects, 5)
                server.drop_all()
            assert c.call(echo, b"last", timeout=10) == b"last"
        garbage = _cyclic_garbage(run)
        assert c.stats.connects >= 11
    finally:
        c.close()
    ours = [o for o in garbage if type(o).__module__.startswith("rcf_sync")
            or isinstance(o, (ConnectionError, socket.socket))]
    assert ours == [], collections.Counter(type(o).__name__ for o in ours).most_common(8)


def _in_one_slice(rt, *jobs):
    """Post ``jobs`` while the loop is held, so that it runs them in one
    slice of its work."""
    hold, held = threading.Event(), threading.Event()

    def block():
        held.set()
        hold.wait(10)

    rt.post(block)
    assert held.wait(10)
    for job in jobs:
        rt.post(job)
    hold.set()


class _Begun:
    """Stands for a connect: records when the runtime begins it."""

    def __init__(self, name, order, last=None):
        self.name, self.order, self.last = name, order, last

    def begin(self):
        self.order.append(("begin", self.name))

    def watch(self):
        self.order.append(("watch", self.name))
        if self.last is not None:
            self.last.set()


def test_connects_started_in_one_slice_begin_together_at_its_end(no_leaks):
    """If three jobs in one slice of the loop's work each start a connect, then all three jobs run before the first connect begins, the connects begin in the order they were started, one after the other, and only then are they watched."""
    rt = get_runtime()
    order, last = [], threading.Event()

    def job(i):
        def run():
            order.append(("job", i))
            rt.connect_soon(_Begun(i, order, last if i == 2 else None))
        return run

    rt.acquire()
    try:
        _in_one_slice(rt, job(0), job(1), job(2))
        assert last.wait(10)
    finally:
        rt.release()
    assert order == [("job", 0), ("job", 1), ("job", 2),
                     ("begin", 0), ("begin", 1), ("begin", 2),
                     ("watch", 0), ("watch", 1), ("watch", 2)]


def _recording_connector(port, opened):
    """A TCP connector to ``port`` whose direct connects append their
    address to ``opened`` as they open their socket; and that address."""

    class Recording(TCPConnector):
        def _open_direct(self, address):
            opened.append(address)
            return super()._open_direct(address)

    connector = Recording("127.0.0.1", port)
    address = connector._direct_address()
    assert address is not None
    return connector, address


def test_a_direct_connect_cancelled_in_the_slice_that_started_it_opens_no_socket(
        free_port, no_leaks):
    """If a direct connect is started and then cancelled in the same slice of the loop's work, then it never opens a socket and never delivers."""
    rt = get_runtime()
    opened, delivered, order, last = [], [], [], threading.Event()
    connector, address = _recording_connector(free_port, opened)

    def start_and_cancel():
        attempt = Connect(rt, connector, address, None, lambda sock, exc: delivered.append(exc))
        attempt.start()
        order.append(("opened when started", len(opened)))
        attempt.cancel()

    rt.acquire()
    try:
        _in_one_slice(rt, start_and_cancel, lambda: rt.connect_soon(_Begun("marker", order, last)))
        assert last.wait(10)
    finally:
        rt.release()
    assert order == [("opened when started", 0), ("begin", "marker"), ("watch", "marker")]
    assert opened == [] and delivered == []


def test_gevent_direct_connects_of_one_turn_of_the_hub_begin_after_it(free_port, no_leaks):
    """If, on the gevent backend, one callback of the hub starts two direct connects and cancels the second, then neither has opened a socket when the callback returns, the first is begun afterwards (and refused), and the cancelled one never opens a socket or delivers."""
    gevent = pytest.importorskip("gevent")
    from rcf_sync._backends._gevent import shared_backend

    backend = shared_backend()
    opened, seen, delivered, done = [], [], [], gevent.event.Event()
    connector, address = _recording_connector(free_port, opened)

    def deliver(name):
        def run(sock, exc):
            delivered.append((name, sock, type(exc)))
            done.set()
        return run

    def turn():
        backend.connect_direct(connector, address, None, deliver("first"))
        backend.connect_direct(connector, address, None, deliver("second")).cancel()
        seen.append(len(opened))

    backend._hub.loop.run_callback(turn)
    assert done.wait(10)
    assert seen == [0]
    assert opened == [address]
    assert delivered == [("first", None, ConnectionRefusedError)]
