"""User code (factory subclasses, hooks, socket factories) runs in order,
off the shared loop, and leaves the client truthful when it raises."""

import logging
import socket
import threading
import time

import pytest
from conftest import echo, our_threads

from rcf_sync import (
    GaveUp,
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
)
from rcf_sync.testing import EchoServer

S = State


class Boom(Exception):
    """What the user's code raises."""


def quick(cls=ReconnectingClientFactory):
    return cls(initialDelay=0.01, maxDelay=0.05, jitter=0)


def raising_factory(method):
    """A factory subclass whose ``method`` raises Boom while ``armed``."""

    class Raising(ReconnectingClientFactory):
        armed = True

    def override(self, *args, **kw):
        if self.armed:
            raise Boom(f"{method} failed")
        return getattr(ReconnectingClientFactory, method)(self, *args, **kw)

    setattr(Raising, method, override)
    return quick(Raising)


@pytest.mark.parametrize("method", ["clientConnectionLost", "clientConnectionFailed",
                                    "startedConnecting", "retry"])
def test_factory_method_that_raises_stops_the_client_truthfully(kit, server, free_port,
                                                                no_leaks, caplog, method):
    """If a factory method raises, then the client is STOPPED with that error, waiters get GaveUp chained to it, it is logged once, and reconnect_now() starts again."""
    factory = raising_factory(method)
    # Failures need a refused port; a loss needs a connection first.
    target = server.address if method in ("clientConnectionLost",) else ("127.0.0.1", free_port)
    with ReconnectingClient(target, factory=factory, backend=kit.name, name="watched") as c:
        if method == "clientConnectionLost":
            c.wait_connected(timeout=5)
            kit.drop(server)
        assert c.wait_state(S.STOPPED, timeout=5) is S.STOPPED
        assert isinstance(c.stats.last_error, Boom)
        with pytest.raises(GaveUp) as info:
            c.wait_connected(timeout=5)
        assert isinstance(info.value.__cause__, Boom)
        assert method in str(info.value)
        logged = [r for r in caplog.records if r.levelno >= logging.ERROR and "Boom" in r.getMessage()]
        assert len(logged) == 1 and "watched" in logged[0].getMessage()
        # Healed: the factory no longer raises and a server is there.
        factory.armed = False
        late = EchoServer(port=free_port).start() if target[1] == free_port else None
        try:
            c.reconnect_now()
            assert c.call(echo, b"back", timeout=5) == b"back"
        finally:
            if late is not None:
                late.stop()


def test_on_disconnect_that_raises_stops_the_client(kit, server, no_leaks, caplog):
    """If on_disconnect raises, then the client is STOPPED with that error and reconnect_now() starts again."""
    def on_disconnect(reason):
        raise Boom("hook failed")

    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_disconnect=on_disconnect) as c:
        c.wait_connected(timeout=5)
        kit.drop(server)
        c.wait_state(S.STOPPED, timeout=5)
        assert isinstance(c.stats.last_error, Boom)
        c.reconnect_now()
        assert c.call(echo, b"back", timeout=5) == b"back"


def test_overridden_methods_run_in_order_off_the_loop(kit, server, no_leaks):
    """If a factory subclass overrides methods, then they run one at a time, in event order, never on the shared loop thread."""
    from rcf_sync._backends._thread import get_runtime

    seen = []
    active = []

    class Recording(ReconnectingClientFactory):
        def _note(self, name):
            active.append(1)
            assert len(active) == 1, "two callbacks at once"
            seen.append((name, get_runtime().in_loop()))
            active.pop()

        def startedConnecting(self, connector):
            self._note("startedConnecting")

        def clientConnectionLost(self, connector, reason):
            self._note("clientConnectionLost")
            super().clientConnectionLost(connector, reason)

    with ReconnectingClient(server.address, factory=quick(Recording), backend=kit.name) as c:
        c.wait_connected(timeout=5)
        kit.drop(server)
        c.wait_state(S.CONNECTED, S.CONNECTING, S.WAITING, timeout=5)
        assert c.call(echo, b"x", timeout=5) == b"x"
    names = [n for n, _ in seen]
    assert names[:3] == ["startedConnecting", "clientConnectionLost", "startedConnecting"]
    assert not any(on_loop for _, on_loop in seen)


def test_a_blocked_on_disconnect_delays_no_other_client(kit, no_leaks):
    """If one client's on_disconnect blocks for 2 s while the server restarts, then the other 99 reconnect at once and close() of any of them stays prompt."""
    server = EchoServer().start()
    unblock = kit.event()
    blocked = kit.event()

    def slow(reason):
        blocked.set()
        unblock.wait(2)

    clients = [ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                                  on_disconnect=slow if i == 0 else None).start()
               for i in range(100)]
    try:
        for c in clients:
            c.wait_connected(timeout=20)
        server.stop()
        assert blocked.wait(10)
        start = time.monotonic()
        server.start()
        for c in clients[1:]:
            assert c.call(echo, b"hi", timeout=10) == b"hi"
        back = time.monotonic() - start
        assert not unblock.is_set()
        assert back < 1.9, f"the others took {back:.2f}s: they waited for the blocked hook"
        start = time.monotonic()
        clients[1].close()
        assert time.monotonic() - start < 0.5
    finally:
        unblock.set()
        for c in clients:
            c.close()
        server.stop()


def test_hung_socket_factories_do_not_starve_name_lookups(server, no_leaks):
    """If more socket factories hang than there used to be workers, then their attempts time out and another client still resolves a host name and connects."""
    release = threading.Event()
    hung = []

    def hang():
        hung.append(1)
        release.wait(10)
        raise ConnectionRefusedError("late")

    from rcf_sync import SocketFactoryConnector, TCPConnector

    stuck = [ReconnectingClient(SocketFactoryConnector(hang, timeout=0.2),
                                factory=ReconnectingClientFactory(initialDelay=60), backend="thread").start()
             for _ in range(8)]
    try:
        for c in stuck:
            c.wait_state(S.WAITING, timeout=5)  # each attempt was abandoned
        with ReconnectingClient(TCPConnector("localhost", server.port), factory=quick(),
                                backend="thread") as named:
            assert named.call(echo, b"resolved", timeout=5) == b"resolved"
    finally:
        release.set()
        for c in stuck:
            c.close()
    assert len(hung) == 8


def test_background_threads_stay_bounded(server, no_leaks):
    """If many clients run user code at once, then the threads of ours stay within the stated bound."""
    from rcf_sync._backends._runtime import MAX_ABANDONED, MAX_WORKERS

    gate = threading.Event()
    started = []
    changed = threading.Condition()

    def on_connect(sock):
        with changed:
            started.append(1)
            changed.notify_all()
        gate.wait(5)

    clients = [ReconnectingClient(server.address, factory=quick(), backend="thread",
                                  on_connect=on_connect).start() for _ in range(40)]
    try:
        with changed:
            assert changed.wait_for(lambda: len(started) >= MAX_WORKERS, 10)
        assert len(our_threads()) <= 1 + MAX_WORKERS + MAX_ABANDONED
        assert len(started) == MAX_WORKERS  # the rest wait their turn
    finally:
        gate.set()
        for c in clients:
            c.close()


def test_idle_workers_are_reclaimed():
    """If a worker has nothing to do for its idle timeout, then its thread exits."""
    from rcf_sync._backends._workers import WorkerPool

    delivered = threading.Event()
    pool = WorkerPool(2, lambda fn, *args: (fn(*args), delivered.set()), idle_timeout=0.05,
                      name="rcf_sync-test-worker")
    pool.submit(lambda: 1, (), lambda result, exc: None)
    assert delivered.wait(5)
    threads = pool.threads
    assert len(threads) == 1
    threads[0].join(5)
    assert not threads[0].is_alive() and pool.threads == []


def test_pool_factory_that_raises_stops_the_pool(kit, free_port, no_leaks):
    """If a pool's factory method raises, then the pool is STOPPED with that error and callers get GaveUp chained to it."""
    factory = raising_factory("clientConnectionFailed")
    with ReconnectingPool(("127.0.0.1", free_port), 2, factory=factory, backend=kit.name) as pool:
        pool.wait_state(S.STOPPED, timeout=5)
        with pytest.raises(GaveUp) as info:
            with pool.connection(timeout=5):
                pass
        assert isinstance(info.value.__cause__, Boom)


def test_on_connect_and_socket_factory_errors_still_fail_the_attempt(kit, server, no_leaks):
    """If on_connect raises, then (as before) that attempt failed and the client retries, not STOPPED."""
    calls = []

    def on_connect(sock):
        calls.append(1)
        if len(calls) == 1:
            raise Boom("handshake refused once")

    with ReconnectingClient(server.address, factory=quick(), backend=kit.name,
                            on_connect=on_connect) as c:
        assert c.call(echo, b"second try", timeout=5) == b"second try"
        assert c.stats.connect_failures == 1 and len(calls) == 2


def test_socket_factory_blocks_without_blocking_the_loop(kit, server, no_leaks):
    """If a socket factory blocks, then other clients' timers still run."""
    # A plain threading.Event: a socket factory runs in a worker thread on
    # both backends, and a gevent Event waited in a thread and set from the
    # hub spins for ever with gevent 26.7 (the last release for Python 3.9).
    release = threading.Event()

    def slow_factory():
        release.wait(5)
        return socket.create_connection(server.address, 5)

    with ReconnectingClient(slow_factory, factory=quick(), backend=kit.name) as slow:
        with ReconnectingClient(server.address, factory=quick(), backend=kit.name) as fast:
            assert fast.call(echo, b"fast", timeout=5) == b"fast"
            assert slow.state is S.CONNECTING
            release.set()
            assert slow.call(echo, b"slow", timeout=5) == b"slow"


def test_method_set_on_the_instance_counts_as_user_code(kit, server, no_leaks):
    """If a factory method is replaced on the instance, then it runs as user code (off the loop) and its exception stops the client."""
    factory = quick()
    on_loop = []

    def lost(connector, reason):
        on_loop.append(c._backend.in_loop())
        raise Boom("instance method failed")

    factory.clientConnectionLost = lost
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        c.wait_connected(timeout=5)
        kit.drop(server)
        c.wait_state(S.STOPPED, timeout=5)
        assert isinstance(c.stats.last_error, Boom)
    assert on_loop == [False]


def test_closing_many_retrying_subclass_clients_is_prompt_and_quiet(kit, free_port, no_leaks,
                                                                     caplog):
    """If many clients with a factory subclass are closed while they retry, then every close() is prompt, no retry outlives its client and nothing is logged as an error."""
    class Quiet(ReconnectingClientFactory):
        noisy = False

        def retry(self, connector=None):
            super().retry(connector)

    clients = [ReconnectingClient(("127.0.0.1", free_port), backend=kit.name,
                                  factory=Quiet(initialDelay=0.005, maxDelay=0.01, jitter=0)).start()
               for _ in range(200)]
    try:
        # The last one started has failed three times: the herd is retrying.
        with pytest.raises(GaveUp):
            clients[-1].wait_connected(timeout=20, fail_after_failures=3)
        assert all(c.stats.connect_failures >= 1 for c in clients)
    finally:
        start = time.monotonic()
        for c in clients:
            c.close()
        took = time.monotonic() - start
    assert took < 10, f"closing 200 clients took {took:.1f}s"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors[0].getMessage()


def test_a_factory_call_finishing_after_close_schedules_nothing(kit, free_port, no_leaks, caplog):
    """If a subclass's clientConnectionFailed is still running when the client closes, then the retry it schedules is cancelled and nothing fires after close()."""
    entered, gate, stopped = kit.event(), kit.event(), kit.event()

    class Slow(ReconnectingClientFactory):
        noisy = False

        def clientConnectionFailed(self, connector, reason):
            entered.set()
            gate.wait(5)
            super().clientConnectionFailed(connector, reason)

        def stopTrying(self):  # what close() tells the factory, after the slow call
            super().stopTrying()
            stopped.set()

    factory = Slow(initialDelay=0.01, maxDelay=0.02, jitter=0)
    c = ReconnectingClient(("127.0.0.1", free_port), factory=factory, backend=kit.name).start()
    assert entered.wait(5)
    if kit.name == "gevent":
        kit.spawn(gate.set)  # runs while close() waits for the factory calls
    start = time.monotonic()
    c.close()
    assert time.monotonic() - start < 2.0
    gate.set()
    assert stopped.wait(5)  # the factory calls queued at close have run
    call = factory._callID
    assert call is None or not call.active(), "a retry outlived its client"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_retry_before_the_loss_is_noted_starts_cleanly(kit, server, no_leaks):
    """If a subclass's clientConnectionLost reconnects at once, then the attempt starts even though the loss is noted after it, and the client is connected again."""
    class Eager(ReconnectingClientFactory):
        noisy = False

        def clientConnectionLost(self, connector, reason):
            connector.connect()  # Twisted's ClientFactory idiom: reconnect now

    with ReconnectingClient(server.address, factory=Eager(), backend=kit.name) as c:
        for _ in range(5):
            c.wait_connected(timeout=5)
            n = c.stats.connects
            kit.drop(server, n=n)
            assert c.call(echo, b"back", timeout=5) == b"back"
        assert c.stats.losses >= 5 and c.state is S.CONNECTED


def test_a_factory_method_set_on_the_instance_runs_off_the_loop_as_an_override(kit, server, no_leaks):
    """If a factory's startedConnecting is replaced on the instance, then the client calls it off the loop, as it would a subclass's override."""
    seen = []
    clients = []
    factory = quick()
    factory.startedConnecting = lambda connector: seen.append(clients[0]._backend.in_loop())
    ran = kit.event()
    on_loop = []
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        clients.append(c)
        c.wait_connected(timeout=5)
        # What runs on the loop says so: the check below can tell.
        c.clock.callLater(0, lambda: (on_loop.append(c._backend.in_loop()), ran.set()))
        assert ran.wait(5) and on_loop == [True]
    assert seen == [False]


class _SilentJobs:
    """A backend stand-in whose jobs never report back: what a killed
    greenlet or an abandoned worker looks like to the queue."""

    def __init__(self):
        self.started = []

    def run_blocking(self, fn, args, deliver, threaded=False):
        job = _Job()
        self.started.append(fn)
        return job

    def event(self):
        return threading.Event()


class _Job:
    def __init__(self):
        self.abandoned = False

    def abandon(self):
        self.abandoned = True


def test_abandoning_the_last_running_call_drains_the_queue():
    """If the only running user call is abandoned and never reports back, then a wait for the queue to drain returns True at once instead of waiting out its timeout."""
    from rcf_sync._callbacks import UserCode

    backend = _SilentJobs()
    user = UserCode(backend, threading.Lock())
    call = user.run(lambda: None)
    assert backend.started and not user.idle()
    waiting = []
    waiter = threading.Thread(target=lambda: waiting.append(user.wait_drained(10)))
    waiter.start()
    user.abandon(call)
    waiter.join(10)
    assert waiting == [True] and user.idle() and call.job.abandoned


def test_close_does_not_wait_out_its_timeout_for_user_code_it_abandoned(kit, server, no_leaks,
                                                                       caplog):
    """If close() abandons a socket factory still running for an attempt, then it sees the background finish without waiting for that call."""
    entered, release = threading.Event(), threading.Event()

    def hanging_factory():
        entered.set()
        release.wait(10)
        raise ConnectionRefusedError("released after close")

    c = ReconnectingClient(hanging_factory, factory=quick(), backend=kit.name).start()
    try:
        assert kit.block(entered.wait, 5)
        c.close()
    finally:
        release.set()
    assert "did not see the background finish" not in caplog.text
