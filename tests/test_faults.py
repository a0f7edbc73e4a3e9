"""The fault matrix: every network fault a client can meet, on every backend.

Each case checks four things: (a) the exception the caller sees, (b) that
nothing hangs (every client call carries its own ``timeout=``, every socket
operation in a request its own socket timeout), (c) that the client heals
once the fault is lifted (an echo round trip afterwards) and (d) that
nothing leaks (the ``no_leaks`` fixture).

Faults come from :class:`rcf_sync.testing.FaultProxy` in front of the echo
server, from a listener with a full backlog (a SYN-level black hole), from
``LoopServer`` below (TLS, silent and flapping peers) and from the resolver.
Where a test must watch the back-off (state ``WAITING``), it drives it with a
``FakeClock``; elsewhere retries run on the real clock with short delays.
"""

import importlib
import socket
import ssl
import threading
import time

import pytest
from conftest import HungListener

from rcf_sync import (
    ClientClosed,
    ConnectionDone,
    ConnectionLost,
    ConnectTimeout,
    GaveUp,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
    TCPConnector,
)
from rcf_sync.testing import FakeClock, FaultProxy

S = State
IO_TIMEOUT = 5.0  # socket timeout for a request that should complete at once
PROMPT = 1.0  # what "returns promptly" means here, in seconds


# -- helpers -------------------------------------------------------------------


def make(kit, target, clock=None, **kw):
    """A client on the kit's backend: with a FakeClock, Twisted's timing from
    initialDelay=1 without jitter; with the real clock, quick retries."""
    factory = kw.pop("factory", None)
    if factory is None:
        factory = (ReconnectingClientFactory(initialDelay=1.0, jitter=0) if clock is not None
                   else ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0))
    return ReconnectingClient(target, factory=factory, backend=kit.name, clock=clock, **kw)


def read_exactly(sock, n):
    """Read ``n`` bytes; an end of file before that is a ConnectionResetError."""
    got = b""
    while len(got) < n:
        chunk = sock.recv(min(65536, n - len(got)))
        if not chunk:
            raise ConnectionResetError(f"peer closed after {len(got)} of {n} bytes")
        got += chunk
    return got


def echo(sock, payload, io_timeout=IO_TIMEOUT):
    """One request: send ``payload`` and read the same number of bytes back."""
    sock.settimeout(io_timeout)
    sock.sendall(payload)
    return read_exactly(sock, len(payload))


def advance_to_retry(clock):
    """Run the one pending retry of a FakeClock-driven client."""
    [call] = clock.getDelayedCalls()
    clock.advance(max(0.0, call.getTime() - clock.seconds()))


class LoopServer:
    """A loopback server run by threads, for the peers FaultProxy cannot
    play. ``mode`` (read at each accept): ``"echo"``; ``"silent"`` (accepts,
    reads, never answers); ``"flap"`` (closes each connection as soon as it
    is accepted). ``tls``: a server-side ``SSLContext`` (read at each
    accept) or None. Handshake and I/O errors end a connection quietly.
    ``listener``: an already bound, listening socket to serve (adopted)."""

    def __init__(self, mode="echo", tls=None, listener=None):
        self.mode = mode
        self.tls = tls
        if listener is None:
            listener = socket.create_server(("127.0.0.1", 0))
        self._listener = listener
        self.address = listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._open = set()
        self._threads = []
        self._closed = False
        self.accepted = 0

    def start(self):
        t = threading.Thread(target=self._accept_loop, name="test-loop-server", daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._open.add(conn)
                self.accepted += 1
                t = threading.Thread(target=self._handle, args=(conn, self.mode, self.tls),
                                     name="test-loop-conn", daemon=True)
                self._threads.append(t)
            t.start()

    def _handle(self, conn, mode, tls):
        sock = conn
        try:
            if mode == "flap":
                return
            conn.settimeout(10)
            if tls is not None:
                with self._lock:
                    if self._closed:
                        return
                    sock = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    self._open.discard(conn)
                    self._open.add(sock)
                sock.do_handshake()
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                if mode == "echo":
                    sock.sendall(data)
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
                self._open.discard(sock)
            sock.close()
            conn.close()

    def close(self):
        with self._lock:
            self._closed = True
            conns = list(self._open)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)


class SynHole(HungListener):
    """A :class:`HungListener` that can heal: :meth:`heal` frees the backlog
    and serves echo on the same port."""

    def __init__(self):
        super().__init__()
        self.server = None

    def heal(self):
        for f in self._fillers:
            f.close()
        self._fillers = []
        self.server = LoopServer(listener=self._listener).start()
        return self.server

    def close(self):
        for f in self._fillers:
            f.close()
        if self.server is not None:
            self.server.close()
        else:
            self._listener.close()


@pytest.fixture
def proxy(server, no_leaks):
    """A FaultProxy in front of the echo server (closed before the leak check)."""
    with FaultProxy(server.address) as p:
        yield p


@pytest.fixture
def servers(no_leaks):
    """Start LoopServers: ``servers(mode=..., tls=...)``; all closed at teardown."""
    made = []

    def start(**kw):
        s = LoopServer(**kw).start()
        made.append(s)
        return s

    yield start
    for s in made:
        s.close()


@pytest.fixture
def syn_hole(no_leaks):
    hole = SynHole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def server_context(ca, *names):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def client_context(ca=None):
    ctx = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(ctx)
    return ctx


# -- refused, reset, closed ----------------------------------------------------


def test_refused_then_accepted(kit, proxy, no_leaks):
    """If connections are refused, then callers get ConnectTimeout while the client waits, and it connects once they are accepted."""
    kit.block(proxy.refuse)
    clock = FakeClock()
    with make(kit, proxy.address, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, ConnectionRefusedError)
        with pytest.raises(ConnectTimeout, match=f"{proxy.address[1]}.*WAITING"):
            c.call(echo, b"ping", timeout=0.2)
        kit.block(proxy.accept)
        advance_to_retry(clock)
        assert c.call(echo, b"ping", timeout=5) == b"ping"
        assert c.state is S.CONNECTED and c.stats.connect_failures == 1


def test_reset_while_idle_is_noticed_by_the_background(kit, proxy, no_leaks):
    """If an idle connection is reset, then the background moves to WAITING on its own and a waiting caller is served after the reconnect."""
    clock = FakeClock()
    with make(kit, proxy.address, clock) as c:
        first = c.wait_connected(timeout=5)
        kit.block(proxy.reset_all)
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.losses == 1
        assert isinstance(c.stats.last_error, ConnectionResetError)
        assert first.fileno() == -1
        results = []
        caller = kit.spawn(lambda: results.append(c.call(echo, b"after", timeout=5)))
        advance_to_retry(clock)
        kit.join_all([caller], 6)
        assert results == [b"after"]
        assert c.stats.connects == 2


def _request_then(kit, fault):
    """A request during which ``fault`` strikes: the request is sent, the
    proxy holds the reply back (its delay), the fault hits, the reply is read."""
    def request(sock):
        sock.settimeout(IO_TIMEOUT)
        sock.sendall(b"ping")
        kit.block(fault)
        return read_exactly(sock, 4)
    return request


@pytest.mark.parametrize("fault", ["reset_all", "close_all"])
def test_fault_during_request_raises_connection_lost(kit, proxy, no_leaks, fault):
    """If the connection is reset or closed while a request waits for its reply, then the caller gets ConnectionLost and the next request succeeds."""
    clock = FakeClock()
    with make(kit, proxy.address, clock) as c:
        first = c.wait_connected(timeout=5)
        kit.block(proxy.delay, 10.0)  # the reply cannot come before the fault
        with pytest.raises(ConnectionLost, match=f"{proxy.address[1]}") as info:
            c.call(_request_then(kit, getattr(proxy, fault)), attempts=1, timeout=5)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert first.fileno() == -1
        c.wait_state(S.WAITING, timeout=5)
        kit.block(proxy.heal)
        advance_to_retry(clock)
        assert c.call(echo, b"pong", timeout=5) == b"pong"
        assert c.stats.losses == 1 and c.stats.connects == 2


# -- black holes and silence ---------------------------------------------------


def test_blackhole_fails_the_on_connect_handshake(kit, proxy, no_leaks):
    """If the path is black-holed, then the TCP connect succeeds but the on_connect handshake times out: the attempt fails with ConnectTimeout."""
    def hello(sock):
        assert echo(sock, b"HELLO", io_timeout=None) == b"HELLO"

    kit.block(proxy.blackhole)
    clock = FakeClock()
    connector = TCPConnector(*proxy.address, timeout=0.3)
    with make(kit, connector, clock, on_connect=hello, on_connect_timeout=0.3) as c:
        start = time.monotonic()
        c.wait_state(S.WAITING, timeout=5)
        assert time.monotonic() - start < 0.6 + PROMPT
        assert isinstance(c.stats.last_error, ConnectTimeout)
        assert c.stats.connects == 0
        with pytest.raises(ConnectTimeout):
            c.wait_connected(timeout=0.1)
        kit.block(proxy.heal)
        advance_to_retry(clock)
        assert c.call(echo, b"ping", timeout=5) == b"ping"


def test_blackhole_without_handshake_times_out_the_first_read(kit, proxy, no_leaks):
    """If the path is black-holed and there is no handshake, then the client counts as connected and the first request's read timeout raises ConnectionLost."""
    kit.block(proxy.blackhole)
    clock = FakeClock()
    with make(kit, TCPConnector(*proxy.address, timeout=0.3), clock) as c:
        c.wait_connected(timeout=5)
        with pytest.raises(ConnectionLost) as info:
            c.call(echo, b"ping", 0.2, attempts=1, timeout=5)
        assert isinstance(info.value.__cause__, TimeoutError)
        c.wait_state(S.WAITING, timeout=5)
        kit.block(proxy.heal)
        advance_to_retry(clock)
        assert c.call(echo, b"ping", timeout=5) == b"ping"


def test_syn_blackhole_fails_with_connect_timeout(kit, syn_hole, no_leaks):
    """If connects hang in SYN-SENT, then each attempt fails with ConnectTimeout after the connector's timeout, and the client connects once the backlog frees."""
    with make(kit, TCPConnector(*syn_hole.address, timeout=0.3)) as c:
        start = time.monotonic()
        c.wait_state(S.WAITING, timeout=5)
        took = time.monotonic() - start
        assert 0.25 <= took < 0.3 + PROMPT
        assert isinstance(c.stats.last_error, ConnectTimeout)
        assert "timed out" in str(c.stats.last_error)
        with pytest.raises(ConnectTimeout):
            c.call(echo, b"ping", timeout=0.1)
        kit.block(syn_hole.heal)
        assert c.call(echo, b"ping", timeout=5) == b"ping"


def test_silent_peer_read_timeout_discards_the_connection(kit, proxy, no_leaks):
    """If the peer accepts and then says nothing, then a read timeout in a lease raises ConnectionLost and that socket is never leased again."""
    clock = FakeClock()
    with make(kit, proxy.address, clock) as c:
        first = c.wait_connected(timeout=5)
        kit.block(proxy.blackhole)
        with pytest.raises(ConnectionLost) as info:
            with c.connection(timeout=5) as sock:
                assert sock is first
                sock.settimeout(0.2)
                sock.sendall(b"ping")
                sock.recv(4)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert first.fileno() == -1
        c.wait_state(S.WAITING, timeout=5)
        advance_to_retry(clock)
        with c.connection(timeout=5) as sock:
            assert sock is not first
        kit.block(proxy.heal)
        assert c.call(echo, b"ping", timeout=5) == b"ping"
        assert c.stats.losses == 1


# -- slow and cut paths --------------------------------------------------------


def test_latency_only_slows_requests(kit, proxy, no_leaks):
    """If the path adds latency, then requests still succeed, only slower, with no loss."""
    with make(kit, proxy.address) as c:
        c.wait_connected(timeout=5)
        kit.block(proxy.delay, 0.05)
        start = time.monotonic()
        for i in range(3):
            payload = b"slow-%d" % i
            assert c.call(echo, payload, timeout=5) == payload
        assert time.monotonic() - start >= 3 * 0.1 - 0.01
        kit.block(proxy.heal)
        assert c.call(echo, b"fast", timeout=5) == b"fast"
        assert c.stats.losses == 0 and c.state is S.CONNECTED


def test_cut_mid_stream_raises_connection_lost(kit, proxy, no_leaks):
    """If the connection is cut after n bytes, then a larger request raises ConnectionLost, and after healing the same request succeeds."""
    kit.block(proxy.cut_after, 1000)
    payload = bytes(range(256)) * 16  # 4096 bytes
    clock = FakeClock()
    with make(kit, proxy.address, clock) as c:
        c.wait_connected(timeout=5)
        with pytest.raises(ConnectionLost):
            c.call(echo, payload, attempts=1, timeout=5)
        c.wait_state(S.WAITING, timeout=5)
        kit.block(proxy.heal)
        advance_to_retry(clock)
        assert c.call(echo, payload, timeout=5) == payload


# -- name resolution -------------------------------------------------------------


class StubResolver:
    """Wraps the resolver the backends use: records the names looked up and
    the connects made, and once ``lifted`` answers for ``name`` with
    ``target`` (the fault lifted: the record appears)."""

    def __init__(self, monkeypatch, name, target, with_gevent):
        self.name, self.target = name, target
        self.lifted = False
        self.looked_up = []
        self.connects = []
        monkeypatch.setattr(socket, "getaddrinfo", self._wrap(socket.getaddrinfo))
        if with_gevent:  # the gevent backend resolves through gevent.socket
            gsocket = importlib.import_module("gevent.socket")
            monkeypatch.setattr(gsocket, "getaddrinfo", self._wrap(gsocket.getaddrinfo))
        for method in ("connect", "connect_ex"):
            monkeypatch.setattr(socket.socket, method,
                                self._record(getattr(socket.socket, method)))

    def _wrap(self, real):
        def getaddrinfo(host, port, *args, **kw):
            if host == self.name:
                self.looked_up.append(host)
                if self.lifted:
                    return real(self.target[0], self.target[1], *args, **kw)
            return real(host, port, *args, **kw)
        return getaddrinfo

    def _record(self, real):
        def connect(sock, address):
            self.connects.append(address)
            return real(sock, address)
        return connect


def test_name_resolution_failure_stays_local(kit, proxy, monkeypatch, no_leaks):
    """If a name does not resolve (.invalid, RFC 6761), then the attempt fails with gaierror without connecting anywhere, and the client connects once it resolves."""
    resolver = StubResolver(monkeypatch, "name.invalid", proxy.address, kit.name == "gevent")
    clock = FakeClock()
    connector = TCPConnector("name.invalid", 80, timeout=3)  # bounds a slow resolver
    with make(kit, connector, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, socket.gaierror)
        assert "name.invalid" in resolver.looked_up
        assert resolver.connects == []
        with pytest.raises(ConnectTimeout, match="name.invalid:80"):
            c.wait_connected(timeout=0.1)
        resolver.lifted = True
        advance_to_retry(clock)
        assert c.call(echo, b"resolved", timeout=5) == b"resolved"
        assert proxy.address in resolver.connects


# -- TLS -----------------------------------------------------------------------


def test_tls_trusted_round_trip(kit, ca, servers, no_leaks):
    """If the server's certificate is trusted and names the host, then the TLS connection works."""
    srv = servers(tls=server_context(ca, "localhost", "127.0.0.1"))
    connector = TCPConnector(*srv.address, timeout=2, ssl_context=client_context(ca))
    with make(kit, connector) as c:
        assert c.call(echo, b"secure", timeout=5) == b"secure"
        with c.connection(timeout=5) as sock:
            assert sock.version() is not None


def test_tls_untrusted_certificate_fails_verification(kit, ca, servers, no_leaks):
    """If the server's certificate is not trusted, then attempts fail with SSLCertVerificationError until trust is configured."""
    srv = servers(tls=server_context(ca, "localhost", "127.0.0.1"))
    ctx = client_context()  # the system roots only, not our CA
    clock = FakeClock()
    with make(kit, TCPConnector(*srv.address, timeout=2, ssl_context=ctx), clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, ssl.SSLCertVerificationError)
        with pytest.raises(ConnectTimeout, match="certificate verify failed"):
            c.wait_connected(timeout=0.1)
        ca.configure_trust(ctx)
        advance_to_retry(clock)
        assert c.call(echo, b"trusted now", timeout=5) == b"trusted now"


def test_tls_wrong_host_name_fails_verification(kit, ca, servers, no_leaks):
    """If the certificate does not name server_hostname, then attempts fail with SSLCertVerificationError until the server presents a matching one."""
    srv = servers(tls=server_context(ca, "localhost", "127.0.0.1"))
    connector = TCPConnector(*srv.address, timeout=2, ssl_context=client_context(ca),
                             server_hostname="wrong.example")
    clock = FakeClock()
    with make(kit, connector, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        error = c.stats.last_error
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert "wrong.example" in str(error)
        srv.tls = server_context(ca, "wrong.example")
        advance_to_retry(clock)
        assert c.call(echo, b"right name", timeout=5) == b"right name"


def test_tls_handshake_that_never_finishes_times_out(kit, ca, servers, no_leaks):
    """If the peer accepts but never answers the TLS handshake, then the attempt fails with ConnectTimeout after the connector's timeout."""
    srv = servers(mode="silent")
    connector = TCPConnector(*srv.address, timeout=0.5, ssl_context=client_context(ca))
    clock = FakeClock()
    with make(kit, connector, clock) as c:
        start = time.monotonic()
        c.wait_state(S.WAITING, timeout=5)
        assert 0.45 <= time.monotonic() - start < 0.5 + PROMPT
        assert isinstance(c.stats.last_error, ConnectTimeout)
        assert c.stats.connects == 0
        srv.tls, srv.mode = server_context(ca, "localhost", "127.0.0.1"), "echo"
        advance_to_retry(clock)
        assert c.call(echo, b"finally", timeout=5) == b"finally"


# -- handshakes and flapping -------------------------------------------------------


def test_on_connect_fails_then_succeeds(kit, proxy, no_leaks):
    """If on_connect raises, then the attempt fails (callers keep waiting), and once it passes the connection is handed out."""
    refusals = {"left": 2}

    def login(sock):
        assert echo(sock, b"LOGIN") == b"LOGIN"
        if refusals["left"]:
            refusals["left"] -= 1
            raise PermissionError("login refused")

    clock = FakeClock()
    with make(kit, proxy.address, clock, on_connect=login) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, PermissionError)
        with pytest.raises(ConnectTimeout, match="login refused"):
            c.call(echo, b"x", timeout=0.1)
        advance_to_retry(clock)
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 2 and c.stats.connects == 0
        advance_to_retry(clock)
        assert c.call(echo, b"in", timeout=5) == b"in"
        assert c.stats.connects == 1


def test_flapping_server_never_hangs_the_client(kit, servers, no_leaks):
    """If the server accepts and closes at once, round after round, then losses pile up, requests raise ConnectionLost, and once it is fixed requests succeed."""
    srv = servers(mode="flap")
    rounds = 30
    lost = []
    enough = kit.event()

    def on_disconnect(reason):
        lost.append(reason)
        if len(lost) >= rounds:
            enough.set()

    factory = ReconnectingClientFactory(initialDelay=0.001, maxDelay=0.01)
    with make(kit, srv.address, factory=factory, on_disconnect=on_disconnect) as c:
        assert enough.wait(10), f"only {len(lost)} losses"
        with pytest.raises(ConnectionLost):
            c.call(echo, b"x", attempts=2, timeout=5)
        stats = c.stats
        assert stats.losses >= rounds and stats.connects >= rounds
        # The server's close is orderly (ConnectionDone) unless it raced a request.
        assert all(isinstance(r, (ConnectionLost, ConnectionDone)) for r in lost)
        srv.mode = "echo"
        assert c.call(echo, b"fixed", attempts=3, timeout=5) == b"fixed"


# -- close() and stop_trying() from another caller, in every state -----------------


def _enter(kit, where, proxy, free_port, hung_address):
    """A client in state ``where``; for CONNECTED, leased by a holder that
    waits on the returned event."""
    clock = FakeClock()
    release = kit.event()
    holder = None
    if where == "idle":
        c = make(kit, proxy.address, clock)
    elif where == "connecting":
        c = make(kit, TCPConnector(*hung_address, timeout=30), clock).start()
    elif where == "connected":
        c = make(kit, proxy.address, clock).start()
        c.wait_connected(timeout=5)
        leased = kit.event()

        def hold():
            with c.connection(timeout=5):
                leased.set()
                release.wait(10)
        holder = kit.spawn(hold)
        assert leased.wait(5)
    elif where == "waiting":
        c = make(kit, ("127.0.0.1", free_port), clock).start()
        c.wait_state(S.WAITING, timeout=5)
    else:
        factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0, maxRetries=0)
        c = make(kit, ("127.0.0.1", free_port), clock, factory=factory).start()
        c.wait_state(S.STOPPED, timeout=5)
    assert c.state is S[where.upper()]
    return c, release, holder


def _run_elsewhere(kit, fn):
    """Run ``fn`` in another thread/greenlet; return (seconds it took, error)."""
    out = {}

    def run():
        start = time.monotonic()
        try:
            fn()
        except BaseException as exc:
            out["error"] = exc
        out["took"] = time.monotonic() - start

    w = kit.spawn(run)
    w.join(PROMPT + 1)
    return out.get("took"), out.get("error")


def _waiters(kit, c, n=3):
    results = []

    def wait():
        try:
            with c.connection(timeout=10):
                results.append("leased")
        except Exception as exc:
            results.append(exc)

    workers = [kit.spawn(wait) for _ in range(n)]
    if c.state is S.STOPPED:  # they give up at once
        kit.join_all(workers, 5)
    else:
        c.wait_waiting(n, timeout=5)
    return workers, results


STATES = ["idle", "connecting", "connected", "waiting", "stopped"]


@pytest.mark.parametrize("where", STATES)
def test_close_from_another_caller_in_every_state(kit, proxy, free_port, hung_address,
                                                  no_leaks, where):
    """If close() is called from another thread or greenlet in any state, then it returns promptly and every waiter gets ClientClosed."""
    c, release, holder = _enter(kit, where, proxy, free_port, hung_address)
    workers, results = _waiters(kit, c) if where != "idle" else ([], [])
    took, error = _run_elsewhere(kit, c.close)
    release.set()
    kit.join_all(workers + ([holder] if holder else []), 5)
    assert error is None and took is not None and took < PROMPT
    assert c.state is S.CLOSED
    if where == "stopped":  # nobody blocks when STOPPED: they gave up before close()
        assert all(isinstance(r, GaveUp) for r in results)
    else:
        assert all(isinstance(r, ClientClosed) for r in results) and len(results) == len(workers)
    with pytest.raises(ClientClosed):
        c.wait_connected(timeout=1)


@pytest.mark.parametrize("where", [
    "idle",
    "connecting",
    "connected", "waiting", "stopped"])
def test_stop_trying_from_another_caller_in_every_state(kit, proxy, free_port, hung_address,
                                                        no_leaks, where):
    """If stop_trying() is called from another thread or greenlet in any state, then it returns promptly; waiters get GaveUp, except that a live connection stays up until lost."""
    c, release, holder = _enter(kit, where, proxy, free_port, hung_address)
    workers, results = _waiters(kit, c) if where != "idle" else ([], [])
    try:
        took, error = _run_elsewhere(kit, c.stop_trying)
        assert error is None, error
        assert took is not None and took < PROMPT
        if where in ("connecting", "waiting", "stopped"):
            assert c.wait_state(S.STOPPED, timeout=PROMPT) is S.STOPPED
        release.set()
        kit.join_all(workers + ([holder] if holder else []), 5)
        if where == "connected":
            assert results == ["leased"] * len(workers)
            assert c.state is S.CONNECTED
            kit.block(proxy.close_all)
            c.wait_state(S.STOPPED, timeout=5)
        elif where != "idle":
            assert all(isinstance(r, GaveUp) for r in results) and len(results) == len(workers)
        if where != "idle":
            with pytest.raises(GaveUp, match="stop_trying|gave up"):
                c.wait_connected(timeout=1)
        if where == "connected":
            c.reconnect_now()  # trying again on request
            assert c.call(echo, b"again", timeout=5) == b"again"
    finally:
        release.set()
        c.close()
        kit.join_all(workers + ([holder] if holder else []), 5)
