"""Tests of rcf_sync.testing.FaultProxy against a loopback echo server."""

import math
import os
import selectors
import socket
import threading
import time

import pytest

from rcf_sync.testing import FaultProxy

WAIT = 5.0  # generous bound on anything that should happen promptly


class EchoServer:
    """A loopback echo server run by one thread; it records what it reads
    on each connection and can report when every connection is gone."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.received = []  # one bytearray per accepted connection
        self.cond = threading.Condition()
        self.open = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns = {}  # socket -> [received bytearray, pending output]
        self._thread = threading.Thread(target=self._run, name="echo server")
        self._thread.start()

    @property
    def accepted(self):
        with self.cond:
            return len(self.received)

    def wait_idle(self, timeout=WAIT):
        """Wait until the server has no open connection; return whether it
        got there in time."""
        with self.cond:
            return self.cond.wait_for(lambda: self.open == 0, timeout)

    def wait_received(self, index, size, timeout=WAIT):
        """Wait until connection ``index`` has read ``size`` bytes or ended."""
        with self.cond:
            self.cond.wait_for(
                lambda: len(self.received) > index
                and (len(self.received[index]) >= size or self.open == 0),
                timeout,
            )
            return bytes(self.received[index]) if len(self.received) > index else None

    def _drop(self, sock):
        self._sel.unregister(sock)
        del self._conns[sock]
        sock.close()
        with self.cond:
            self.open -= 1
            self.cond.notify_all()

    def _run(self):
        while not self._stop:
            for key, mask in self._sel.select():
                sock = key.fileobj
                if key.data == "wake":
                    self._stop = True
                elif sock is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    record = bytearray()
                    self._conns[conn] = [record, bytearray()]
                    self._sel.register(conn, selectors.EVENT_READ, None)
                    with self.cond:
                        self.received.append(record)
                        self.open += 1
                        self.cond.notify_all()
                elif sock in self._conns:
                    record, out = self._conns[sock]
                    try:
                        if mask & selectors.EVENT_READ:
                            data = sock.recv(65536)
                            if not data:
                                self._drop(sock)
                                continue
                            with self.cond:
                                record += data
                                self.cond.notify_all()
                            out += data
                        if out:
                            del out[:sock.send(out)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._drop(sock)
                        continue
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
                    self._sel.modify(sock, events, None)

    def close(self):
        self._wake_w.send(b"x")
        self._thread.join()
        for sock in list(self._conns):
            self._drop(sock)
        self._sel.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()


@pytest.fixture
def echo():
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo.address) as p:
        yield p


def connect(proxy, timeout=WAIT):
    return socket.create_connection(proxy.address, timeout=timeout)


def recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def round_trip(sock, payload=b"ping"):
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def wait_count(proxy, n):
    assert proxy._wait_connection_count(lambda c: c == n, WAIT), (
        f"connection_count stayed {proxy.connection_count}, expected {n}")


def fd_count():
    return len(os.listdir("/proc/self/fd"))


# -- forwarding ---------------------------------------------------------------

def test_forwards_both_ways(proxy):
    """If a client sends through the proxy, then the upstream echo comes back unchanged."""
    with connect(proxy) as c:
        assert round_trip(c, b"hello") == b"hello"
        payload = bytes(range(256)) * 4096  # 1 MiB, beyond the buffer limit
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        try:
            assert recv_exactly(c, len(payload)) == payload
        finally:
            sender.join()


def test_half_close_is_forwarded(proxy, echo):
    """If the client shuts down its sending side, then the upstream sees EOF and the client reads
    EOF after the echo."""
    with connect(proxy) as c:
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        assert recv_exactly(c, 100) == b"last words"
        assert c.recv(1) == b""
    wait_count(proxy, 0)
    assert echo.wait_idle()


def test_connection_count_goes_up_and_down(proxy):
    """If clients connect and then leave, then connection_count follows them."""
    assert proxy.connection_count == 0
    a, b = connect(proxy), connect(proxy)
    try:
        wait_count(proxy, 2)
        assert round_trip(a) == b"ping"
    finally:
        a.close()
    wait_count(proxy, 1)
    b.close()
    wait_count(proxy, 0)


def test_address_is_loopback_and_repr_names_it(proxy):
    """If the proxy is running, then address is a 127.0.0.1 port shown in the repr."""
    host, port = proxy.address
    assert host == "127.0.0.1" and port > 0
    assert f"127.0.0.1:{port}" in repr(proxy)
    assert FaultProxy.__module__ == "rcf_sync.testing"


def test_ipv6_loopback_listen(echo):
    """If the proxy listens on ::1, then an IPv6 client is forwarded to an IPv4 upstream."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        p = FaultProxy(echo.address, host="::1").start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        assert p.address[0] == "::1"
        with socket.create_connection(p.address, timeout=WAIT) as c:
            assert round_trip(c) == b"ping"
    finally:
        p.close()


# -- refuse / accept ----------------------------------------------------------

def test_refuse_then_accept_on_same_port(proxy):
    """If the proxy refuses, then connects fail with ECONNREFUSED while open connections work, and
    accept() reopens the same port."""
    address = proxy.address
    with connect(proxy) as old:
        assert round_trip(old) == b"ping"
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            connect(proxy).close()
        assert round_trip(old, b"still") == b"still"
        proxy.refuse()  # a second refuse is a no-op
        proxy.accept()
        proxy.accept()  # and so is a second accept
        assert proxy.address == address
        with connect(proxy) as new:
            assert new.getpeername()[:2] == address
            assert round_trip(new) == b"ping"


# -- resets and closes --------------------------------------------------------

def test_reset_all_resets_clients_and_upstream(proxy, echo):
    """If reset_all() is called, then the client's recv raises ConnectionResetError and the
    upstream side is gone too."""
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"
        proxy.reset_all()
        assert proxy.connection_count == 0
        with pytest.raises(ConnectionResetError):
            c.recv(1)
    assert echo.wait_idle()


def test_close_all_sends_eof(proxy, echo):
    """If close_all() is called, then the client's recv returns b"" (an orderly close)."""
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"
        proxy.close_all()
        assert proxy.connection_count == 0
        assert c.recv(1) == b""
    assert echo.wait_idle()


def test_proxy_keeps_accepting_after_reset_all(proxy):
    """If reset_all() was called, then new connections are forwarded as usual."""
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"
    proxy.reset_all()
    with connect(proxy) as c:
        assert round_trip(c, b"pong") == b"pong"


def test_upstream_reset_is_passed_on(echo):
    """If the upstream resets a connection, then the client sees a reset too."""
    with FaultProxy(echo.address) as inner, FaultProxy(inner.address) as outer:
        with connect(outer) as c:
            assert round_trip(c) == b"ping"
            inner.reset_all()
            with pytest.raises(ConnectionResetError):
                c.recv(1)
        wait_count(outer, 0)


def test_dead_upstream_closes_client():
    """If nothing listens upstream, then the client's connection is closed with EOF."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    with FaultProxy(dead) as p:
        with connect(p) as c:
            assert c.recv(1) == b""
        wait_count(p, 0)


def test_max_connections_closes_extra_connections(echo):
    """If max_connections are open, then a further connection is closed at once."""
    with FaultProxy(echo.address, max_connections=2) as p:
        a, b = connect(p), connect(p)
        try:
            wait_count(p, 2)
            with connect(p) as extra:
                assert extra.recv(1) == b""
            assert round_trip(a) == b"ping" and round_trip(b) == b"ping"
            assert p.connection_count == 2
        finally:
            a.close()
            b.close()


# -- blackhole / delay / cut --------------------------------------------------

def test_blackhole_holds_then_heal_restores(proxy, echo):
    """If the proxy is blackholed, then connects succeed but nothing comes back, and heal()
    restores forwarding."""
    with connect(proxy) as old:
        assert round_trip(old) == b"ping"
        proxy.blackhole()
        accepted = echo.accepted
        with connect(proxy, timeout=0.3) as held:
            held.sendall(b"held")
            with pytest.raises(socket.timeout):
                held.recv(1)
            old.settimeout(0.3)
            old.sendall(b"old")
            with pytest.raises(socket.timeout):
                old.recv(1)
            assert echo.accepted == accepted  # held without connecting upstream
            assert proxy.connection_count == 2
            proxy.heal()
            held.settimeout(WAIT)
            old.settimeout(WAIT)
            assert recv_exactly(held, 4) == b"held"
            assert recv_exactly(old, 3) == b"old"
        with connect(proxy) as new:
            assert round_trip(new) == b"ping"


def test_delay_adds_latency_each_way(proxy):
    """If delay(0.2) is set, then a round trip takes at least 0.4 s (0.2 s each way)."""
    proxy.delay(0.2)
    with connect(proxy) as c:
        start = time.monotonic()
        assert round_trip(c) == b"ping"
        assert time.monotonic() - start >= 0.4


def test_heal_releases_delayed_data(proxy):
    """If data is held by a 30 s delay, then heal() forwards it at once (well within the 5 s socket
    timeout)."""
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"
        proxy.delay(30)
        c.sendall(b"late")
        c.settimeout(0.2)
        with pytest.raises(socket.timeout):
            c.recv(1)
        proxy.heal()
        c.settimeout(WAIT)
        assert recv_exactly(c, 4) == b"late"
        assert round_trip(c, b"fast") == b"fast"


def test_delay_keeps_order(proxy):
    """If the delay shrinks while data is in flight, then bytes still arrive in order."""
    proxy.delay(0.2)
    with connect(proxy) as c:
        c.sendall(b"first-")
        proxy.delay(0)
        c.sendall(b"second")
        assert recv_exactly(c, 12) == b"first-second"


def test_cut_after_resets_after_n_bytes(proxy, echo):
    """If cut_after(4) is set, then 4 bytes reach upstream and the client's connection is reset."""
    proxy.cut_after(4)
    with connect(proxy) as c:
        c.sendall(b"abcdefgh")
        with pytest.raises(ConnectionResetError):
            c.recv(1)
    assert echo.wait_received(0, 4) == b"abcd"


def test_cut_after_counts_both_directions(proxy, echo):
    """If cut_after(10) is set, then a 3-byte round trip (6 bytes) passes and the connection dies
    within 4 more bytes."""
    proxy.cut_after(10)
    with connect(proxy) as c:
        assert round_trip(c, b"abc") == b"abc"
        c.sendall(b"0123456789")
        got = b""
        with pytest.raises(ConnectionResetError):
            for _ in range(20):  # bounded: each recv gets data or raises
                chunk = c.recv(100)
                assert chunk, "expected a reset, not an orderly close"
                got += chunk
        assert len(got) <= 4
    assert len(echo.wait_received(0, 13)) == 7  # abc + 4 bytes


def test_cut_after_applies_to_new_connections_only(proxy):
    """If cut_after(0) is set, then an open connection keeps working but a new one is reset."""
    with connect(proxy) as old:
        assert round_trip(old) == b"ping"  # accepted by the proxy before the cut
        proxy.cut_after(0)
        with pytest.raises(ConnectionResetError):
            # The reset may beat connect() to checking the socket's state.
            with connect(proxy) as new:
                new.recv(1)
        assert round_trip(old, b"x" * 100) == b"x" * 100
    proxy.heal()
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"


# -- arguments ----------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com", ""])
def test_non_loopback_host_is_refused(echo, host):
    """If the listen host is not loopback, then the constructor raises ValueError."""
    with pytest.raises(ValueError):
        FaultProxy(echo.address, host=host)


def test_localhost_and_other_loopback_addresses_are_accepted(echo):
    """If the host is "localhost" or 127.0.0.2, then the proxy listens there."""
    with FaultProxy(echo.address, host="localhost") as p:
        assert p.address[0] == "127.0.0.1"
    with FaultProxy(echo.address, host="127.0.0.2") as p:
        assert p.address[0] == "127.0.0.2"
        with connect(p) as c:
            assert round_trip(c) == b"ping"


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_bad_delay_raises_value_error(proxy, value):
    """If delay() gets a negative, NaN or infinite value, then it raises ValueError."""
    with pytest.raises(ValueError):
        proxy.delay(value)


def test_bad_types_raise_type_error(proxy):
    """If delay() or cut_after() get the wrong type, then they raise TypeError."""
    with pytest.raises(TypeError):
        proxy.delay("1")
    with pytest.raises(TypeError):
        proxy.cut_after(1.5)


def test_negative_cut_after_raises_value_error(proxy):
    """If cut_after() gets a negative count, then it raises ValueError."""
    with pytest.raises(ValueError):
        proxy.cut_after(-1)


def test_bad_constructor_arguments(echo):
    """If upstream, port or max_connections are malformed, then the constructor raises."""
    with pytest.raises(TypeError):
        FaultProxy("127.0.0.1:80")
    with pytest.raises(ValueError):
        FaultProxy(("127.0.0.1", 70000))
    with pytest.raises(ValueError):
        FaultProxy(echo.address, max_connections=0)


# -- lifecycle ----------------------------------------------------------------

def test_commands_need_a_running_proxy(echo):
    """If the proxy is not started or already closed, then commands and a restart raise
    RuntimeError."""
    p = FaultProxy(echo.address)
    with pytest.raises(RuntimeError):
        _ = p.address
    with pytest.raises(RuntimeError):
        p.refuse()
    p.start()
    with pytest.raises(RuntimeError):
        p.start()
    p.close()
    p.close()  # idempotent
    for command in (p.refuse, p.accept, p.reset_all, p.close_all, p.blackhole, p.heal):
        with pytest.raises(RuntimeError):
            command()
    with pytest.raises(RuntimeError):
        p.delay(1)
    with pytest.raises(RuntimeError):
        p.start()


def test_close_leaves_no_threads_or_fds(echo):
    """If a busy proxy is closed, then it leaves no thread or file descriptor behind, promptly."""
    threads = set(threading.enumerate())
    fds = fd_count()
    p = FaultProxy(echo.address).start()
    clients = []
    try:
        for _ in range(3):
            clients.append(connect(p))
        assert all(round_trip(c) == b"ping" for c in clients)
        p.delay(5)
        clients[0].sendall(b"delayed")
        p.blackhole()
        clients.append(connect(p))
        wait_count(p, 4)
        start = time.monotonic()
        p.close()
        assert time.monotonic() - start < 1.0
        assert p.connection_count == 0
        for c in clients:
            assert c.recv(1) == b""
    finally:
        p.close()
        for c in clients:
            c.close()
    assert echo.wait_idle()
    assert set(threading.enumerate()) == threads
    assert fd_count() == fds


def test_commands_from_another_thread(proxy):
    """If another thread calls reset_all() while this one waits in recv, then the recv raises
    ConnectionResetError."""
    with connect(proxy) as c:
        assert round_trip(c) == b"ping"
        errors = []

        def fault():
            try:
                proxy.blackhole()
                proxy.heal()
                proxy.reset_all()
            except BaseException as exc:  # reported below
                errors.append(exc)

        worker = threading.Thread(target=fault)
        worker.start()
        try:
            with pytest.raises(ConnectionResetError):
                c.recv(1)
        finally:
            worker.join()
        assert errors == []


def test_concurrent_commands_and_close(echo):
    """If threads issue commands while the proxy closes, then each command either works or raises
    RuntimeError, and none hangs."""
    p = FaultProxy(echo.address).start()
    outcomes = []
    lock = threading.Lock()
    go = threading.Event()

    def hammer():
        go.wait()
        for _ in range(200):
            try:
                p.delay(0)
                p.close_all()
            except RuntimeError:
                with lock:
                    outcomes.append("closed")
                return
        with lock:
            outcomes.append("done")

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    go.set()
    p.close()
    for w in workers:
        w.join(WAIT)
    assert not any(w.is_alive() for w in workers)
    assert len(outcomes) == 4
