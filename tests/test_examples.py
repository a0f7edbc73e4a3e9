"""The programs in examples/: each runs by itself to a clean exit (those that
run until Ctrl-C, until interrupted), and the line-protocol example's server
and client can be used from tests."""

import importlib.util
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name):
    """Run examples/NAME.py as a user would (development mode, so unclosed
    resources are reported); return the completed process."""
    return subprocess.run([sys.executable, "-X", "dev", str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=60, cwd=str(EXAMPLES.parent))


def assert_clean_run(proc):
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, output
    return proc.stdout.splitlines()


def test_line_protocol_example_runs():
    """If examples/line_protocol.py is run, then it talks across a server restart and exits 0."""
    lines = assert_clean_run(run_example("line_protocol.py"))
    assert re.fullmatch(r"server listening on 127\.0\.0\.1:\d+", lines[0])
    assert lines[1:] == [
        "PING -> PONG",
        "ECHO hello -> hello",
        "JUMP -> error: unknown command 'JUMP'",
        "server restarted",
        "PING -> PONG",
        "ECHO still here -> still here",
        "handshakes: 2, connections: 2, losses: 1",
        "done",
    ]


def test_thread_pool_example_runs():
    """If examples/thread_pool.py is run, then every job gets its own reply across a restart and it exits 0."""
    lines = assert_clean_run(run_example("thread_pool.py"))
    for expected in ("jobs: 200 on 8 threads", "ok: 200", "mismatched: 0", "failed: 0",
                     "server restarts: 1"):
        assert expected in lines, lines
    assert any(re.fullmatch(r"connections: \d+, losses: [1-9]\d*", line) for line in lines), lines


def test_gevent_app_example_runs():
    """If examples/gevent_app.py is run, then 100 greenlets get their own replies on the gevent backend and it exits 0."""
    pytest.importorskip("gevent")
    lines = assert_clean_run(run_example("gevent_app.py"))
    for expected in ("backend: gevent", "greenlets: 100 sharing one client, 5 requests each",
                     "ok: 500", "mismatched: 0", "failed: 0", "unfinished greenlets: 0",
                     "server restarts: 1"):
        assert expected in lines, lines
    [pause] = [line for line in lines if line.startswith("longest hub pause: ")]
    assert int(re.search(r"(\d+) ms", pause).group(1)) < 1000, pause


@pytest.fixture(scope="module")
def line_protocol():
    spec = importlib.util.spec_from_file_location("line_protocol_example",
                                                  EXAMPLES / "line_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["thread", "gevent"])
def test_line_protocol_serve_and_client_in_process(line_protocol, backend, no_leaks):
    """If the example's serve() and LineClient are used from a test, then they speak the protocol and clean up."""
    if backend == "gevent":
        pytest.importorskip("gevent")
    with line_protocol.serve("127.0.0.1", 0) as server:
        host, port = server.address
        with line_protocol.LineClient(host, port, name="test", backend=backend) as client:
            assert client.ping() == "PONG"
            assert client.echo("a b  c") == "a b  c"
            with pytest.raises(line_protocol.ProtocolError, match="unknown command"):
                client.request("NOPE")
            assert client.echo("") == ""
            assert client.handshakes == 1 and client.stats.connects == 1


class RunningExample:
    """An example run in a subprocess until interrupted like a user's Ctrl-C;
    :meth:`next_line` waits (bounded) for each line it prints."""

    def __init__(self, name, *args):
        self.proc = subprocess.Popen([sys.executable, "-X", "dev", str(EXAMPLES / name), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=str(EXAMPLES.parent))
        self._lines = queue.Queue()
        self._err = []
        # Each pipe has one reader thread, its only reader until it ends: a
        # communicate() beside them would close a pipe under them.
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()
        self.seen = []

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_err(self):
        self._err.append(self.proc.stderr.read())

    def next_line(self, timeout=20):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s after {self.seen}") from None
        assert line is not None, f"the example ended after {self.seen}"
        self.seen.append(line)
        return line

    def interrupt(self):
        """Ctrl-C; return the stderr of a clean exit (status 0)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            for reader in self._readers:
                reader.join(10)
            self.proc.stdout.close()
            self.proc.stderr.close()
        err = "".join(self._err)
        assert self.proc.returncode == 0, err
        assert "Warning" not in err and "Traceback" not in err, err
        return err


def test_twisted_protocol_example_runs_until_interrupted():
    """If examples/twisted_protocol.py is run against a server that greets once and goes away, then it prints Twisted's documented events and exits 0 on Ctrl-C."""
    from documented_client_events import GreetServer

    server = GreetServer(connections=1).start()
    try:
        run = RunningExample("twisted_protocol.py", "127.0.0.1", str(server.port))
        try:
            assert [run.next_line() for _ in range(5)] == [
                "Started to connect.", "Connected.", "Resetting reconnection delay", "hello 1",
                f"Lost connection.  Reason: connection to 127.0.0.1:{server.port} closed cleanly "
                "by the peer"]
            assert run.next_line() == "Started to connect."
            assert run.next_line().startswith("Connection failed. Reason: [Errno 111]")
        finally:
            run.interrupt()
    finally:
        assert server.stop()


def test_redis_subscribe_example_resubscribes_after_a_restart():
    """If examples/redis_subscribe.py runs against a loopback RESP server that publishes, restarts and publishes again, then it prints both messages and subscribes twice."""
    from test_redis_subscribe import FakeRedis

    server = FakeRedis().start()
    try:
        run = RunningExample("redis_subscribe.py", "127.0.0.1", str(server.port), "news")
        try:
            assert run.next_line() == "subscribed to news"
            assert server.publish("news", "hello") == 1
            assert run.next_line() == "news: hello"
            assert server.stop()
            server.start()
            assert run.next_line().startswith("connection lost (")
            assert run.next_line() == "subscribed to news"
            assert server.publish("news", "again") == 1
            assert run.next_line() == "news: again"
        finally:
            run.interrupt()
    finally:
        assert server.stop()
