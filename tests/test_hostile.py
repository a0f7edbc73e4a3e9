"""Hostile and bad input: each gives a clear error naming the problem, and
the client stays usable wherever that makes sense.

Covers policy values, destinations, socket factories that misbehave,
handshakes that hang, bad buffer sizes and timeouts, TLS verification
defaults, and what may appear in logs, reprs and error messages (never a
payload byte or a credential)."""

import functools
import logging
import math
import socket
import ssl
import time

import pytest
from test_faults import (
    PROMPT,
    LoopServer,
    advance_to_retry,
    echo,
    make,
    server_context,
)

from rcf_sync import (
    ClientClosed,
    ConnectionLost,
    ConnectTimeout,
    RCFError,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
    TCPConnector,
    UNIXConnector,
)
from rcf_sync.testing import FakeClock, FaultProxy

S = State
SECRET = b"SECRET-TOKEN-123"


@pytest.fixture
def proxy(server, no_leaks):
    with FaultProxy(server.address) as p:
        yield p


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


# -- policy values ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"factor": 0.5}, "factor must be >= 1"),
    ({"factor": math.inf}, "factor must be >= 1 and finite"),
    ({"factor": "2"}, "factor must be a number"),
    ({"jitter": 1.0}, r"jitter must be in \[0, 1\)"),
    ({"jitter": -0.1}, r"jitter must be in \[0, 1\)"),
    ({"initialDelay": -1}, "initialDelay must be >= 0"),
    ({"initialDelay": math.nan}, "initialDelay must not be NaN"),
    ({"initialDelay": math.inf}, "initialDelay must be finite"),
    ({"maxDelay": -5}, "maxDelay must be >= 0"),
    ({"maxDelay": True}, "maxDelay must be a number"),
    ({"maxRetries": -1}, "maxRetries must be >= 0"),
    ({"maxRetries": 1.5}, "maxRetries must be None or an integer"),
    ({"maxElapsed": -1}, "maxElapsed must be None or a finite number"),
    ({"jitterMode": "wild"}, "jitterMode must be one of"),
])
def test_bad_policy_values_are_named(kwargs, match):
    """If a policy value is out of range, then ValueError names the attribute and the value."""
    with pytest.raises(ValueError, match=match):
        ReconnectingClientFactory(**kwargs)


def test_unknown_policy_keyword_is_named():
    """If a keyword is not a policy attribute, then TypeError names it."""
    with pytest.raises(TypeError, match="'initial_delay'"):
        ReconnectingClientFactory(initial_delay=1)


# -- destinations ------------------------------------------------------------------


@pytest.mark.parametrize("target, match", [
    (("127.0.0.1", 0), "port must be an integer in 1..65535, got 0"),
    (("127.0.0.1", 70000), "port must be an integer in 1..65535, got 70000"),
    (("127.0.0.1", -1), "port must be an integer in 1..65535"),
    (("127.0.0.1", "80"), "port must be an integer in 1..65535, got '80'"),
    (("127.0.0.1", True), "port must be an integer"),
    (("127.0.0.1", 80.0), "port must be an integer"),
    (("", 80), "host must be a non-empty host name or address, got ''"),
    (("a b", 1), "host must be an IP address or a DNS name"),
    ((None, 80), "host must be a non-empty"),
    (("127.0.0.1",), r"a TCP destination must be \(host, port\)"),
    (("127.0.0.1", 80, 0), r"a TCP destination must be \(host, port\)"),
    (12345, "cannot connect to 12345"),
    (None, "cannot connect to None"),
])
def test_bad_destinations_are_named(target, match):
    """If the destination is malformed, then ValueError names what is wrong with it."""
    with pytest.raises(ValueError, match=match):
        ReconnectingClient(target, backend="thread")


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout": 0}, "timeout must be > 0"),
    ({"timeout": -1}, "timeout must be > 0"),
    ({"timeout": math.nan}, "timeout must be > 0"),
    ({"timeout": "5"}, "timeout must be a number"),
    ({"server_hostname": "x"}, "server_hostname given without an ssl_context"),
    ({"ssl_context": "yes"}, "ssl_context must be an ssl.SSLContext"),
    ({"source_address": "127.0.0.1"}, r"source_address must be \(host, port\)"),
    ({"socket_options": [(1, 2)]}, r"socket_options entries must be \(level, option, value\)"),
    ({"keepalive_idle": 0}, "keepalive_idle must be an integer >= 1"),
])
def test_bad_connector_options_are_named(kwargs, match):
    """If a TCPConnector option is bad, then ValueError names it."""
    with pytest.raises(ValueError, match=match):
        TCPConnector("127.0.0.1", 80, **kwargs)


def test_bad_unix_path_is_named():
    """If a Unix socket path is empty or not a path, then ValueError says so."""
    with pytest.raises(ValueError, match="path must be a non-empty path"):
        UNIXConnector("")
    with pytest.raises(ValueError, match="path must be a non-empty path"):
        UNIXConnector(3)


@pytest.mark.parametrize("host", ["a\x00b", "http://example.com", "user:pw@example.com",
                                  "x" * 300])
def test_hosts_that_cannot_be_host_names_are_rejected(host):
    """If the host cannot be a host name or address, then TCPConnector raises ValueError naming host."""
    with pytest.raises(ValueError, match="host"):
        TCPConnector(host, 80)


# -- socket factories and handshakes that misbehave ---------------------------------


def test_socket_factory_returning_garbage_then_fixed(kit, server, no_leaks):
    """If a socket factory returns a non-socket, then the attempt fails with TypeError naming the factory, and once it returns sockets the client connects."""
    broken = {"yes": True}

    def open_socket():
        if broken["yes"]:
            return "not a socket"
        return socket.create_connection(server.address, timeout=5)

    clock = FakeClock()
    with make(kit, open_socket, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        error = c.stats.last_error
        assert isinstance(error, TypeError)
        assert "open_socket returned str, not a socket" in str(error)
        with pytest.raises(ConnectTimeout, match="returned str, not a socket"):
            c.wait_connected(timeout=0.1)
        broken["yes"] = False
        advance_to_retry(clock)
        assert c.call(echo, b"fixed", timeout=5) == b"fixed"


def test_socket_factory_raising_is_a_failed_attempt(kit, server, no_leaks):
    """If a socket factory raises, then that is a failed attempt (the error kept in stats) and the client keeps trying."""
    calls = []

    def open_socket():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("factory exploded")
        return socket.create_connection(server.address, timeout=5)

    clock = FakeClock()
    with make(kit, open_socket, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        assert isinstance(c.stats.last_error, RuntimeError)
        advance_to_retry(clock)
        assert c.call(echo, b"ok", timeout=5) == b"ok"


def test_failing_socket_factory_prints_nothing(kit, free_port, capfd, server, no_leaks):
    """If a socket factory fails, then the failure goes to stats (and the log), never to stdout or stderr."""

    def open_socket():
        return socket.create_connection(("127.0.0.1", free_port), timeout=2)

    clock = FakeClock()
    with make(kit, open_socket, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        advance_to_retry(clock)
        c.wait_state(S.WAITING, timeout=5)
        assert c.stats.connect_failures == 2
        assert isinstance(c.stats.last_error, ConnectionRefusedError)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_hanging_on_connect_is_cut_by_on_connect_timeout(kit, server, no_leaks):
    """If on_connect blocks reading from a silent server, then its socket times out after on_connect_timeout and the attempt fails with ConnectTimeout; the client recovers."""
    server.mode = "silent"

    def hello(sock):
        sock.sendall(b"HELLO")
        assert sock.recv(5) == b"HELLO"

    clock = FakeClock()
    with make(kit, server.address, clock, on_connect=hello, on_connect_timeout=0.3) as c:
        start = time.monotonic()
        c.wait_state(S.WAITING, timeout=5)
        took = time.monotonic() - start
        assert 0.25 <= took < 0.3 + PROMPT
        assert isinstance(c.stats.last_error, ConnectTimeout)
        assert c.stats.connects == 0
        server.mode = "echo"
        advance_to_retry(clock)
        assert c.call(echo, b"hi", timeout=5) == b"hi"


def test_on_connect_ignoring_its_timeout_is_abandoned(kit, server, no_leaks):
    """If on_connect clears its socket timeout and blocks, then the attempt is abandoned after the connector's timeout plus on_connect_timeout, and the hook's socket call is interrupted."""
    server.mode = "silent"
    returned = kit.event()

    def stubborn(sock):
        sock.settimeout(None)
        try:
            sock.recv(1)
        finally:
            returned.set()

    clock = FakeClock()
    connector = TCPConnector(*server.address, timeout=0.3)
    with make(kit, connector, clock, on_connect=stubborn, on_connect_timeout=0.3) as c:
        try:
            start = time.monotonic()
            c.wait_state(S.WAITING, timeout=5)
            assert time.monotonic() - start < 0.6 + PROMPT
            assert isinstance(c.stats.last_error, ConnectTimeout)
            assert returned.wait(PROMPT), "the abandoned hook is still blocked on its socket"
        finally:
            kit.block(server.drop_all)  # frees a hook left blocked, so that close() is prompt
            returned.wait(5)


# -- buffer sizes and timeouts ---------------------------------------------------------


@pytest.mark.parametrize("bufsize", [0, -1, 10**12, True, 1.5, "10", None])
def test_bad_bufsize_is_rejected_and_client_stays_usable(kit, server, no_leaks, bufsize):
    """If recv() is given a bad bufsize, then ValueError names bufsize and the connection is untouched."""
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        with pytest.raises(ValueError, match="bufsize must be an integer in 1..67108864"):
            c.recv(bufsize, timeout=1)
        c.sendall(b"still here", timeout=5)
        assert c.recv(10, timeout=5) == b"still here"
        assert c.wait_connected(timeout=1) is first and c.stats.losses == 0


def _operations(c):
    return {
        "connection": lambda t: c.connection(timeout=t),
        "wait_connected": lambda t: c.wait_connected(timeout=t),
        "wait_state": lambda t: c.wait_state(S.CONNECTED, timeout=t),
        "call": lambda t: c.call(echo, b"x", timeout=t),
        "sendall": lambda t: c.sendall(b"x", timeout=t),
        "recv": lambda t: c.recv(1, timeout=t),
    }


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, "1", True])
@pytest.mark.parametrize("operation", ["connection", "wait_connected", "wait_state", "call",
                                       "sendall", "recv"])
def test_bad_timeouts_are_rejected_and_client_stays_usable(kit, server, no_leaks,
                                                           operation, timeout):
    """If an operation is given a negative, NaN or non-number timeout, then ValueError names timeout and the connection is untouched."""
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        with pytest.raises(ValueError, match="timeout must be"):
            _operations(c)[operation](timeout)
        assert c.call(echo, b"still here", timeout=5) == b"still here"
        assert c.wait_connected(timeout=1) is first and c.stats.losses == 0


def test_bad_counts_are_rejected(kit, server, no_leaks):
    """If attempts or fail_after_failures is not a positive integer, then ValueError names it."""
    with make(kit, server.address) as c:
        with pytest.raises(ValueError, match="attempts must be an integer >= 1"):
            c.call(echo, b"x", attempts=0, timeout=5)
        with pytest.raises(ValueError, match="fail_after_failures must be an integer >= 1"):
            c.wait_connected(timeout=5, fail_after_failures=0)
        with pytest.raises(ValueError, match="on_connect_timeout must be >= 0"):
            make(kit, server.address, on_connect_timeout=-1)
        assert c.call(echo, b"ok", timeout=5) == b"ok"


def test_infinite_timeout_waits_or_is_rejected(kit, server, no_leaks):
    """If timeout=inf is given, then it means no timeout (or is rejected with ValueError naming timeout), and a healthy connection survives it."""
    with make(kit, server.address) as c:
        first = c.wait_connected(timeout=5)
        rejected = None
        try:
            c.sendall(b"inf", timeout=math.inf)
        except ValueError as exc:
            rejected = exc
        assert rejected is None or "timeout" in str(rejected)
        assert c.wait_connected(timeout=1) is first and c.stats.losses == 0


# -- TLS defaults ----------------------------------------------------------------------


def test_server_hostname_defaults_to_the_host():
    """If no server_hostname is given with an ssl_context, then the host is the name verified."""
    ctx = ssl.create_default_context()
    assert TCPConnector("127.0.0.1", 443, ssl_context=ctx).server_hostname == "127.0.0.1"
    assert TCPConnector("localhost", 443, ssl_context=ctx).server_hostname == "localhost"
    assert TCPConnector("[::1]", 443, ssl_context=ctx).server_hostname == "::1"
    assert TCPConnector("localhost", 443, ssl_context=ctx,
                        server_hostname="api.example").server_hostname == "api.example"
    assert ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED  # left as given


def test_default_context_rejects_an_untrusted_certificate(kit, ca, no_leaks):
    """If the ssl_context is ssl.create_default_context(), then a certificate from an unknown CA is rejected and never used."""
    srv = LoopServer(tls=server_context(ca, "localhost", "127.0.0.1")).start()
    try:
        connector = TCPConnector(*srv.address, timeout=2, ssl_context=ssl.create_default_context())
        clock = FakeClock()
        with make(kit, connector, clock) as c:
            c.wait_state(S.WAITING, timeout=5)
            assert isinstance(c.stats.last_error, ssl.SSLCertVerificationError)
            assert c.stats.connects == 0
            with pytest.raises(ConnectTimeout, match="certificate verify failed"):
                c.call(echo, b"x", timeout=0.1)
    finally:
        srv.close()


# -- nothing secret leaks ------------------------------------------------------------------


def _texts(*objs):
    """Everything an exception, client or connector can show, as one string."""
    out = []
    for obj in objs:
        out += [str(obj), repr(obj)]
        if isinstance(obj, BaseException):
            for attr in ("__cause__", "__context__", "reason"):
                inner = getattr(obj, attr, None)
                if inner is not None:
                    out += [str(inner), repr(inner)]
    return "\n".join(out)


def test_no_payload_in_logs_reprs_or_errors(kit, proxy, caplog, no_leaks):
    """If a secret payload is sent while connections fail and reconnect, then it appears in no log record, repr or error message."""
    secret = SECRET.decode()
    caught = []

    def login(sock):
        assert echo(sock, b"AUTH " + SECRET) == b"AUTH " + SECRET

    caplog.set_level(logging.DEBUG, logger="rcf_sync")
    clock = FakeClock()
    with make(kit, proxy.address, clock, on_connect=login) as c:
        assert c.call(echo, SECRET, timeout=5) == SECRET
        # reset while idle, then a request cut in the middle of the secret
        kit.block(proxy.reset_all)
        c.wait_state(S.WAITING, timeout=5)
        kit.block(proxy.cut_after, len(b"AUTH " + SECRET) * 2 + 4)
        advance_to_retry(clock)
        with pytest.raises(ConnectionLost) as info:
            c.call(echo, SECRET * 4, attempts=1, timeout=5)
        caught.append(info.value)
        # refused attempts, then a caller that times out waiting
        kit.block(proxy.heal)
        kit.block(proxy.refuse)
        c.wait_state(S.WAITING, timeout=5)
        advance_to_retry(clock)
        c.wait_state(S.WAITING, timeout=5)
        with pytest.raises(ConnectTimeout) as info:
            c.call(echo, SECRET, timeout=0.1)
        caught.append(info.value)
        kit.block(proxy.accept)
        advance_to_retry(clock)
        assert c.call(echo, SECRET, timeout=5) == SECRET
        shown = _texts(c, c.connector, c.stats, c.stats.last_error, *caught)
    with pytest.raises(ClientClosed) as info:
        c.call(echo, SECRET, timeout=1)
    shown += _texts(info.value, c)
    assert caplog.records, "expected the factory's log records"
    assert secret not in caplog.text
    assert secret not in shown


def test_no_credentials_from_a_partial_socket_factory(kit, free_port, caplog, server, no_leaks):
    """If the socket factory is a functools.partial holding a token, then the token appears in no repr, error or log."""
    secret = SECRET.decode()

    def open_authenticated(address, token):
        return socket.create_connection(address, timeout=2)

    opener = functools.partial(open_authenticated, ("127.0.0.1", free_port), token=secret)
    caplog.set_level(logging.DEBUG, logger="rcf_sync")
    clock = FakeClock()
    with make(kit, opener, clock) as c:
        c.wait_state(S.WAITING, timeout=5)
        with pytest.raises(RCFError) as info:
            c.wait_connected(timeout=0.1)
        shown = _texts(c, c.connector, c.stats.last_error, info.value)
    assert secret not in caplog.text
    assert secret not in shown
