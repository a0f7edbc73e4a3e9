"""Shared fixtures: loopback servers, the backend parameter, leak checks."""

import contextlib
import os
import socket
import sys
import threading
import time

import pytest

from rcf_sync.testing import EchoServer
from rcf_sync.testing import echo_round_trip as echo

BACKENDS = ["thread", "gevent"]


def open_fds():
    """The descriptors this process has open (Linux: /proc/self/fd)."""
    try:
        return set(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def our_threads():
    return [t for t in threading.enumerate() if t.name.startswith("rcf_sync")]


@pytest.fixture
def server():
    s = EchoServer().start()
    yield s
    s.stop()


class HungListener:
    """A loopback listener whose backlog is full, so that a connect to it
    hangs in SYN-SENT (a black hole without leaving loopback)."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.address = self._listener.getsockname()
        self._fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(self.address)
            self._fillers.append(f)

    def close(self):
        for f in self._fillers:
            f.close()
        self._listener.close()


@pytest.fixture
def hung_address():
    """(host, port) where a connect hangs until its timeout."""
    hung = HungListener()
    yield hung.address
    hung.close()


@pytest.fixture
def free_port():
    """A loopback port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Kit:
    """What a client test needs from its backend: how to run concurrent
    callers and how to block on plain threading objects without starving
    the gevent hub."""

    def __init__(self, name):
        self.name = name
        if name == "gevent":
            import gevent

            self._gevent = gevent

    def spawn(self, fn, *args):
        """Start ``fn`` concurrently; return an object with ``join(timeout)``."""
        if self.name == "gevent":
            return self._gevent.spawn(fn, *args)
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        return t

    def event(self):
        """An event callers of this backend may wait on."""
        if self.name == "gevent":
            return self._gevent.event.Event()
        return threading.Event()

    def sleep(self, seconds):
        """Let the others run for a moment (only where no event can say when)."""
        if self.name == "gevent":
            self._gevent.sleep(seconds)
        else:
            time.sleep(seconds)

    def drop(self, server, reset=False, n=1):
        """Close (or reset) the server's side once it has accepted ``n`` connections."""
        assert self.block(server.wait_accepted, n, 5)
        server.drop_all(reset=reset)

    def block(self, fn, *args):
        """Call a blocking function (threading.Event.wait, socket accept...)."""
        if self.name == "gevent":
            return self._gevent.get_hub().threadpool.apply(fn, args)
        return fn(*args)

    def join_all(self, workers, timeout):
        deadline = time.monotonic() + timeout
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if self.name == "gevent":
            assert all(w.dead for w in workers), "greenlets still running"
        else:
            assert not any(w.is_alive() for w in workers), "threads still running"


@pytest.fixture(params=BACKENDS)
def kit(request):
    """Each client test runs once per backend."""
    if request.param == "gevent":
        pytest.importorskip("gevent")
    return Kit(request.param)


@contextlib.contextmanager
def loop_held():
    """Keep the thread backend's shared loop busy (blocked in a callback of
    ours) for the duration of the block."""
    from rcf_sync._backends._thread import get_runtime

    stuck, release = threading.Event(), threading.Event()

    def hold_the_loop():
        stuck.set()
        release.wait(10)

    get_runtime().post(hold_the_loop)
    assert stuck.wait(5), "the loop did not run our callback"
    try:
        yield
    finally:
        release.set()


def live_greenlets():
    gevent = __import__("sys").modules.get("gevent")
    if gevent is None:
        return []
    import gc

    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]


@pytest.fixture
def no_leaks(server):
    """Fail if a test leaves a thread of ours, a greenlet or a descriptor
    (the test's server is stopped first)."""
    fds_before = open_fds()
    yield
    server.stop()
    assert live_greenlets() == []
    deadline = time.monotonic() + 5
    while our_threads() and time.monotonic() < deadline:
        our_threads()[0].join(0.1)
    assert our_threads() == [], f"threads left: {our_threads()}"
    sockets = _new_sockets(fds_before)
    if sockets and "gevent" in sys.modules:
        # gevent closes a descriptor some watchers still use on a later turn
        # of its loop; give it those turns (bounded) before judging.
        import gevent

        for _ in range(50):
            gevent.sleep(0.01)
            sockets = _new_sockets(fds_before)
            if not sockets:
                break
    assert sockets == [], f"sockets left open: {sockets}"


def socket_fds(fds=None):
    """Which of ``fds`` (default: every open descriptor) are sockets now."""
    out = set()
    for fd in open_fds() if fds is None else fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.add(fd)
        except OSError:
            pass
    return out


def _new_sockets(fds_before):
    # A descriptor number may be reused; count only what is a socket now.
    return sorted(socket_fds(open_fds() - fds_before))


def unique_payload_run(kit, handle, server, workers=8, requests=40, restarts=5):
    """Run ``workers`` callers doing ``handle.call(echo, ...)`` with payloads
    nobody else sends while the server is restarted ``restarts`` times.
    Returns (done, errors, mismatches); every error is ConnectionLost or
    ConnectTimeout (anything else propagates from the join)."""
    from rcf_sync import ConnectionLost, ConnectTimeout

    mismatches, done, errors = [], [], []
    progress = kit.event()
    finished = []

    def worker(n):
        try:
            run(n)
        finally:
            finished.append(n)
            progress.set()

    def run(n):
        for i in range(requests):
            payload = f"<{n}:{i}>".encode() * 8
            try:
                got = handle.call(echo, payload, attempts=3, timeout=5)
            except (ConnectionLost, ConnectTimeout) as exc:
                errors.append(exc)
                continue
            if got != payload:
                mismatches.append((payload, got))
            done.append(1)
            progress.set()

    spawned = [kit.spawn(worker, n) for n in range(workers)]
    for _ in range(restarts):
        # Requests complete between restarts (or every worker has finished).
        if len(finished) < workers:
            assert progress.wait(10)
        progress.clear()
        server.stop()
        server.start()
    kit.join_all(spawned, 60)
    assert len(done) + len(errors) == workers * requests
    return done, errors, mismatches
