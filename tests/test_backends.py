"""Backend selection and the backends' real clocks.

Selection: ``get_backend`` and ``ReconnectingClient(backend=...)``, with
gevent absent (subprocesses where ``import gevent`` fails) and present but
not monkey-patched (this process). Clocks: the thread backend's
``ThreadClock`` and the gevent backend's ``GeventClock`` against Twisted's
``IReactorTime`` / ``IDelayedCall`` contract, with small real delays. Last,
behaviour both backends must share that concerns how they watch idle
connections.
"""

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import our_threads

from rcf_sync import (
    AlreadyCalled,
    AlreadyCancelled,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
)
from rcf_sync._backends import _base, get_backend, socket_is_patched
from rcf_sync._backends._thread import ThreadClock
from rcf_sync.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent


def run_python(code):
    """Run ``code`` in a fresh interpreter; return the completed process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=str(ROOT))


def assert_ok(proc):
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# -- selection -------------------------------------------------------------------


def test_gevent_backend_without_gevent_names_the_extra():
    """If backend="gevent" is asked for and gevent cannot be imported, then ImportError says how to install it."""
    proc = run_python("""
        import sys
        sys.modules["gevent"] = None  # import gevent now fails
        import rcf_sync
        try:
            rcf_sync.ReconnectingClient(("127.0.0.1", 9), backend="gevent")
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("no error")
    """)
    assert_ok(proc)
    assert proc.stdout.startswith("ImportError:"), proc.stdout
    assert 'pip install "rcf_sync[gevent]"' in proc.stdout


def test_auto_without_gevent_is_thread():
    """If gevent cannot be imported, then backend="auto" is the thread backend and a client works."""
    proc = run_python("""
        import socket, sys
        sys.modules["gevent"] = None
        import rcf_sync
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with rcf_sync.ReconnectingClient(listener.getsockname()) as c:
            c.wait_connected(timeout=5)
            print("backend", c._backend.name)
        conn, _ = listener.accept()
        conn.close()
        listener.close()
    """)
    assert_ok(proc)
    assert proc.stdout.split() == ["backend", "thread"]


def test_auto_is_thread_when_not_patched():
    """If socket is not monkey-patched (even with gevent imported), then "auto" picks the thread backend."""
    pytest.importorskip("gevent")
    assert not socket_is_patched()
    assert get_backend("auto").name == "thread"
    assert get_backend().name == "thread"
    c = ReconnectingClient(("127.0.0.1", 9))
    assert c._backend.name == "thread"
    assert isinstance(c.clock, ThreadClock)
    c.close()


def test_import_does_not_import_gevent():
    """If rcf_sync (and its testing kit) is imported, then gevent is not."""
    proc = run_python("""
        import sys
        import rcf_sync, rcf_sync.testing
        from rcf_sync._backends import get_backend, socket_is_patched
        socket_is_patched()
        get_backend("thread")
        print(sorted(m for m in sys.modules if m.split(".")[0] == "gevent"))
    """)
    assert_ok(proc)
    assert proc.stdout.strip() == "[]"


def test_thread_backend_use_does_not_import_gevent():
    """If a thread-backend client (explicit or "auto") connects, talks and closes, then gevent is never imported."""
    proc = run_python("""
        import socket, sys
        import rcf_sync
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        for backend in ("thread", "auto"):
            with rcf_sync.ReconnectingClient(listener.getsockname(), backend=backend) as c:
                conn, _ = listener.accept()
                c.sendall(b"x", timeout=5)
                assert conn.recv(1) == b"x"
                conn.close()
        listener.close()
        print(sorted(m for m in sys.modules if m.split(".")[0] == "gevent"))
    """)
    assert_ok(proc)
    assert proc.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FDSize is Linux's")
@pytest.mark.parametrize("soft", [1024, 8192])
def test_the_thread_runtime_grows_the_descriptor_table_before_its_thread(soft):
    """If the thread runtime starts, then the process's descriptor table already holds FD_TABLE descriptors (or the soft limit, if lower), and the descriptor used to grow it is closed."""
    proc = run_python(f"""
        import os, resource, threading
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, max({soft}, hard)))

        def table():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("FDSize"))

        import rcf_sync
        from rcf_sync._backends._runtime import FD_TABLE
        from rcf_sync.testing import EchoServer
        with EchoServer() as server:
            before, fds = table(), len(os.listdir("/proc/self/fd"))
            with rcf_sync.ReconnectingClient(server.address, backend="thread") as client:
                client.wait_connected(timeout=10)
                assert server.wait_accepted(1, 10)
                after = table()
                # the loop's wake-up pair and poller, the client's socket, the server's side
                opened = len(os.listdir("/proc/self/fd")) - fds
        print(before, after, min(FD_TABLE, {soft}), opened)
    """)
    assert_ok(proc)
    before, after, want, opened = map(int, proc.stdout.split())
    assert before < want <= after
    assert opened == 5


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_a_burst_of_starts_on_one_cpu_is_taken_by_the_loop_when_the_caller_waits():
    """If a caller on one CPU starts 100 clients back to back, then the loop thread takes none of them before the caller waits (no loop pass per start: a wake-up that preempts the caller hands the CPU back)."""
    proc = run_python("""
        import os, subprocess, sys
        cpus = sorted(os.sched_getaffinity(0))
        server = subprocess.Popen(
            [sys.executable, "-c", "import sys\\nfrom rcf_sync.testing import EchoServer\\n"
             "with EchoServer() as s:\\n print(s.address[1], flush=True)\\n sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            os.sched_setaffinity(server.pid, {cpus[1]})  # the server on another CPU
            address = ("127.0.0.1", int(server.stdout.readline()))
            os.sched_setaffinity(0, {cpus[0]})  # this process, loop thread included, on one
            # No forced switch of the interpreter lock within a burst: on a
            # slow or busy machine a burst can outlast the 5 ms interval,
            # and each forced switch hands the loop a pass by design.
            sys.setswitchinterval(1.0)

            import rcf_sync
            from rcf_sync._backends._thread import get_runtime
            warm = rcf_sync.ReconnectingClient(address, backend="thread").start()
            warm.wait_connected(timeout=10)
            runtime = get_runtime()
            passes = [0]
            poll = runtime._poller.poll

            def counted(timeout):
                passes[0] += 1
                return poll(timeout)

            runtime._poller.poll = counted
            during = []
            for _ in range(11):  # the first burst is a warm-up (lazy imports)
                clients = [rcf_sync.ReconnectingClient(address, backend="thread") for _ in range(100)]
                before = passes[0]
                for c in clients:
                    c.start()
                during.append(passes[0] - before)
                for c in clients:
                    c.wait_connected(timeout=10)
                for c in clients:
                    c.close()
            warm.close()
            print(*during[1:])
        finally:
            server.stdin.close()
            server.wait(10)
    """)
    assert_ok(proc)
    during = list(map(int, proc.stdout.split()))
    assert len(during) == 10
    assert sum(during) <= 3, during


@pytest.mark.parametrize("name", ["", "Thread", "threads", "twisted", "asyncio", None, 3, object()])
def test_bad_backend_name_is_a_value_error(name):
    """If the backend is not "thread", "gevent" or "auto", then ValueError lists the valid names."""
    with pytest.raises(ValueError, match="backend must be one of auto, thread, gevent"):
        get_backend(name)
    with pytest.raises(ValueError, match="backend must be one of"):
        ReconnectingClient(("127.0.0.1", 9), backend=name)


# -- real clocks -------------------------------------------------------------------


class RealClock:
    """A backend's real clock with the matching event type, for tests that
    wait (boundedly) on what delayed calls do."""

    def __init__(self, name):
        self.name = name
        self.clock = get_backend(name).clock
        if name == "gevent":
            import gevent.event

            self.event = gevent.event.Event
        else:
            self.event = threading.Event

    def recorder(self):
        """A callable recording ``(args, kw, monotonic time)`` and an event it sets."""
        done = self.event()
        calls = []

        def record(*args, **kw):
            calls.append((args, kw, time.monotonic()))
            done.set()

        return record, done, calls

    def settle(self):
        """Let the thread backend's loop run a last call and stop (it stops
        once no client and no call needs it)."""
        if self.name == "thread":
            done = self.event()
            self.clock.callLater(0, done.set)
            assert done.wait(5)
            for t in our_threads():
                t.join(5)
            assert our_threads() == []


@pytest.fixture(params=["thread", "gevent"])
def real(request):
    if request.param == "gevent":
        pytest.importorskip("gevent")
    clock = RealClock(request.param)
    yield clock
    clock.settle()


def test_real_clock_class_and_shape(real):
    """If a backend is asked for its clock, then it is that backend's real clock with IReactorTime's methods."""
    expected = "ThreadClock" if real.name == "thread" else "GeventClock"
    assert type(real.clock).__name__ == expected
    for method in ("seconds", "callLater", "getDelayedCalls"):
        assert callable(getattr(real.clock, method))
    c = ReconnectingClient(("127.0.0.1", 9), backend=real.name)
    assert type(c.clock).__name__ == expected
    c.close()


def test_seconds_is_monotonic_time(real):
    """If seconds() is read, then it is time.monotonic()."""
    before = time.monotonic()
    now = real.clock.seconds()
    after = time.monotonic()
    assert before <= now <= after


def test_call_later_runs_after_the_delay_with_its_arguments(real):
    """If callLater(d, f, *args, **kw) is made, then f(*args, **kw) runs once, no earlier than d seconds later."""
    record, done, calls = real.recorder()
    start = time.monotonic()
    call = real.clock.callLater(0.05, record, 1, "two", three=3)
    assert call.active()
    assert start + 0.05 <= call.getTime() <= time.monotonic() + 0.05
    assert done.wait(5)
    [(args, kw, ran_at)] = calls
    assert args == (1, "two") and kw == {"three": 3}
    assert ran_at >= call.getTime() - 0.002
    assert not call.active()
    assert call not in real.clock.getDelayedCalls()


def test_get_delayed_calls_lists_pending_calls_earliest_first(real):
    """If calls are pending, then getDelayedCalls() lists them earliest first, without cancelled ones."""
    record, done, calls = real.recorder()
    late = real.clock.callLater(0.4, record)
    early = real.clock.callLater(0.3, record)
    gone = real.clock.callLater(0.2, record)
    gone.cancel()
    mine = [c for c in real.clock.getDelayedCalls() if c in (late, early, gone)]
    assert mine == [early, late]
    early.cancel()
    late.cancel()
    assert not any(c in (late, early, gone) for c in real.clock.getDelayedCalls())


def test_cancelled_call_never_runs(real):
    """If a call is cancelled, then it never runs, while a later call still does."""
    record, done, calls = real.recorder()
    cancelled = []
    call = real.clock.callLater(0.02, cancelled.append, "ran")
    call.cancel()
    assert not call.active()
    real.clock.callLater(0.06, record)
    assert done.wait(5)
    assert cancelled == []


def test_operations_on_a_cancelled_call_raise_already_cancelled(real):
    """If a cancelled call is cancelled, reset or delayed, then AlreadyCancelled is raised."""
    call = real.clock.callLater(5, lambda: None)
    call.cancel()
    with pytest.raises(AlreadyCancelled):
        call.cancel()
    with pytest.raises(AlreadyCancelled):
        call.reset(1)
    with pytest.raises(AlreadyCancelled):
        call.delay(1)


def test_operations_on_a_called_call_raise_already_called(real):
    """If a call has run, then cancel, reset and delay raise AlreadyCalled."""
    record, done, calls = real.recorder()
    call = real.clock.callLater(0.01, record)
    assert done.wait(5)
    with pytest.raises(AlreadyCalled):
        call.cancel()
    with pytest.raises(AlreadyCalled):
        call.reset(1)
    with pytest.raises(AlreadyCalled):
        call.delay(1)
    assert len(calls) == 1


def test_reset_moves_the_call_relative_to_now(real):
    """If reset(s) is called, then the call runs s seconds from now instead of when it was due."""
    record, done, calls = real.recorder()
    call = real.clock.callLater(30, record)
    before = time.monotonic()
    call.reset(0.03)
    assert before + 0.03 <= call.getTime() <= time.monotonic() + 0.03
    assert call.active()
    assert done.wait(5)
    [(_, _, ran_at)] = calls
    assert ran_at >= call.getTime() - 0.002


def test_delay_postpones_the_call_from_its_due_time(real):
    """If delay(s) is called, then the call's time moves s seconds later and it runs then."""
    record, done, calls = real.recorder()
    call = real.clock.callLater(0.02, record)
    due = call.getTime()
    call.delay(0.05)
    assert call.getTime() == pytest.approx(due + 0.05, abs=1e-9)
    assert done.wait(5)
    [(_, _, ran_at)] = calls
    assert ran_at >= due + 0.05 - 0.002


def test_negative_delay_runs_at_once_and_warns_once(real, caplog, monkeypatch):
    """If callLater gets a negative delay, then the call runs at once and one warning is logged for the process."""
    monkeypatch.setattr(_base, "_warned_negative", [])
    caplog.set_level(logging.WARNING, logger="rcf_sync")
    first, first_done, first_calls = real.recorder()
    second, second_done, second_calls = real.recorder()
    before = time.monotonic()
    calls = [real.clock.callLater(-1.5, first), real.clock.callLater(-0.1, second)]
    after = time.monotonic()
    for call in calls:
        assert before <= call.getTime() <= after  # now, not in the past
    assert first_done.wait(5) and second_done.wait(5)
    assert len(first_calls) == len(second_calls) == 1
    warned = [r for r in caplog.records if r.name == "rcf_sync" and r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "negative delay" in warned[0].getMessage()
    assert "-1.5" in warned[0].getMessage()


# -- both backends ------------------------------------------------------------------



@pytest.mark.parametrize("kit", ["thread", "gevent"],
                         indirect=True)
def test_idle_loss_after_unsolicited_data_is_noticed(kit, no_leaks):
    """If the server sends data on an idle connection and then closes it, then the background still notices the loss."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    try:
        with ReconnectingClient(listener.getsockname(), factory=factory, backend=kit.name,
                                clock=clock) as c:
            c.wait_connected(timeout=5)
            conn, _ = kit.block(listener.accept)
            try:
                conn.sendall(b"unsolicited\n")  # on loopback: already in the client's buffer
                if kit.name == "gevent":
                    import gevent

                    gevent.idle()  # the hub has handled the data's arrival
            finally:
                conn.close()
            c.wait_state(State.WAITING, timeout=1)
            assert c.stats.losses == 1
    finally:
        listener.close()


def test_factory_without_clock_uses_the_thread_backends_clock():
    """If a factory has no clock, then retry() schedules on the real clock, runs the retry, and leaves no thread behind."""
    from rcf_sync._backends._thread import get_runtime

    fired = threading.Event()

    class Connector:
        def connect(self):
            fired.set()

    factory = ReconnectingClientFactory(initialDelay=0.01, jitter=0)
    factory.noisy = False
    factory.clientConnectionFailed(Connector(), None)
    assert isinstance(factory.clock, ThreadClock)
    assert fired.wait(5)
    deadline = time.monotonic() + 5
    while get_runtime().threads() and time.monotonic() < deadline:
        get_runtime().threads()[0].join(0.1)
    assert get_runtime().threads() == []
