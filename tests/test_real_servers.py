"""Against real servers: Debian's redis-server and nginx, on both backends.

The servers (``tests/_servers.py``) are started by these tests on free
loopback ports in temporary directories and SIGKILLed to restart them. A
missing server skips its tests, with the install command in the reason;
with ``CI`` set it fails them instead. The checks under
``gevent.monkey.patch_all()`` live in ``real_servers_patched_suite.py`` and
run in a subprocess, one test each, at the end of this module.
"""

import hashlib
import importlib.util
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _servers import (
    START_TIMEOUT,
    Desync,
    NginxServer,
    RedisServer,
    ServerMissing,
    ci,
    find_binary,
    request,
)

from rcf_sync import (
    ConnectionLost,
    ConnectTimeout,
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
    TCPConnector,
)
from rcf_sync.testing import FakeClock

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
PATCHED_SUITE = HERE / "real_servers_patched_suite.py"

#: The files nginx serves, of known content (one empty, one over a few reads).
FILES = {
    "small.txt": b"hello from nginx\n",
    "empty.txt": b"",
    "large.bin": hashlib.sha256(b"seed").digest() * 4096,  # 128 KiB
}


def need(cls, *args, **kwargs):
    """An instance of the server class, or skip (fail under CI) when its
    program is not installed."""
    try:
        return cls(*args, **kwargs)
    except ServerMissing as exc:
        if ci():
            pytest.fail(f"{exc} (CI is set: the real-server tests must run)")
        pytest.skip(str(exc))


#: Most requests one caller makes in a load test (they stop when told).
MAX_REQUESTS = 2000


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)


def advance_to_retry(clock):
    [call] = clock.getDelayedCalls()
    clock.advance(max(0.0, call.getTime() - clock.seconds()))


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def redis():
    server = need(RedisServer).start()
    yield server
    server.stop()


@pytest.fixture
def nginx():
    server = need(NginxServer, FILES, keepalive_requests=5).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def redis_tls(ca, tmp_path):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = (tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(files[0]))
    cert.private_key_pem.write_to_path(str(files[1]))
    ca.cert_pem.write_to_path(str(files[2]))
    server = need(RedisServer, tls=tuple(str(f) for f in files)).start()
    yield server
    server.stop()


@pytest.fixture
def trusting(ca):
    """A client-side context that trusts the test CA (and verifies)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Progress:
    """Counts finished requests across callers, so that a server is
    restarted only once callers made ``n`` more requests since the last
    restart (while they are still at work)."""

    def __init__(self, kit):
        self.kit = kit
        self.done = 0
        self.stop = False  # tells the callers to finish
        self._lock = threading.Lock()
        self._target = None
        self._event = None

    def tick(self):
        with self._lock:
            self.done += 1
            reached = self._target is not None and self.done >= self._target
            event = self._event if reached else None
        if event is not None:
            event.set()

    def wait_for_more(self, n, timeout=30):
        event = self.kit.event()
        with self._lock:
            self._target, self._event = self.done + n, event
        return event.wait(timeout)


def under_restarts(kit, server, worker, workers_n, restarts, step):
    """Run ``workers_n`` callers ``worker(n, progress)`` and restart
    ``server`` (SIGKILL, start) ``restarts`` times, each after ``step`` more
    requests; end after ``step`` more requests on the last server."""
    progress = Progress(kit)
    workers = [kit.spawn(worker, n, progress) for n in range(workers_n)]
    try:
        for _ in range(restarts):
            assert progress.wait_for_more(step), f"stuck at {progress.done} requests"
            kit.block(server.restart)
        assert progress.wait_for_more(step), f"stuck at {progress.done} requests"
    finally:
        progress.stop = True
        kit.join_all(workers, 60)
    return progress.done


def set_get(sock, key, value):
    """SET then GET on one lease: the GET's reply (its own value, or nil)."""
    if request(sock, "SET", key, value) != "OK":
        raise Desync("SET was not answered OK")
    return request(sock, "GET", key)


# -- a missing server ------------------------------------------------------------


def test_a_missing_program_names_its_package():
    """If a server's program is not on the path, then ServerMissing says which package to apt-get install."""
    with pytest.raises(ServerMissing, match="apt-get install some-package"):
        find_binary("no-such-server-rcf-sync", "some-package")


def test_a_missing_server_skips_locally_and_fails_under_ci(monkeypatch):
    """If a server is not installed, then its tests skip with the install command, or fail when CI is set."""
    class Missing:
        def __init__(self):
            raise ServerMissing("redis-server is not installed: apt-get install redis-server")

    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        need(Missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        need(Missing)


# -- redis: load across SIGKILL restarts -------------------------------------------


def test_load_across_sigkill_restarts_never_mixes_replies(kit, redis, no_leaks, record_property):
    """If 8 callers share one client while redis is SIGKILLed and restarted four times, then every GET sees its own value (or nil) and no request fails."""
    workers_n, restarts, step = 8, 4, 80
    own, nils, mismatches, errors = [], [], [], []

    with ReconnectingClient(redis.address, factory=quick(), backend=kit.name,
                            lost_on=(Desync,)) as c:
        def worker(n, progress):
            for i in range(MAX_REQUESTS):
                if progress.stop:
                    return
                key, value = f"w{n}:r{i}", f"value of w{n}:r{i}".encode() * (1 + i % 7)
                try:
                    got = c.call(set_get, key, value, timeout=20)
                except (ConnectionLost, ConnectTimeout) as exc:
                    errors.append(exc)
                else:
                    if got == value:
                        own.append(key)
                    elif got is None:
                        nils.append(key)
                    else:
                        mismatches.append((key, got[:40]))
                progress.tick()

        total = under_restarts(kit, redis, worker, workers_n, restarts, step)
        stats = c.stats
    record_property("outcome", f"{len(own)} own values, {len(nils)} nil, {len(mismatches)} mismatched,"
                    f" {len(errors)} failed; {stats.connects} connections, {stats.losses} losses")
    assert mismatches == []
    assert errors == []
    assert len(own) + len(nils) == total >= (restarts + 1) * step
    assert redis.starts == restarts + 1
    assert stats.connects >= restarts + 1 and stats.losses >= restarts


# -- redis: an idle connection killed ----------------------------------------------


@pytest.mark.parametrize("how", ["sigkill", "client-kill-id", "client-kill-type"])
def test_idle_connection_killed_is_noticed_and_healed(kit, redis, how, no_leaks, record_property):
    """If redis kills the idle connection (SIGKILL, CLIENT KILL ID, CLIENT KILL TYPE normal), then the client notices without a caller and heals at its retry."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    with ReconnectingClient(redis.address, factory=factory, backend=kit.name, clock=clock) as c:
        first_id = c.call(request, "CLIENT", "ID", timeout=5)
        assert c.state is State.CONNECTED and c.stats.losses == 0
        start = time.monotonic()
        if how == "sigkill":
            kit.block(redis.kill)
        else:
            with socket.create_connection(redis.address, timeout=5) as admin:
                args = ("ID", first_id) if how == "client-kill-id" else ("TYPE", "normal")
                assert request(admin, "CLIENT", "KILL", *args) == 1  # ours, not the admin's
        assert c.wait_state(State.WAITING, timeout=5) is State.WAITING
        noticed = time.monotonic() - start
        assert c.stats.losses == 1 and c.stats.connects == 1
        record_property("noticed_ms", round(noticed * 1000, 1))
        if how == "sigkill":
            kit.block(redis.start)
        advance_to_retry(clock)
        c.wait_connected(timeout=5)
        assert c.call(request, "PING", timeout=5) == "PONG"
        if how != "sigkill":
            assert c.call(request, "CLIENT", "ID", timeout=5) != first_id
        assert c.stats.connects == 2


# -- redis over TLS ------------------------------------------------------------------


def tls_client(kit, redis_tls, ctx, hostname, clock=None):
    connector = TCPConnector("127.0.0.1", redis_tls.port, ssl_context=ctx,
                             server_hostname=hostname, timeout=10)
    factory = quick() if clock is None else ReconnectingClientFactory(jitter=0)
    return ReconnectingClient(connector, factory=factory, backend=kit.name, clock=clock,
                              lost_on=(Desync,))


def test_tls_verified_round_trips_and_survives_a_restart(kit, redis_tls, trusting, no_leaks):
    """If redis speaks only TLS and the context trusts its CA, then the verified connection round-trips, and again after a SIGKILL restart."""
    with tls_client(kit, redis_tls, trusting, "localhost") as c:
        with c.connection(timeout=10) as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            assert ("DNS", "localhost") in sock.getpeercert()["subjectAltName"]
            assert set_get(sock, "tls", b"secret") == b"secret"
        kit.block(redis_tls.restart)
        assert c.call(set_get, "tls", b"again", timeout=10) == b"again"
        assert c.stats.connects >= 2 and c.stats.losses >= 1


@pytest.mark.parametrize("hostname", ["wrong.example", None])
def test_tls_verification_failure_fails_the_attempt(kit, redis_tls, trusting, hostname, no_leaks):
    """If the name asked for is not in redis's certificate (or its CA is not trusted), then the attempt fails verification and no connection is made."""
    ctx = trusting
    if hostname is None:  # a context trusting another CA
        trustme = pytest.importorskip("trustme")
        ctx = ssl.create_default_context()
        trustme.CA().configure_trust(ctx)
        hostname = "localhost"
    with tls_client(kit, redis_tls, ctx, hostname, clock=FakeClock()) as c:
        assert c.wait_state(State.WAITING, State.CONNECTED, timeout=10) is State.WAITING
        assert isinstance(c.stats.last_error, ssl.SSLCertVerificationError), c.stats.last_error
        assert c.stats.connects == 0
        with pytest.raises(ConnectTimeout, match="certificate verify failed"):
            c.wait_connected(timeout=0.2)


# -- redis: the example's per-connection RESP client -------------------------------


@pytest.fixture(scope="module")
def redis_resp():
    return load_example("redis_resp")


def test_resp_session_survives_restarts(kit, redis, redis_resp, no_leaks):
    """If redis is SIGKILLed between requests, then the example's client re-runs its request on a new connection with a new session."""
    with redis_resp.Redis(*redis.address, backend=kit.name, factory=quick()) as r:
        assert r.execute("SET", "k", "v") == "OK"
        first = r.client.call(lambda conn: conn, timeout=5)
        assert isinstance(first, redis_resp.RespConnection) and first.requests == 2
        kit.block(redis.restart)
        assert r.execute("GET", "k") is None  # a new server: nothing saved
        second = r.client.call(lambda conn: conn, timeout=5)
        assert second is not first and second.sock is not first.sock
        assert r.execute("SET", "k2", "a string") == "OK"
        with pytest.raises(redis_resp.RedisError, match="WRONGTYPE"):
            r.execute("LPUSH", "k2", "x")
        # An error reply leaves the stream healthy: the session is kept.
        assert r.client.call(lambda conn: conn, timeout=5) is second
        assert r.execute("PING") == "PONG"


def test_resp_desync_discards_the_connection(kit, redis, redis_resp, no_leaks):
    """If a reply is followed by bytes nobody asked for, then the session raises Desync, lost_on discards the connection and call() re-runs on a clean one."""
    with redis_resp.Redis(*redis.address, backend=kit.name, factory=quick()) as r:
        runs = []

        def stray_bytes_first(conn):
            runs.append(conn)
            if len(runs) == 1:  # as if an earlier reply had been read short
                conn._buf += b"+PONG\r\n"
            return conn.ask("ECHO", "clean")

        assert r.client.call(stray_bytes_first, timeout=10) == b"clean"
        assert len(runs) == 2 and runs[1] is not runs[0]
        assert isinstance(r.client.stats.last_error, redis_resp.Desync)
        assert r.client.stats.losses == 1


# -- nginx: HTTP/1.1 keep-alive with h11 --------------------------------------------


@pytest.fixture(scope="module")
def http():
    pytest.importorskip("h11")
    return load_example("http_keepalive")


def test_keepalive_follows_connection_close(kit, nginx, http, no_leaks):
    """If nginx closes every 5th response with Connection: close, then 12 GETs take 3 connections, every body right, and no request is sent twice."""
    names = sorted(FILES)
    with http.KeepAliveClient(*nginx.address, backend=kit.name, factory=quick()) as client:
        closed, asked = [], []
        for i in range(12):
            name = names[i % len(names)]
            response = client.get(f"/{name}", timeout=10)
            assert response.status == 200 and response.body == FILES[name]
            closed.append(response.closed)
            asked.append(f"GET /{name} HTTP/1.1")
        assert closed == [(i + 1) % 5 == 0 for i in range(12)]
        assert client.client.stats.connects == 3
    assert nginx.logged_requests() == asked


@pytest.mark.parametrize("handle", ["client", "pool"])
def test_keepalive_across_nginx_restarts(kit, nginx, http, handle, no_leaks, record_property):
    """If 4 callers GET files while nginx is SIGKILLed and restarted three times, then every body is right and no request fails."""
    workers_n, restarts, step = 4, 3, 40
    names = sorted(FILES)
    wrong, errors, closes = [], [], []
    host = f"{nginx.host}:{nginx.port}"
    kwargs = dict(factory=quick(), backend=kit.name, lost_on=(http.h11.RemoteProtocolError,),
                  on_connect=lambda sock: http.HTTPSession(sock, host))
    c = (ReconnectingClient(nginx.address, **kwargs) if handle == "client"
         else ReconnectingPool(nginx.address, 3, **kwargs))
    with c:
        def worker(n, progress):
            for i in range(MAX_REQUESTS):
                if progress.stop:
                    return
                name = names[(n + i) % len(names)]
                try:
                    response = c.call(http.HTTPSession.get, f"/{name}", timeout=20)
                except (ConnectionLost, ConnectTimeout) as exc:
                    errors.append(exc)
                else:
                    if response.status != 200 or response.body != FILES[name]:
                        wrong.append((name, response))
                    closes.append(response.closed)
                progress.tick()

        total = under_restarts(kit, nginx, worker, workers_n, restarts, step)
        stats = c.stats
    record_property("outcome", f"{total} GETs, {sum(closes)} Connection: close,"
                    f" {stats.connects} connections, {stats.losses} losses")
    assert wrong == [] and errors == []
    assert len(closes) == total >= (restarts + 1) * step
    assert sum(closes) >= total // 15
    assert nginx.starts == restarts + 1 and stats.connects >= restarts + 1


# -- the examples, run as a user would -----------------------------------------------


def run_example(name, *args):
    return subprocess.run([sys.executable, "-X", "dev", str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=60, cwd=str(EXAMPLES.parent))


def clean_lines(proc):
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, output
    return proc.stdout.splitlines()


def test_redis_resp_example_runs(redis):
    """If examples/redis_resp.py is run against redis, then every GET gets its own value, errors are reported and it exits 0."""
    lines = clean_lines(run_example("redis_resp.py", f"127.0.0.1:{redis.port}"))
    assert lines == ["PING -> PONG", "SET then GET 100 keys: 100 right, 0 wrong", "INCR -> 1",
                     "LPUSH on a string -> WRONGTYPE", "DEL -> 101",
                     "connections: 1, losses: 0", "done"]


def test_http_keepalive_example_runs(nginx):
    """If examples/http_keepalive.py is run against nginx, then every body is right, Connection: close moves it to a new connection and it exits 0."""
    pytest.importorskip("h11")
    lines = clean_lines(run_example("http_keepalive.py", f"127.0.0.1:{nginx.port}",
                                    "/small.txt", "/large.bin", "--repeat", "6"))
    expected = []
    for n in range(12):
        name = ["small.txt", "large.bin"][n % 2]
        body = FILES[name]
        expected.append(f"GET /{name} -> 200, {len(body)} bytes, sha256"
                        f" {hashlib.sha256(body).hexdigest()[:16]}"
                        f"{', Connection: close' if (n + 1) % 5 == 0 else ''}")
    assert lines == expected + ["requests: 12, connections: 3, closed by the server: 2", "done"]


# -- the same under gevent.monkey.patch_all(), in a subprocess -----------------------

PATCHED_CHECKS = re.findall(r"^def check_(\w+)\(", PATCHED_SUITE.read_text(), re.MULTILINE)


@pytest.mark.parametrize("check", PATCHED_CHECKS)
def test_patched(check, record_property):
    """If the named real-server check runs in a monkey-patched process, then it passes."""
    pytest.importorskip("gevent")
    pytest.importorskip("h11")
    proc = subprocess.run([sys.executable, str(PATCHED_SUITE), check], capture_output=True,
                          text=True, timeout=120 + START_TIMEOUT, cwd=str(HERE.parent))
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    if proc.returncode == 3:  # a server is not installed
        if ci():
            pytest.fail(f"{proc.stderr.strip()} (CI is set: the real-server tests must run)")
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, output
    assert re.search(rf"^ok {check} ", proc.stdout, re.MULTILINE), output
    record_property("output", proc.stdout)


def test_redis_subscribe_example_against_redis_server(redis):
    """If examples/redis_subscribe.py runs against redis-server, then messages PUBLISHed reach it, and after a SIGKILL restart it subscribes again and gets the next one."""
    from test_examples import RunningExample

    def publish(text):
        with socket.create_connection(redis.address, timeout=5) as sock:
            return request(sock, "PUBLISH", "news", text)

    run = RunningExample("redis_subscribe.py", redis.address[0], str(redis.address[1]), "news")
    try:
        assert run.next_line() == "subscribed to news"
        assert publish("hello") == 1
        assert run.next_line() == "news: hello"
        redis.restart()
        assert run.next_line().startswith("connection lost (")
        assert run.next_line() == "subscribed to news"
        assert publish("again") == 1
        assert run.next_line() == "news: again"
    finally:
        run.interrupt()
