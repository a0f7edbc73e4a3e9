"""ReconnectingClient on every backend (the ``kit`` fixture), against
loopback servers; back-off timing is driven by a FakeClock."""

import os
import socket
import time

import pytest
from conftest import echo, our_threads, unique_payload_run

import rcf_sync
from rcf_sync import (
    ClientClosed,
    ConnectionLost,
    ConnectTimeout,
    Failure,
    GaveUp,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
)
from rcf_sync.testing import FakeClock

S = State


def make(kit, target, clock=None, **kw):
    """A client on the kit's backend: with a FakeClock, Twisted's timing from
    initialDelay=1; with the real clock, quick retries."""
    factory = kw.pop("factory", None)
    if factory is None:
        factory = (ReconnectingClientFactory(initialDelay=1.0, jitter=0) if clock is not None
                   else ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0))
    return ReconnectingClient(target, factory=factory, backend=kit.name, clock=clock, **kw)


def test_first_attempt_is_immediate(kit, server, no_leaks):
    """If a client starts, then it connects at once, without waiting for the clock."""
    clock = FakeClock()
    with make(kit, server.address, clock) as c:
        c.wait_connected(timeout=5)
        assert c.state is S.CONNECTED
        assert clock.seconds() == 0 and c.stats.connects == 1


def test_refused_attempt_waits_initial_delay_then_retries(kit, server, free_port, no_leaks):
    """If the server refuses, then the factory schedules the retry initialDelay later on the client's clock."""
    clock = FakeClock()
    with make(kit, ("127.0.0.1", free_port), clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        [call] = clock.getDelayedCalls()
        assert call.getTime() == pytest.approx(1.0)
        assert c.stats.connect_failures == 1
        assert isinstance(c.stats.last_error, ConnectionRefusedError)
        clock.advance(1.0)
        # connect() moved the state to CONNECTING before advance() returned,
        # so WAITING now means that attempt has failed.
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 2
        [call] = clock.getDelayedCalls()
        assert call.getTime() - clock.seconds() == pytest.approx(ReconnectingClientFactory.factor)


def test_success_after_failures_resets_delay(kit, server, free_port, no_leaks):
    """If a connection succeeds after failures, then the client calls resetDelay()."""
    clock = FakeClock()
    port_holder = {"port": free_port}

    def target():
        return socket.create_connection(("127.0.0.1", port_holder["port"]), 2)

    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    with make(kit, target, clock, factory=factory) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert factory.retries == 1 and factory.delay > 1.0
        port_holder["port"] = server.port
        clock.advance(1.0)
        c.wait_connected(timeout=5)
        assert factory.retries == 0 and factory.delay == 1.0


def test_on_connect_runs_before_anyone_gets_the_socket(kit, server, no_leaks):
    """If on_connect is given, then it completes its handshake before the connection is handed out."""
    seen = []

    def hello(sock):
        assert echo(sock, b"HELLO") == b"HELLO"
        seen.append("handshake")

    with make(kit, server.address, on_connect=hello) as c:
        with c.connection(timeout=5) as sock:
            seen.append("lease")
            assert echo(sock, b"x") == b"x"
    assert seen == ["handshake", "lease"]


def test_on_connect_raising_counts_as_failed_attempt(kit, server, no_leaks):
    """If on_connect raises, then the attempt counts as failed and the factory retries."""
    def bad(sock):
        raise ValueError("auth refused")

    clock = FakeClock()
    with make(kit, server.address, clock, on_connect=bad) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 1 and c.stats.connects == 0
        assert isinstance(c.stats.last_error, ValueError)
        assert len(clock.getDelayedCalls()) == 1


def test_wait_connected_times_out_in_real_time(kit, free_port, server, no_leaks):
    """If no connection comes, then wait_connected raises ConnectTimeout naming the destination."""
    with make(kit, ("127.0.0.1", free_port)) as c:
        start = time.monotonic()
        with pytest.raises(ConnectTimeout, match=f"127.0.0.1:{free_port}"):
            c.wait_connected(timeout=0.2)
        assert time.monotonic() - start >= 0.2


def test_fail_after_failures(kit, free_port, server, no_leaks):
    """If fail_after_failures attempts fail, then wait_connected raises GaveUp."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=0.5, jitter=0)
    with make(kit, ("127.0.0.1", free_port), clock, factory=factory) as c:
        c.wait_state(S.WAITING, timeout=5)
        result = {}

        def waiter():
            try:
                c.wait_connected(timeout=10, fail_after_failures=2)
            except Exception as exc:
                result["exc"] = exc

        w = kit.spawn(waiter)
        for _ in range(3):
            [call] = clock.getDelayedCalls()
            clock.advance(call.getTime() - clock.seconds())
            c.wait_state(S.WAITING, timeout=5)
        kit.join_all([w], 5)
        assert isinstance(result["exc"], GaveUp)


def test_max_retries_stops_and_waiters_give_up(kit, free_port, server, no_leaks):
    """If maxRetries is exhausted, then the state is STOPPED and waiters get GaveUp."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0, maxRetries=2)
    with make(kit, ("127.0.0.1", free_port), clock, factory=factory) as c:
        for _ in range(10):
            if c.wait_state(S.WAITING, S.STOPPED, timeout=5) is S.STOPPED:
                break
            [call] = clock.getDelayedCalls()
            clock.advance(call.getTime() - clock.seconds())
        assert c.state is S.STOPPED
        assert c.stats.connect_failures == 3
        with pytest.raises(GaveUp, match="gave up after 2 retries"):
            c.wait_connected(timeout=5)


def test_lease_is_exclusive(kit, server, no_leaks):
    """If two callers ask for the connection, then the second waits until the first releases it."""
    order = []
    with make(kit, server.address) as c:
        c.wait_connected(timeout=5)

        def second():
            with c.connection(timeout=5):
                order.append("second")

        with c.connection(timeout=5):
            w = kit.spawn(second)
            assert c.wait_waiting(1, timeout=5) == 1  # the second caller is blocked
            order.append("first-done")
        kit.join_all([w], 5)
    assert order == ["first-done", "second"]


def test_oserror_in_lease_becomes_connection_lost_and_reconnects(kit, server, no_leaks):
    """If an OSError escapes a lease, then it surfaces as ConnectionLost chained to it and a new connection is made."""
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        cause = OSError("boom")
        with pytest.raises(ConnectionLost) as info:
            with c.connection(timeout=5):
                raise cause
        assert info.value.__cause__ is cause
        assert f"127.0.0.1:{server.port}" in str(info.value)
        assert first.fileno() == -1  # closed by the client
        c.wait_connected(timeout=5)
        assert c.stats.losses == 1 and c.stats.connects == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError, GaveUp])
def test_other_exceptions_discard_the_connection(kit, server, no_leaks, error):
    """If a non-OSError exception escapes a lease, then it propagates unchanged and the connection is never reused."""
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        with pytest.raises(error):
            with c.connection(timeout=5) as sock:
                sock.sendall(b"half a request")
                raise error("interrupted")
        with c.connection(timeout=5) as sock:
            assert sock is not first
            assert echo(sock, b"fresh") == b"fresh"


def test_gevent_timeout_inside_lease_discards(server, no_leaks):
    """If a gevent.Timeout interrupts a request, then the connection is discarded and the next caller gets a clean one."""
    gevent = pytest.importorskip("gevent")
    kit = type("K", (), {"name": "gevent"})
    srv = server
    srv.mode = "silent"
    with make(kit, srv.address) as c:
        first = c.wait_connected(timeout=5)
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.1):
                with c.connection(timeout=5) as sock:
                    sock.sendall(b"ping")
                    sock.recv(10)
        with c.connection(timeout=5) as sock:
            assert sock is not first


def test_read_timeout_in_lease_drops_connection(kit, server, no_leaks):
    """If a read times out inside a lease, then ConnectionLost is raised and that connection is closed."""
    server.mode = "silent"
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        with pytest.raises(ConnectionLost) as info:
            with c.connection(timeout=5) as sock:
                sock.settimeout(0.1)
                sock.sendall(b"ping")
                sock.recv(10)
        assert isinstance(info.value.__cause__, (socket.timeout, TimeoutError))
        assert first.fileno() == -1


def test_call_reruns_on_next_connection(kit, server, no_leaks):
    """If the connection dies under call(), then fn runs again on the next connection."""
    runs = []

    def flaky(sock, payload):
        runs.append(sock)
        if len(runs) == 1:
            raise ConnectionResetError("died")
        return echo(sock, payload)

    with make(kit, server.address) as c:
        assert c.call(flaky, b"abc", attempts=3, timeout=5) == b"abc"
    assert len(runs) == 2 and runs[0] is not runs[1]


def test_call_gives_up_after_attempts(kit, server, no_leaks):
    """If every run fails, then call() raises ConnectionLost after `attempts` runs."""
    runs = []

    def always(sock):
        runs.append(1)
        raise BrokenPipeError("no")

    with make(kit, server.address) as c:
        with pytest.raises(ConnectionLost):
            c.call(always, attempts=2, timeout=5)
    assert len(runs) == 2


def test_sendall_recv_on_handle(kit, server, no_leaks):
    """If the handle is used as a socket, then sendall/recv round-trip."""
    with make(kit, server.address) as c:
        c.sendall(b"ping", timeout=5)
        assert c.recv(4, timeout=5) == b"ping"


def test_recv_after_peer_close_raises_connection_lost(kit, server, no_leaks):
    """If the peer closes the connection, then the handle's recv raises ConnectionLost, never returns b''."""
    server.mode = "eof"
    with make(kit, server.address) as c:
        c.sendall(b"bye", timeout=5)
        with pytest.raises(ConnectionLost):
            c.recv(10, timeout=2)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_idle_loss_noticed_by_background(kit, server, no_leaks, reset):
    """If the peer closes or resets an idle connection, then the background notices and reconnects without any caller."""
    clock = FakeClock()
    with make(kit, server.address, clock) as c:
        c.wait_connected(timeout=5)
        kit.drop(server, reset=reset)
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.losses == 1
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(clock.getDelayedCalls()[0].getTime())
        c.wait_connected(timeout=5)
        assert c.stats.connects == 2


def test_stop_trying_stops_and_reconnect_now_restarts(kit, server, free_port, no_leaks):
    """If stop_trying() is called while waiting, then the state is STOPPED; reconnect_now() tries again at once."""
    clock = FakeClock()
    with make(kit, ("127.0.0.1", free_port), clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        c.stop_trying()
        assert c.state is S.STOPPED
        assert clock.getDelayedCalls() == []
        with pytest.raises(GaveUp, match="stop_trying"):
            c.wait_connected(timeout=1)
        c.reconnect_now()
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 2


def test_reconnect_now_skips_the_wait(kit, server, no_leaks):
    """If reconnect_now() is called while waiting, then the attempt starts without advancing the clock."""
    clock = FakeClock()
    with make(kit, server.address, clock) as c:
        c.wait_connected(timeout=5)
        kit.drop(server)
        c.wait_state(S.WAITING, timeout=5)
        c.reconnect_now()
        c.wait_connected(timeout=5)
        assert clock.seconds() == 0 and clock.getDelayedCalls() == []


def test_reset_delay_resets_factory(kit, free_port, server, no_leaks):
    """If reset_delay() is called, then the factory's delay and retries are reset."""
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    with make(kit, ("127.0.0.1", free_port), factory=factory) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert factory.retries == 1
        c.reset_delay()
        assert factory.retries == 0 and factory.delay == 1.0


@pytest.mark.parametrize("where", ["waiting", "connected", "connecting", "idle"])
def test_close_is_prompt_and_wakes_waiters(kit, server, free_port, hung_address, no_leaks, where):
    """If close() is called in any state, then it returns promptly and every waiter gets ClientClosed."""
    target = {"waiting": ("127.0.0.1", free_port), "connected": server.address,
              "connecting": rcf_sync.TCPConnector(*hung_address, timeout=30),
              "idle": server.address}[where]
    c = make(kit, target)
    results = []
    if where != "idle":
        c.start()
        if where == "connected":
            c.wait_connected(timeout=5)
        elif where == "waiting":
            c.wait_state(S.WAITING, timeout=5)

        def waiter():
            try:
                with c.connection(timeout=10):
                    if where == "connected":
                        c_ev.wait(10)  # hold the lease
            except Exception as exc:
                results.append(exc)

        c_ev = kit.event()
        workers = [kit.spawn(waiter) for _ in range(3)]
        # Everyone blocks (when connected, one of them holds the lease).
        c.wait_waiting(2 if where == "connected" else 3, timeout=5)
    start = time.monotonic()
    c.close()
    took = time.monotonic() - start
    if where != "idle":
        c_ev.set()
        kit.join_all(workers, 5)
        assert len(results) >= 2 and all(isinstance(r, ClientClosed) for r in results), results
    assert c.state is S.CLOSED
    assert took < 2.0


def test_closed_client_refuses_use(kit, server, no_leaks):
    """If the client is closed, then every call raises ClientClosed."""
    c = make(kit, server.address).start()
    c.close()
    with pytest.raises(ClientClosed):
        c.wait_connected(timeout=1)
    with pytest.raises(ClientClosed):
        c.sendall(b"x")
    c.close()  # idempotent


def test_not_started_client_says_so(kit, server, no_leaks):
    """If the client was not started, then waiting raises RuntimeError saying to start it."""
    c = make(kit, server.address)
    with pytest.raises(RuntimeError, match="not started"):
        c.wait_connected(timeout=1)
    c.close()


def test_subclass_override_is_honoured(kit, free_port, server, no_leaks):
    """If a factory subclass overrides clientConnectionFailed, then the client calls the override."""
    calls = []

    class Mine(ReconnectingClientFactory):
        def clientConnectionFailed(self, connector, reason):
            calls.append((connector, reason))
            self.stopTrying()

    clock = FakeClock()
    with make(kit, ("127.0.0.1", free_port), clock, factory=Mine()) as c:
        c.wait_state(S.STOPPED, timeout=5)
    assert len(calls) == 1 and calls[0][0] is c.connector
    reason = calls[0][1]
    assert isinstance(reason, Failure) and isinstance(reason.value, ConnectionRefusedError)


def test_twisted_clock_drives_a_real_client(kit, free_port, server, no_leaks):
    """If a twisted.internet.task.Clock is the client's clock, then it drives the back-off."""
    task = pytest.importorskip("twisted.internet.task")
    clock = task.Clock()
    with make(kit, ("127.0.0.1", free_port), clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert [d.getTime() for d in clock.getDelayedCalls()] == [1.0]
        clock.advance(1.0)
        # connect() moved the state to CONNECTING before advance() returned,
        # so WAITING now means that attempt has failed.
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 2


def test_unix_socket_and_socket_factory(kit, tmp_path, no_leaks):
    """If the destination is a Unix path or a callable, then the client connects through it."""
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    try:
        for target in (path, lambda: _unix(path)):
            with make(kit, target) as c:
                c.wait_connected(timeout=5)
                conn, _ = kit.block(listener.accept)
                conn.close()
    finally:
        listener.close()


def _unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


def test_socket_factory_returning_garbage_fails_clearly(kit, server, no_leaks):
    """If a socket factory returns a non-socket, then the attempt fails with a TypeError naming it."""
    with make(kit, lambda: "not a socket") as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, TypeError)
        assert "not a socket" in str(c.stats.last_error)


def test_hung_connect_does_not_delay_other_clients(kit, server, hung_address, no_leaks):
    """If one client's connect hangs, then another client still connects at once."""
    stuck = [make(kit, rcf_sync.TCPConnector(*hung_address, timeout=30)).start() for _ in range(6)]
    try:
        with make(kit, server.address) as c:
            start = time.monotonic()
            c.wait_connected(timeout=5)
            assert time.monotonic() - start < 2
        assert all(s.state is S.CONNECTING for s in stuck)
    finally:
        for s in stuck:
            s.close()


def test_connect_timeout_fails_the_attempt(kit, server, hung_address, no_leaks):
    """If a connect outlasts the connector's timeout, then the attempt fails with ConnectTimeout."""
    with make(kit, rcf_sync.TCPConnector(*hung_address, timeout=0.2)) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, ConnectTimeout)
        assert "timed out" in str(c.stats.last_error)


def test_state_transitions_follow_the_table(kit, server, free_port, no_leaks):
    """If a client goes through connect, loss and close, then its states follow the State table."""
    from rcf_sync._state import Event, transition

    clock = FakeClock()
    c = make(kit, server.address, clock)
    assert c.state is S.IDLE
    c.start()
    c.wait_connected(timeout=5)
    kit.drop(server)
    c.wait_state(S.WAITING, timeout=5)
    c.close()
    assert c.state is S.CLOSED
    with pytest.raises(RuntimeError, match="illegal transition"):
        transition(S.IDLE, Event.CONNECTED)


def test_stats_snapshot(kit, server, no_leaks):
    """If stats is read, then it is a snapshot that later changes do not alter."""
    clock = FakeClock()
    with make(kit, server.address, clock) as c:
        c.wait_connected(timeout=5)
        snap = c.stats
        kit.drop(server)
        c.wait_state(S.WAITING, timeout=5)
        assert snap.losses == 0 and c.stats.losses == 1
        assert c.stats.last_change == clock.seconds()


def test_many_callers_never_get_another_callers_reply(kit, server, no_leaks):
    """If many callers share one client while the server restarts, then no caller ever receives another caller's bytes."""
    factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        done, errors, mismatches = unique_payload_run(kit, c, server, workers=8, requests=40)
    assert mismatches == [] and done


def test_thread_backend_uses_bounded_threads(server, no_leaks):
    """If many clients share the thread backend, then the background uses a bounded number of threads."""
    from rcf_sync._backends._thread import MAX_WORKERS

    clients = [ReconnectingClient(server.address, backend="thread").start() for _ in range(50)]
    for c in clients:
        c.wait_connected(timeout=10)
    assert 1 <= len(our_threads()) <= 1 + MAX_WORKERS
    for c in clients:
        c.close()
    assert our_threads() == []


def test_bad_arguments_are_named(server, no_leaks):
    """If arguments are bad, then ValueError names the problem."""
    with pytest.raises(ValueError, match="backend must be one of"):
        ReconnectingClient(server.address, backend="twisted")
    with pytest.raises(ValueError, match="port must be an integer"):
        ReconnectingClient(("127.0.0.1", 70000))
    with pytest.raises(ValueError, match="cannot connect to"):
        ReconnectingClient(12345)
    with pytest.raises(ValueError, match="on_connect must be callable"):
        ReconnectingClient(server.address, on_connect="yes")
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        ReconnectingClient(server.address).connection(timeout=-1)
    with pytest.raises(ValueError, match="bufsize"):
        ReconnectingClient(server.address).recv(0)
    with pytest.raises(ValueError, match="bufsize"):
        ReconnectingClient(server.address).recv(10**12)


def test_repr_names_destination_and_state(server, no_leaks):
    """If a client is printed, then its repr names the destination and state, nothing more."""
    c = ReconnectingClient(server.address, backend="thread")
    assert repr(c) == f"<ReconnectingClient '127.0.0.1:{server.port}' IDLE backend=thread>"


def test_max_elapsed_stops_like_max_retries(kit, free_port, server, no_leaks):
    """If the factory's maxElapsed budget runs out, then the client is STOPPED and waiters get GaveUp."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0, maxElapsed=3.0)
    with make(kit, ("127.0.0.1", free_port), clock, factory=factory) as c:
        c.wait_state(S.WAITING, timeout=5)          # failed at t=0, retry at t=1
        clock.advance(1.0)
        assert c.wait_state(S.STOPPED, timeout=5) is S.STOPPED  # t=1+2.72 > 3: no retry
        assert clock.getDelayedCalls() == []
        with pytest.raises(GaveUp, match="no connection to 127.0.0.1"):
            c.wait_connected(timeout=5)


def test_a_client_that_runs_no_user_code_makes_no_user_code_queue(kit, server, no_leaks):
    """If a client has a factory of ours and no hooks, then it connects, serves, loses and
    regains its connection without ever making a user-code queue; with on_connect it makes one."""
    with make(kit, server.address) as c:
        assert c.call(echo, b"a", timeout=5) == b"a"
        c._connector.disconnect()
        assert c.call(echo, b"b", timeout=5) == b"b"
        assert c.stats.connects == 2
        assert c._user_code is None
    with make(kit, server.address, on_connect=lambda sock: None) as c:
        assert c.call(echo, b"c", timeout=5) == b"c"
        assert c._user_code is not None


def test_built_in_connectors_keep_fields_in_slots_and_subclasses_may_add_attributes(
        kit, server, no_leaks):
    """If a connector is built in, then it has no attribute dict yet can be weakly referenced and
    pickled; a subclass without __slots__ may set attributes of its own and still connects."""
    import pickle
    import weakref

    from rcf_sync import SocketFactoryConnector, TCPConnector, UNIXConnector

    for connector in (TCPConnector(*server.address), UNIXConnector("/nonexistent/socket"),
                      SocketFactoryConnector(socket.socket)):
        assert not hasattr(connector, "__dict__"), connector
        assert weakref.ref(connector)() is connector
        assert connector._owner is None
    copy = pickle.loads(pickle.dumps(TCPConnector(*server.address, timeout=3)))
    assert (copy.host, copy.port, copy.timeout) == (server.address[0], server.address[1], 3)

    class Tagged(TCPConnector):
        pass

    tagged = Tagged(*server.address)
    tagged.tag = "mine"
    with make(kit, tagged) as c:
        assert c.call(echo, b"t", timeout=5) == b"t"
    assert tagged.tag == "mine"


class _ThroughTheSteps(rcf_sync.TCPConnector):
    """A TCP connector that offers no direct address: its attempts always
    run through the step interpreter."""

    __slots__ = ()

    def _direct_address(self):
        return None


def test_only_plain_destinations_offer_a_direct_connect(tmp_path):
    """If the destination is an IP address or a Unix path without TLS, then the connector offers its one address for a connect without the step interpreter; a host name, TLS or a subclass's own attempt does not."""
    import ssl

    v4 = rcf_sync.TCPConnector("127.0.0.1", 7)
    assert v4._direct_address() == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                    ("127.0.0.1", 7))
    path = str(tmp_path / "s")
    assert rcf_sync.UNIXConnector(path)._direct_address() == (socket.AF_UNIX, socket.SOCK_STREAM,
                                                               0, path)
    assert rcf_sync.TCPConnector("localhost", 7)._direct_address() is None
    tls = ssl.create_default_context()
    assert rcf_sync.TCPConnector("127.0.0.1", 7, ssl_context=tls)._direct_address() is None

    class OwnAttempt(rcf_sync.TCPConnector):
        def _attempt(self):
            return super()._attempt()

    assert OwnAttempt("127.0.0.1", 7)._direct_address() is None
    assert rcf_sync.SocketFactoryConnector(socket.socket)._direct_address() is None


def test_a_direct_connect_ends_as_the_step_interpreter_would(kit, server, free_port, no_leaks):
    """If a plain destination connects directly, then its connection gets the same socket options and a refusal the same error as through the attempt steps."""
    results = []
    for connector_class in (rcf_sync.TCPConnector, _ThroughTheSteps):
        options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)]
        with make(kit, connector_class(*server.address, socket_options=options)) as c:
            c.wait_connected(timeout=5)
            with c.connection() as sock:
                got = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
                       sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                       sock.gettimeout())
        with make(kit, connector_class("127.0.0.1", free_port)) as c:
            c.wait_state(S.WAITING, timeout=5)
            refused = c.stats.last_error
        results.append((got, type(refused), str(refused)))
    assert results[0] == results[1]
    assert results[0][0][1:] == (True, True, None)
    assert results[0][1] is ConnectionRefusedError


def test_a_direct_connect_that_times_out_closes_its_socket_at_once(kit, server, hung_address,
                                                                   no_leaks):
    """If a connect to an IP address outlasts its timeout, then its socket is closed when the attempt fails, not when it is collected."""
    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    factory = ReconnectingClientFactory(initialDelay=30, jitter=0)
    with make(kit, server.address) as running:  # the backend's own descriptors exist
        running.wait_connected(timeout=5)
        # The in-process server accepts on its own thread: its side of the
        # connection must exist before the count.
        assert kit.block(server.wait_accepted, 1, 5)
        before = open_fds()
        with make(kit, rcf_sync.TCPConnector(*hung_address, timeout=0.2), factory=factory) as c:
            c.wait_state(S.WAITING, timeout=5)
            assert isinstance(c.stats.last_error, ConnectTimeout)
            assert open_fds() == before
