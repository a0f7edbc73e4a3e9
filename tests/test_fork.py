"""Clients and pools across ``os.fork()``: the child makes its own
connection and never touches the parent's stream; the parent keeps its
connection. Also the thread runtime's lifetime when clients start and close
at the same moment."""

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import fork_helpers
import pytest
from conftest import echo, our_threads, socket_fds

from rcf_sync import (
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
    _leasing,
)
from rcf_sync.testing import EchoServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Python 3.12+ warns that forking a process with threads may deadlock; the
# library's fork handling is what these tests check.
pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)


def in_child(fn):
    """Run ``fn()`` in a forked child; return what it returned (JSON) or
    raise with the child's error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(r)
            try:
                out = {"ok": fn()}
                code = 0
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in out, out.get("error")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return out["ok"]


def child_leak_check(close):
    """In the child: ``close()``, then no thread of ours and no socket of
    ours left (compared with what the child had right after the fork)."""
    before = socket_fds()
    close()
    deadline = time.monotonic() + 5
    while our_threads() and time.monotonic() < deadline:
        our_threads()[0].join(0.1)
    return {"threads": len(our_threads()), "sockets_left": len(socket_fds() - before)}


def test_client_made_before_fork_works_in_child(server, no_leaks):
    """If a process forks, then the child's copy of a client makes its own connection and the parent keeps its own, with no loss."""
    with ReconnectingClient(server.address, factory=quick(), backend="thread") as c:
        parent_sock = c.wait_connected(timeout=5)
        parent_port = parent_sock.getsockname()[1]
        assert c.call(echo, b"before", timeout=5) == b"before"

        def child():
            inherited_closed = parent_sock.fileno() == -1
            port = c.call(lambda s: s.getsockname()[1], timeout=5)
            reply = c.call(echo, b"from the child", timeout=5)
            leaks = child_leak_check(c.close)
            return {"inherited_closed": inherited_closed, "port": port,
                    "reply": reply.decode(), **leaks}

        out = in_child(child)
        assert out == {"inherited_closed": True, "port": out["port"], "reply": "from the child",
                       "threads": 0, "sockets_left": 0}
        assert out["port"] != parent_port
        assert c.call(echo, b"parent again", timeout=5) == b"parent again"
        assert c.wait_connected(timeout=5) is parent_sock
        assert c.stats.losses == 0 and c.stats.connects == 1
    assert server.accepted == 2


def test_a_lease_held_across_fork_hands_the_child_no_dead_socket(server, no_leaks,
                                                                 monkeypatch):
    """If a process forks inside a lease, then the child's end of that lease does not put the parent's connection (closed in the child) back to use: the child's next lease is a connection of its own, and the parent's lease goes on."""
    # Every give-back looks an instant old: the kernel check would not
    # catch a dead socket handed on by the hot path.
    monkeypatch.setattr(_leasing, "_now", lambda: 1000.0)
    with ReconnectingClient(server.address, factory=quick(), backend="thread") as c:
        c.wait_connected(timeout=5)
        lease = c.connection(timeout=5)
        parent_sock = lease.__enter__()
        parent_port = parent_sock.getsockname()[1]
        try:
            def child():
                lease.__exit__(None, None, None)
                with c.connection(timeout=5) as sock:
                    if sock.fileno() == -1:
                        return "the parent's closed socket"
                    return sock.getsockname()[1]

            port = in_child(child)
            assert echo(parent_sock, b"parent") == b"parent"
        finally:
            lease.__exit__(None, None, None)
        assert port != "the parent's closed socket" and port != parent_port
        assert c.stats.losses == 0 and c.stats.connects == 1


def test_pool_made_before_fork_works_in_child(server, no_leaks):
    """If a process forks, then a pool's copy in the child opens its own connections."""
    with ReconnectingPool(server.address, 2, factory=quick(), backend="thread") as pool:
        assert pool.call(echo, b"parent", timeout=5) == b"parent"
        parent_ports = {pool.call(lambda s: s.getsockname()[1], timeout=5)}

        def child():
            port = pool.call(lambda s: s.getsockname()[1], timeout=5)
            reply = pool.call(echo, b"child", timeout=5)
            return {"port": port, "reply": reply.decode(), **child_leak_check(pool.close)}

        out = in_child(child)
        assert out["reply"] == "child" and out["port"] not in parent_ports
        assert out["threads"] == 0 and out["sockets_left"] == 0
        assert pool.call(echo, b"parent again", timeout=5) == b"parent again"
        assert pool.stats.losses == 0


def test_waiting_client_keeps_its_schedule_in_child(free_port, no_leaks):
    """If a client is backing off when the process forks, then in the child it connects once the server is up."""
    with ReconnectingClient(("127.0.0.1", free_port), factory=quick(), backend="thread") as c:
        c.wait_state(State.WAITING, State.CONNECTING, timeout=5)

        def child():
            with EchoServer(port=free_port) as late:
                reply = c.call(echo, b"late", timeout=10)
                c.close()
                late.stop()
            return reply.decode()

        assert in_child(child) == "late"


def test_multiprocessing_fork_pool_uses_its_own_connections(server, no_leaks):
    """If a multiprocessing pool (fork) uses a module-level client, then every answer is right and no worker shares a connection."""
    client = fork_helpers.setup(server.address)
    try:
        parent_port = client.call(lambda s: s.getsockname()[1], timeout=5)
        payloads = [b"job-%d" % i for i in range(40)]
        with multiprocessing.get_context("fork").Pool(4) as workers:
            answers = workers.map(fork_helpers.ask, payloads, chunksize=1)
        assert [reply for _, _, reply in answers] == payloads
        ports_by_pid = {}
        for pid, port, _ in answers:
            ports_by_pid.setdefault(pid, set()).add(port)
        assert all(len(ports) == 1 for ports in ports_by_pid.values()), ports_by_pid
        ports = [next(iter(p)) for p in ports_by_pid.values()]
        assert len(set(ports)) == len(ports) and parent_port not in ports
        assert client.call(echo, b"parent", timeout=5) == b"parent"
        assert client.stats.losses == 0
    finally:
        client.close()


def test_gunicorn_preload_workers_each_make_their_connection(server, free_port, no_leaks):
    """If gunicorn preloads an app with a module-level client and forks 2 sync workers, then every response is right and each worker uses its own connection."""
    pytest.importorskip("gunicorn")
    env = dict(os.environ, RCF_ECHO_PORT=str(server.port),
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--worker-class",
         "sync", "--bind", f"127.0.0.1:{free_port}", "--graceful-timeout", "2",
         "gunicorn_app:app"],
        cwd=str(HERE), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        with ReconnectingClient(("127.0.0.1", free_port), factory=quick()) as probe:
            probe.wait_connected(timeout=30)  # gunicorn is listening
        seen = {}
        for i in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
            try:
                conn.request("GET", f"/?req-{i}")
                response = conn.getresponse()
                body = response.read().decode()
            finally:
                conn.close()
            assert response.status == 200, body
            pid, port, reply = body.split(" ", 2)
            assert reply == f"req-{i}"
            seen.setdefault(int(pid), set()).add(int(port))
        assert all(len(ports) == 1 for ports in seen.values()), seen
        ports = [next(iter(p)) for p in seen.values()]
        assert len(set(ports)) == len(ports)
        # The master's connection plus one per worker that served.
        assert server.accepted == 1 + len(seen)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stdout.close()


GEVENT_FORK = """
    from gevent import monkey
    monkey.patch_all()
    import os, socket
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory
    from rcf_sync.testing import EchoServer, echo_round_trip as echo

    server = EchoServer().start()
    factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)
    c = ReconnectingClient(server.address, factory=factory).start()
    assert c._backend.name == "gevent"
    parent = c.wait_connected(timeout=5)
    assert c.call(echo, b"before", timeout=5) == b"before"
    parent_port = parent.getsockname()[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert parent.fileno() == -1  # our copy of the parent's stream is gone
            port = c.call(lambda s: s.getsockname()[1], timeout=5)
            assert c.call(echo, b"child", timeout=5) == b"child"
            c.close()
            os.write(w, str(port).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_port = int(os.read(r, 100) or 0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert child_port and child_port != parent_port, (child_port, parent_port)
    assert c.call(echo, b"parent", timeout=5) == b"parent"
    assert c.wait_connected(timeout=5) is parent
    assert c.stats.losses == 0 and c.stats.connects == 1
    c.close()
    server.stop()
    print("ok")
"""


def test_gevent_patched_client_across_fork():
    """If a monkey-patched gevent program forks, then the child's client makes its own connection and the parent keeps its own."""
    pytest.importorskip("gevent")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(GEVENT_FORK)],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# -- the runtime's lifetime ------------------------------------------------------------


def test_client_starting_during_the_last_close_keeps_the_runtime(server, no_leaks):
    """If a client starts while the last one is closing, then that close() returns at once and the new client keeps its loop and workers."""
    from rcf_sync import SocketFactoryConnector
    from rcf_sync._backends._thread import get_runtime

    runtime = get_runtime()
    runtime.acquire()  # the last user, about to release
    held, release = threading.Event(), threading.Event()

    def hold_the_loop():
        held.set()
        release.wait(10)

    runtime.post(hold_the_loop)  # the loop cannot stop while this runs
    assert held.wait(5)
    took = {}

    def last_close():
        start = time.monotonic()
        runtime.release(timeout=5)
        took["s"] = time.monotonic() - start

    closer = threading.Thread(target=last_close)
    closer.start()
    try:
        # A socket factory needs a worker: proof that workers are still there.
        factory_connector = SocketFactoryConnector(
            lambda: socket.create_connection(server.address, 5))
        with ReconnectingClient(factory_connector, factory=quick(), backend="thread") as c:
            closer.join(5)
            assert not closer.is_alive() and took["s"] < 1.0, took
            release.set()
            assert c.call(echo, b"alive", timeout=5) == b"alive"
    finally:
        release.set()
        closer.join(5)


class _Collect:
    """A protocol (built on rcf_sync.Protocol at first use) that records what
    it received and whether it heard connectionLost."""

    @staticmethod
    def make():
        from rcf_sync import Protocol

        class Collect(Protocol):
            def connectionMade(self):
                self.received = b""
                self.lost = []
                self.waits = []

            def dataReceived(self, data):
                self.received += data
                for want, event in self.waits:
                    if want in self.received:
                        event.set()

            def connectionLost(self, reason):
                self.lost.append(reason)

        return Collect


def _protocol_round_trip(c, payload):
    def send(p):
        event = threading.Event()
        p.waits.append((payload, event))
        p.transport.write(payload)
        return event

    return c.call_protocol(send, timeout=5).wait(5)


def test_protocol_client_made_before_fork_builds_its_own_protocol_in_child(server, no_leaks):
    """If a process forks while a client drives a protocol, then the child builds a new protocol on its own connection, the copy of the parent's hears nothing, and the parent's keeps working."""
    factory = ReconnectingClientFactory.forProtocol(_Collect.make(), initialDelay=0.01, maxDelay=0.05)
    with ReconnectingClient(server.address, factory=factory, backend="thread") as c:
        p = c.wait_protocol(timeout=5)
        assert _protocol_round_trip(c, b"parent before")

        def child():
            q = c.wait_protocol(timeout=5)
            ok = _protocol_round_trip(c, b"from the child")
            port = c.call_protocol(lambda q: q.transport.getHost().port, timeout=5)
            leaks = child_leak_check(c.close)
            return {"new": q is not p, "ok": ok, "copy_heard": len(p.lost),
                    "child_heard": len(q.lost), "port": port, **leaks}

        out = in_child(child)
        assert out == {"new": True, "ok": True, "copy_heard": 0, "child_heard": 1,
                       "port": out["port"], "threads": 0, "sockets_left": 0}
        assert out["port"] != p.transport.getHost().port
        assert _protocol_round_trip(c, b"parent again")
        assert c.protocol is p and p.lost == [] and c.stats.losses == 0
    assert server.accepted == 2
