"""TLS through TCPConnector and UNIXConnector, on every backend (``kit``).

Certificates come from trustme: one CA signs the server's certificate for
``localhost``, ``127.0.0.1`` and ``::1``; the client trusts that CA through
``ssl.create_default_context()``, which checks certificates and host names.
"""

import contextlib
import socket
import ssl
import threading

import pytest

from rcf_sync import (
    ConnectTimeout,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
    TCPConnector,
    UNIXConnector,
)
from rcf_sync.testing import FakeClock

trustme = pytest.importorskip("trustme")

S = State


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_context(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class TLSEchoServer:
    """A TLS echo server in its own threads, on 127.0.0.1 or a Unix path.
    ``handshakes`` counts completed server-side handshakes and ``errors``
    holds the handshake failures it saw."""

    MAX_ACCEPTS = 1000
    MAX_READS = 100000

    def __init__(self, context, unix_path=None):
        self.context = context
        self.unix_path = unix_path
        self.handshakes = 0
        self.errors = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._socks = set()
        self._threads = []
        if unix_path is None:
            self._listener = socket.socket()
            self._listener.bind(("127.0.0.1", 0))
        else:
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(unix_path)
        self._listener.listen(16)
        self.address = self._listener.getsockname()
        self._start(self._accept_loop)

    @property
    def port(self):
        return self.address[1]

    def _start(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self):
        for _ in range(self.MAX_ACCEPTS):
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            with self._lock:
                self._socks.add(conn)
            self._start(self._handle, conn)

    def _handle(self, conn):
        tls = None
        try:
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._socks.discard(conn)
                self._socks.add(tls)
            try:
                tls.do_handshake()
            except OSError as exc:
                self.errors.append(exc)
                return
            with self._lock:
                self.handshakes += 1
                self._changed.notify_all()
            for _ in range(self.MAX_READS):
                data = tls.recv(65536)
                if not data:
                    return
                tls.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(conn)
                self._socks.discard(tls)
            (tls or conn).close()
            conn.close()

    def wait_handshakes(self, n, timeout):
        """Block until ``n`` handshakes have completed in all."""
        with self._lock:
            return self._changed.wait_for(lambda: self.handshakes >= n, timeout)

    def drop_all(self):
        """Close the transport of every connection (a FIN under the TLS)."""
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self.drop_all()
        for t in self._threads:
            t.join(5)
        assert not any(t.is_alive() for t in self._threads), "TLS server threads still running"


@pytest.fixture
def tls_server(server_context):
    srv = TLSEchoServer(server_context)
    yield srv
    srv.close()


@pytest.fixture
def unix_tls_server(server_context, tmp_path):
    srv = TLSEchoServer(server_context, unix_path=str(tmp_path / "tls.sock"))
    yield srv
    srv.close()


def make(kit, connector, clock):
    """A client on the kit's backend and a FakeClock: after a failed attempt
    it stays WAITING until the test moves the clock."""
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    return ReconnectingClient(connector, factory=factory, backend=kit.name, clock=clock)


def echo(sock, payload):
    sock.settimeout(5)
    sock.sendall(payload)
    got = b""
    for _ in range(len(payload) + 1):
        if len(got) >= len(payload):
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed mid-reply")
        got += chunk
    return got


def assert_tls(sock):
    assert sock.version() in ("TLSv1.2", "TLSv1.3")
    assert sock.cipher() is not None


@contextlib.contextmanager
def first_attempt(kit, connector):
    """A client on a FakeClock (so no retry happens by itself) whose first
    attempt must succeed; it is closed when the block ends."""
    with make(kit, connector, FakeClock()) as c:
        if c.wait_state(S.CONNECTED, S.WAITING, timeout=10) is not S.CONNECTED:
            pytest.fail(f"the first attempt failed: {c.stats.last_error!r}")
        yield c


def failed_first_attempt(kit, connector):
    """Start a client on a FakeClock, wait for its first attempt to fail;
    return the client's last error (the client is closed)."""
    clock = FakeClock()
    with make(kit, connector, clock) as c:
        assert c.wait_state(S.WAITING, S.CONNECTED, timeout=10) is S.WAITING
        stats = c.stats
        assert stats.connects == 0 and stats.connect_failures == 1
        assert len(clock.getDelayedCalls()) == 1  # the factory schedules a retry
        return stats.last_error


def test_tls_round_trip_hands_out_a_tls_socket(kit, no_leaks, tls_server, client_context):
    """If a TCPConnector has an ssl_context trusting the server's CA, then the handshake verifies and the socket handed out speaks TLS."""
    connector = TCPConnector("127.0.0.1", tls_server.port, ssl_context=client_context, timeout=10)
    assert connector.server_hostname == "127.0.0.1"
    with first_attempt(kit, connector) as c:
        with c.connection(timeout=10) as sock:
            assert_tls(sock)
            assert echo(sock, b"over tls") == b"over tls"
        assert c.call(echo, b"by call", timeout=10) == b"by call"
        c.sendall(b"by handle", timeout=10)
        assert c.recv(9, timeout=10) == b"by handle"
        assert c.stats.connects == 1
    assert tls_server.handshakes == 1


def test_tls_by_host_name_verifies_the_name(kit, no_leaks, tls_server, client_context):
    """If the connector's host is "localhost", then the certificate is checked against that name and the connection works."""
    connector = TCPConnector("localhost", tls_server.port, ssl_context=client_context, timeout=10)
    assert connector.server_hostname == "localhost"
    with first_attempt(kit, connector) as c:
        with c.connection(timeout=10) as sock:
            assert_tls(sock)
            assert ("DNS", "localhost") in sock.getpeercert()["subjectAltName"]
            assert echo(sock, b"named") == b"named"


def test_untrusted_ca_fails_the_attempt(kit, no_leaks, tls_server):
    """If the server's certificate comes from a CA the context does not trust, then the attempt fails with SSLCertVerificationError and the client waits to retry."""
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    connector = TCPConnector("127.0.0.1", tls_server.port, ssl_context=other, timeout=10)
    error = failed_first_attempt(kit, connector)
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    assert "certificate verify failed" in str(error)
    assert tls_server.handshakes == 0


def test_wrong_server_hostname_fails_verification(kit, no_leaks, tls_server, client_context):
    """If server_hostname is not a name in the certificate, then the attempt fails with a host name mismatch."""
    connector = TCPConnector("127.0.0.1", tls_server.port, ssl_context=client_context,
                             server_hostname="example.org", timeout=10)
    error = failed_first_attempt(kit, connector)
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    assert "mismatch" in error.verify_message.lower()
    assert "example.org" in error.verify_message
    assert tls_server.handshakes == 0


BACKENDS_UNIX_TLS = ["thread", "gevent"]


@pytest.mark.parametrize("kit", BACKENDS_UNIX_TLS, indirect=True)
def test_unix_tls_with_server_hostname(kit, no_leaks, unix_tls_server, client_context):
    """If a UNIXConnector has an ssl_context and an explicit server_hostname, then TLS verifies that name and round-trips."""
    connector = UNIXConnector(unix_tls_server.address, ssl_context=client_context,
                              server_hostname="localhost", timeout=10)
    with first_attempt(kit, connector) as c:
        with c.connection(timeout=10) as sock:
            assert sock.family == socket.AF_UNIX
            assert_tls(sock)
            assert echo(sock, b"unix tls") == b"unix tls"


@pytest.mark.parametrize("kit", BACKENDS_UNIX_TLS, indirect=True)
def test_unix_tls_without_server_hostname_is_refused(kit, no_leaks, unix_tls_server, client_context):
    """If a UNIXConnector's context checks host names but no server_hostname is given, then no connection is made and the error names server_hostname."""
    assert client_context.check_hostname
    try:
        connector = UNIXConnector(unix_tls_server.address, ssl_context=client_context, timeout=10)
    except ValueError as exc:  # refused up front: also acceptable
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert "server_hostname" in str(refused)
        return
    error = failed_first_attempt(kit, connector)
    assert isinstance(error, ValueError), repr(error)
    assert "server_hostname" in str(error)
    assert unix_tls_server.handshakes == 0


@pytest.mark.parametrize("bad", [True, "tls", ssl, object()], ids=["True", "str", "module", "object"])
def test_ssl_context_must_be_an_ssl_context(bad, tmp_path):
    """If ssl_context is not an ssl.SSLContext, then the connector raises ValueError."""
    with pytest.raises(ValueError, match="ssl_context must be an ssl.SSLContext"):
        TCPConnector("127.0.0.1", 443, ssl_context=bad)
    with pytest.raises(ValueError, match="ssl_context must be an ssl.SSLContext"):
        UNIXConnector(str(tmp_path / "s"), ssl_context=bad)


def test_server_hostname_needs_an_ssl_context(tmp_path):
    """If server_hostname is given without an ssl_context, then the connector raises ValueError."""
    with pytest.raises(ValueError, match="server_hostname given without an ssl_context"):
        TCPConnector("127.0.0.1", 443, server_hostname="localhost")
    with pytest.raises(ValueError, match="server_hostname given without an ssl_context"):
        UNIXConnector(str(tmp_path / "s"), server_hostname="localhost")




@pytest.mark.parametrize("kit", ["thread", "gevent"],
                         indirect=True)
def test_idle_tls_connection_loss_is_noticed(kit, no_leaks, tls_server, client_context):
    """If the server closes an idle TLS connection nobody has leased, then the background notices and the client waits to reconnect."""
    clock = FakeClock()
    connector = TCPConnector("127.0.0.1", tls_server.port, ssl_context=client_context, timeout=10)
    with make(kit, connector, clock) as c:
        c.wait_connected(timeout=10)
        assert kit.block(tls_server.wait_handshakes, 1, 5)  # its session tickets are sent
        if kit.name == "gevent":
            import gevent

            gevent.idle()  # the hub has handled what arrived on the connection
        tls_server.drop_all()
        c.wait_state(S.WAITING, timeout=1)
        assert c.stats.losses == 1


def test_stalled_tls_handshake_is_bounded_by_the_connector_timeout(kit, no_leaks, client_context):
    """If the server accepts TCP but never answers the TLS handshake, then the attempt fails with ConnectTimeout after the connector's timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes the TCP connect; nobody ever answers
    try:
        connector = TCPConnector(*silent.getsockname(), ssl_context=client_context, timeout=0.3)
        error = failed_first_attempt(kit, connector)
        assert isinstance(error, ConnectTimeout), repr(error)
        assert "timed out" in str(error)
    finally:
        silent.close()


def test_plaintext_server_fails_the_tls_attempt(kit, no_leaks, server, client_context):
    """If the server does not speak TLS, then the attempt fails with an ssl.SSLError."""
    connector = TCPConnector(*server.address, ssl_context=client_context, timeout=10)
    error = failed_first_attempt(kit, connector)
    assert isinstance(error, ssl.SSLError), repr(error)


def test_a_protocol_runs_over_tls(kit, no_leaks, tls_server, client_context):
    """If the factory builds a protocol and the connector speaks TLS, then a megabyte echoed back arrives whole and in order, and the server's close is ConnectionDone."""
    from rcf_sync import ConnectionDone, Protocol

    payload = bytes(range(256)) * 4096
    enough, gone = kit.event(), kit.event()
    lost = []

    class Collect(Protocol):
        received = b""

        def dataReceived(self, data):
            self.received += data
            if len(self.received) >= len(payload):
                enough.set()

        def connectionLost(self, reason):
            lost.append(reason)
            gone.set()

    connector = TCPConnector("127.0.0.1", tls_server.port, ssl_context=client_context, timeout=10)
    factory = ReconnectingClientFactory.forProtocol(Collect, initialDelay=1.0, jitter=0)
    with ReconnectingClient(connector, factory=factory, backend=kit.name, clock=FakeClock()) as c:
        p = c.wait_protocol(timeout=10)
        c.call_protocol(lambda p: p.transport.write(payload), timeout=10)
        assert enough.wait(10)
        assert p.received == payload
        kit.block(tls_server.drop_all)
        assert gone.wait(10)
    assert lost[0].check(ConnectionDone)
