"""Checks of ReconnectingClient under ``gevent.monkey.patch_all()``.

Run in a subprocess (pytest itself must not be monkey-patched): ``python
tests/gevent_patched_suite.py [CHECK ...]`` runs the named checks (all of
them when none is named), prints ``ok NAME`` after each one that passes and
exits with status 1 and a message at the first failure. ``--list`` prints
the check names.

Every check runs under a guard that also asserts, afterwards, that the hub
was never blocked (a greenlet ticking every 10 ms never saw a gap of 200 ms
or more), that no greenlet is left running and that no socket is left open.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.socket  # noqa: E402

from rcf_sync import (  # noqa: E402
    ClientClosed,
    ConnectionLost,
    Protocol,
    ReconnectingClient,
    ReconnectingClientFactory,
    State,
    TCPConnector,
)
from rcf_sync._backends import socket_is_patched  # noqa: E402
from rcf_sync.testing import FakeClock  # noqa: E402

#: The longest the hub may go without running the ticker greenlet.
MAX_HUB_GAP = 0.2
TICK = 0.01


class CheckFailed(AssertionError):
    pass


# -- loopback echo server, run by greenlets -------------------------------------


class EchoServer:
    """A loopback echo server on greenlets that can be stopped (listener and
    every connection closed) and started again on the same port.

    ``mode``: "echo" echoes everything; "handshake" first expects the line
    ``HELLO\\n``, answers ``WELCOME\\n``, then echoes."""

    MAX_ACCEPTS = 10000
    MAX_READS = 100000

    def __init__(self, mode="echo"):
        self.mode = mode
        self.port = None
        self.accepted = 0
        self._listener = None
        self._acceptor = None
        self._conns = set()
        self._handlers = set()

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = gevent.spawn(self._accept_loop, listener)
        return self

    def _accept_loop(self, listener):
        for _ in range(self.MAX_ACCEPTS):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.add(conn)
            handler = gevent.spawn(self._handle, conn)
            self._handlers.add(handler)
            handler.link(self._handlers.discard)

    def _handle(self, conn):
        try:
            if self.mode == "handshake":
                line = b""
                for _ in range(64):
                    chunk = conn.recv(64)
                    if not chunk:
                        return
                    line += chunk
                    if line.endswith(b"\n"):
                        break
                if line != b"HELLO\n":
                    return
                conn.sendall(b"WELCOME\n")
            for _ in range(self.MAX_READS):
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            pass
        finally:
            self._conns.discard(conn)
            conn.close()

    def drop_all(self):
        """Close the server side of every accepted connection."""
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.drop_all()
        pending = [g for g in [self._acceptor, *self._handlers] if g is not None]
        gevent.joinall(pending, timeout=5)
        alive = [g for g in pending if not g.dead]
        if alive:
            gevent.killall(alive, timeout=2)
            raise CheckFailed(f"echo server greenlets did not end: {alive}")
        self._acceptor = None


# -- helpers ---------------------------------------------------------------------


def fast_factory():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)


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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hung_listener():
    """A listener whose backlog is full: further connects hang in SYN-SENT.
    Returns (listener, fillers)."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(hang.getsockname())
        fillers.append(f)
    return hang, fillers


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def live_greenlets():
    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]


def open_sockets():
    """Identities ("socket:[inode]") of the sockets this process has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found.add(link)
    return found


class HubTicker:
    """A greenlet waking every 10 ms; ``max_gap`` is the longest time the
    hub took to run it again."""

    MAX_TICKS = 6000  # one minute of ticks

    def __init__(self):
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = gevent.event.Event()
        self._glet = gevent.spawn(self._run)
        gevent.sleep(0)  # let it take its first time stamp

    def _run(self):
        last = time.monotonic()
        for _ in range(self.MAX_TICKS):
            stopping = self._stop.wait(TICK)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            if stopping:
                return
            self.ticks += 1
            last = now

    def stop(self):
        self._stop.set()
        self._glet.join(2)
        expect(self._glet.dead, "the hub ticker did not stop")


class Guard:
    """Around one check: the hub stays responsive and nothing is left."""

    def __enter__(self):
        gevent.get_hub()
        gc.collect()
        self.sockets_before = open_sockets()
        self._warnings = warnings.catch_warnings(record=True)
        self.caught = self._warnings.__enter__()
        warnings.simplefilter("always", ResourceWarning)
        self.ticker = HubTicker()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.ticker.stop()
        finally:
            self._warnings.__exit__(None, None, None)
        if exc_type is not None:
            return False
        expect(self.ticker.max_gap < MAX_HUB_GAP,
               f"the hub was blocked for {self.ticker.max_gap * 1000:.0f} ms")
        leftover = live_greenlets()
        if leftover:
            gevent.joinall(leftover, timeout=2)
        leftover = live_greenlets()
        expect(not leftover, f"greenlets left running: {leftover}")
        leaked = self._leaked_sockets()
        expect(not leaked, f"sockets left open: {sorted(leaked)}")
        gc.collect()
        resource = [str(w.message) for w in self.caught if issubclass(w.category, ResourceWarning)]
        expect(not resource, f"ResourceWarning: {resource}")
        return False

    def _leaked_sockets(self):
        # A closed gevent socket may release its descriptor on the next loop
        # turn; there is no event for that, so look a bounded number of times.
        leaked = set()
        for _ in range(100):
            gevent.idle()
            leaked = open_sockets() - self.sockets_before
            if not leaked:
                break
            gevent.sleep(0.01)
        return leaked


# -- checks ------------------------------------------------------------------------

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__[len("check_"):]] = fn
    return fn


@check
def check_auto_backend_is_gevent():
    """If socket is monkey-patched, then backend="auto" picks the gevent backend."""
    expect(socket_is_patched(), "socket_is_patched() is False under patch_all()")
    server = EchoServer().start()
    try:
        with ReconnectingClient(server.address, factory=fast_factory()) as c:
            expect(c._backend.name == "gevent", f"auto picked {c._backend.name!r}")
            sock = c.wait_connected(timeout=5)
            expect(isinstance(sock, gevent.socket.socket),
                   f"the socket handed out is a {type(sock)!r}, not a gevent socket")
    finally:
        server.stop()


@check
def check_round_trip():
    """If the client talks to a loopback echo server, then call(), a lease and
    the handle's sendall/recv all round-trip."""
    server = EchoServer().start()
    try:
        with ReconnectingClient(server.address, factory=fast_factory()) as c:
            expect(c.call(echo, b"by call", timeout=5) == b"by call", "call() round trip")
            with c.connection(timeout=5) as sock:
                expect(echo(sock, b"by lease") == b"by lease", "lease round trip")
            c.sendall(b"by handle", timeout=5)
            got = c.recv(9, timeout=5)
            expect(got == b"by handle", f"handle round trip got {got!r}")
            expect(c.stats.connects == 1, f"connects={c.stats.connects}")
    finally:
        server.stop()


@check
def check_host_name_and_socket_factory():
    """If the destination is a host name or a socket factory, then the
    patched resolver and the factory run without blocking the hub."""
    server = EchoServer().start()
    try:
        targets = [TCPConnector("localhost", server.port, timeout=5),
                   lambda: socket.create_connection(server.address, timeout=5)]
        for target in targets:
            with ReconnectingClient(target, factory=fast_factory()) as c:
                expect(c.call(echo, b"hi", timeout=5) == b"hi", f"round trip through {target!r}")
    finally:
        server.stop()


@check
def check_many_greenlets_across_restarts():
    """If 50 greenlets share one client while the server is stopped and
    restarted three times, then every caller gets its own reply, never
    another's."""
    server = EchoServer().start()
    workers_n, calls_n = 50, 20
    total = workers_n * calls_n
    milestones = {n: gevent.event.Event() for n in (total // 5, 2 * total // 5, 3 * total // 5)}
    done, mismatches, errors = [], [], []
    c = ReconnectingClient(server.address, factory=fast_factory()).start()

    def by_call(n, i, payload):
        return c.call(echo, payload, timeout=10)

    def by_lease(n, i, payload):
        for _ in range(10):
            try:
                with c.connection(timeout=10) as sock:
                    return echo(sock, payload)
            except ConnectionLost:
                continue
        raise CheckFailed(f"worker {n} request {i}: 10 connections lost in a row")

    def worker(n):
        run = by_call if n % 2 else by_lease
        for i in range(calls_n):
            payload = f"<{n}:{i}>".encode() * (1 + (n * 7 + i) % 40)
            try:
                got = run(n, i, payload)
            except Exception as exc:  # reported below
                errors.append(f"{n}:{i}: {exc!r}")
                continue
            if got != payload:
                mismatches.append((payload, got))
            done.append(1)
            event = milestones.get(len(done))
            if event is not None:
                event.set()

    try:
        workers = [gevent.spawn(worker, n) for n in range(workers_n)]
        for mark in sorted(milestones):
            expect(milestones[mark].wait(15), f"only {len(done)} of {mark} calls done in time")
            server.stop()
            server.start()
        gevent.joinall(workers, timeout=30)
        expect(all(w.dead for w in workers), "workers still running")
        expect(mismatches == [], f"{len(mismatches)} mismatched replies, first: {mismatches[:1]}")
        expect(errors == [], f"{len(errors)} failed calls, first: {errors[:3]}")
        expect(len(done) == total, f"{len(done)} of {total} calls done")
        expect(c.stats.connects >= 4, f"only {c.stats.connects} connections for 4 servers")
    finally:
        c.close()
        server.stop()
    print(f"   {total} calls, {c.stats.connects} connections, {c.stats.losses} losses")


@check
def check_idle_loss_noticed_by_background():
    """If the server closes an idle connection, then the background notices
    it without any caller and the client reconnects."""
    server = EchoServer().start()
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    try:
        with ReconnectingClient(server.address, factory=factory, clock=clock) as c:
            c.wait_connected(timeout=5)
            server.drop_all()
            c.wait_state(State.WAITING, timeout=5)
            expect(c.stats.losses == 1, f"losses={c.stats.losses}")
            [call] = clock.getDelayedCalls()
            clock.advance(call.getTime() - clock.seconds())
            sock = c.wait_connected(timeout=5)
            expect(c.stats.connects == 2, f"connects={c.stats.connects}")
            with c.connection(timeout=5) as leased:
                expect(leased is sock, "the lease did not hand out the new connection")
                expect(echo(leased, b"again") == b"again", "round trip on the new connection")
    finally:
        server.stop()


@check
def check_hung_connect_does_not_stop_others():
    """If connects to one address hang, then another client still connects at
    once and closing the hung clients is prompt."""
    server = EchoServer().start()
    hang, fillers = hung_listener()
    stuck = []
    try:
        stuck = [ReconnectingClient(TCPConnector(*hang.getsockname(), timeout=30),
                                    factory=fast_factory()).start() for _ in range(6)]
        with ReconnectingClient(server.address, factory=fast_factory()) as c:
            start = time.monotonic()
            c.wait_connected(timeout=5)
            took = time.monotonic() - start
            expect(took < 2, f"connecting took {took:.2f}s next to hung connects")
            expect(c.call(echo, b"through", timeout=5) == b"through", "round trip")
        states = [s.state for s in stuck]
        expect(all(s is State.CONNECTING for s in states), f"hung clients are {states}")
        for s in stuck:
            start = time.monotonic()
            s.close()
            took = time.monotonic() - start
            expect(took < 2, f"closing a hung client took {took:.2f}s")
            expect(s.state is State.CLOSED, f"state after close: {s.state}")
    finally:
        for s in stuck:
            s.close()
        for f in fillers:
            f.close()
        hang.close()
        server.stop()


@check
def check_on_connect_handshake():
    """If on_connect is given, then it runs in a greenlet on every new
    connection before anyone gets the socket."""
    server = EchoServer(mode="handshake").start()
    seen = []
    second = gevent.event.Event()
    hub = gevent.get_hub()

    def hello(sock):
        expect(gevent.getcurrent() is not hub, "on_connect ran in the hub")
        expect(echo(sock, b"HELLO\n") == b"WELCOME\n", "the server did not welcome us")
        seen.append("handshake")
        if seen.count("handshake") == 2:
            second.set()

    try:
        with ReconnectingClient(server.address, factory=fast_factory(), on_connect=hello) as c:
            with c.connection(timeout=5) as sock:
                seen.append("lease")
                expect(echo(sock, b"data") == b"data", "round trip after the handshake")
            server.drop_all()
            expect(second.wait(5), f"no second handshake after the loss: {seen}")
            with c.connection(timeout=5) as sock:
                seen.append("lease")
                expect(echo(sock, b"more") == b"more", "round trip after the second handshake")
        expect(seen == ["handshake", "lease", "handshake", "lease"], f"order: {seen}")
    finally:
        server.stop()


@check
def check_close_wakes_waiting_greenlets():
    """If close() is called while greenlets wait for a connection, then each
    of them gets ClientClosed at once."""
    c = ReconnectingClient(("127.0.0.1", free_port()), factory=fast_factory()).start()
    results = []

    def lease():
        with c.connection(timeout=10):
            results.append("leased")

    def waiter(fn):
        try:
            fn()
        except Exception as exc:
            results.append(exc)

    fns = [lease, lambda: c.wait_connected(timeout=10), lambda: c.call(echo, b"x", timeout=10),
           lambda: c.sendall(b"x", timeout=10), lambda: c.recv(1, timeout=10)]
    try:
        c.wait_state(State.WAITING, timeout=5)
        waiters = [gevent.spawn(waiter, fn) for fn in fns]
        gevent.sleep(0)  # run each waiter up to its wait (spawned callbacks run first)
        expect(results == [], f"waiters finished early: {results}")
        start = time.monotonic()
        c.close()
        gevent.joinall(waiters, timeout=5)
        took = time.monotonic() - start
    finally:
        c.close()
    expect(all(w.dead for w in waiters), "waiters still blocked after close()")
    expect(took < 2, f"waking the waiters took {took:.2f}s")
    expect(len(results) == len(fns) and all(isinstance(r, ClientClosed) for r in results),
           f"waiters got {results}")


@check
def check_close_leaves_nothing_behind():
    """If clients in every state are closed, then no greenlet, timer or
    socket of theirs is left (the guard checks greenlets and sockets)."""
    server = EchoServer().start()
    hang, fillers = hung_listener()
    clients = []
    try:
        connected = ReconnectingClient(server.address, factory=fast_factory()).start()
        waiting = ReconnectingClient(("127.0.0.1", free_port()),
                                     factory=ReconnectingClientFactory(initialDelay=30, jitter=0)).start()
        connecting = ReconnectingClient(TCPConnector(*hang.getsockname(), timeout=30),
                                        factory=fast_factory()).start()
        clients = [connected, waiting, connecting]
        connected.wait_connected(timeout=5)
        waiting.wait_state(State.WAITING, timeout=5)
        expect(connecting.state is State.CONNECTING, f"state {connecting.state}")
        timers = waiting.clock.getDelayedCalls()
        expect(len(timers) == 1, f"pending calls while waiting: {timers}")
        for c in clients:
            c.close()
        expect(all(c.state is State.CLOSED for c in clients), "not all closed")
        expect(not any(t.active() for t in timers), "the retry is still scheduled")
        expect(waiting.clock.getDelayedCalls() == [], "the gevent clock still has calls")
    finally:
        for c in clients:
            c.close()
        for f in fillers:
            f.close()
        hang.close()
        server.stop()


@check
def check_protocol_mode_across_restarts():
    """If a protocol writes 4 MB to an echo server (which sends it back while
    we still write) and the server restarts, then everything comes back in
    order, a new protocol follows, and the hub is never blocked."""
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)

    class Collect(Protocol):
        def connectionMade(self):
            self.received = bytearray()
            self.enough = gevent.event.Event()
            self.gone = gevent.event.Event()

        def dataReceived(self, data):
            self.received += data
            if len(self.received) >= len(payload):
                self.enough.set()

        def connectionLost(self, reason):
            self.gone.set()

    server = EchoServer().start()
    try:
        factory = ReconnectingClientFactory.forProtocol(Collect, initialDelay=0.02, maxDelay=0.1)
        with ReconnectingClient(server.address, factory=factory) as c:
            for round_ in range(2):
                p = c.wait_protocol(timeout=5)
                p.transport.write(payload)
                expect(p.enough.wait(20), f"round {round_}: {len(p.received)} bytes back")
                expect(bytes(p.received) == payload, f"round {round_}: the bytes differ")
                if round_ == 0:
                    server.stop()
                    expect(p.gone.wait(5), "connectionLost was not called")
                    server.start()
                    expect(c.wait_protocol(timeout=5) is not p, "no new protocol")
    finally:
        server.stop()


# -- runner --------------------------------------------------------------------


def run(names):
    for name in names:
        fn = CHECKS.get(name)
        if fn is None:
            print(f"unknown check {name!r}; known: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
        start = time.monotonic()
        try:
            with Guard() as guard:
                fn()
        except Exception:
            print(f"FAIL {name}: {(fn.__doc__ or '').strip()}", file=sys.stderr)
            traceback.print_exc()
            return 1
        took = time.monotonic() - start
        print(f"ok {name} ({took:.2f}s, longest hub pause {guard.ticker.max_gap * 1000:.0f} ms)",
              flush=True)
    return 0


def main(argv):
    if argv == ["--list"]:
        print("\n".join(CHECKS))
        return 0
    return run(argv or list(CHECKS))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
