"""Real-server checks of ReconnectingClient under ``gevent.monkey.patch_all()``.

Run in a subprocess, as ``gevent_patched_suite.py`` is (and under its
guard: the hub never blocked, no greenlet or socket left): ``python
tests/real_servers_patched_suite.py [CHECK ...]``; ``--list`` prints the
check names. Exit status 0 when every named check passed, 1 at the first
failure, 3 when a server is not installed (stderr says how to install it).
"""

from gevent import monkey

monkey.patch_all()

import hashlib  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent_patched_suite  # noqa: E402
from _servers import Desync, NginxServer, RedisServer, ServerMissing, request  # noqa: E402
from gevent_patched_suite import Guard, expect  # noqa: E402

from rcf_sync import ConnectionLost, ConnectTimeout, ReconnectingClient, ReconnectingClientFactory, State  # noqa: E402
from rcf_sync.testing import FakeClock  # noqa: E402

# These checks fork and exec servers and move 128 KiB bodies through h11
# while other suites load the machine; allow the hub a longer pause than the
# loopback-only checks do (a blocking call here would still hold it for
# seconds: a connect timeout, a process wait).
gevent_patched_suite.MAX_HUB_GAP = 0.5

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import http_keepalive  # noqa: E402

FILES = {"small.txt": b"hello from nginx\n", "large.bin": hashlib.sha256(b"seed").digest() * 4096}


def quick():
    return ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)


def set_get(sock, key, value):
    if request(sock, "SET", key, value) != "OK":
        raise Desync("SET was not answered OK")
    return request(sock, "GET", key)


CHECKS = {}


def check(fn):
    CHECKS[fn.__name__[len("check_"):]] = fn
    return fn


#: Most requests one greenlet makes in a check (they stop when told).
MAX_REQUESTS = 1000


class Progress:
    """Counts finished requests, so that a server is restarted only once the
    greenlets made ``n`` more since the last restart (while still at work)."""

    def __init__(self):
        self.done = 0
        self.stop = False
        self._target = None
        self._event = None

    def tick(self):
        self.done += 1
        if self._target is not None and self.done >= self._target:
            self._event.set()

    def wait_for_more(self, n, timeout=30):
        self._target, self._event = self.done + n, gevent.event.Event()
        return self._event.wait(timeout)


def run_under_restarts(server, worker, workers_n, restarts, step):
    """Spawn ``workers_n`` greenlets ``worker(n, progress)``, SIGKILL and
    restart ``server`` ``restarts`` times, each after ``step`` more
    requests, and end after ``step`` more; return the requests done."""
    progress = Progress()
    workers = [gevent.spawn(worker, n, progress) for n in range(workers_n)]
    try:
        for _ in range(restarts):
            expect(progress.wait_for_more(step), f"stuck at {progress.done} requests")
            server.restart()
        expect(progress.wait_for_more(step), f"stuck at {progress.done} requests")
        progress.stop = True
        gevent.joinall(workers, timeout=60)
        expect(all(w.dead for w in workers), "workers still running")
    finally:
        progress.stop = True
        gevent.killall(workers, timeout=5)
    return progress.done


@check
def check_redis_100_greenlets_across_sigkill_restarts():
    """If 100 greenlets share one client while redis is SIGKILLed and
    restarted three times, then every GET sees its own value (or nil)."""
    workers_n, restarts, step = 100, 3, 200
    own, nils, mismatches, errors = [], [], [], []
    with RedisServer() as redis:
        with ReconnectingClient(redis.address, factory=quick(), lost_on=(Desync,)) as c:
            expect(c._backend.name == "gevent", f"backend {c._backend.name}")

            def worker(n, progress):
                for i in range(MAX_REQUESTS):
                    if progress.stop:
                        return
                    key, value = f"g{n}:r{i}", f"value of g{n}:r{i}".encode() * (1 + n % 5)
                    try:
                        got = c.call(set_get, key, value, timeout=20)
                    except (ConnectionLost, ConnectTimeout) as exc:
                        errors.append(repr(exc))
                    else:
                        (own if got == value else nils if got is None else mismatches).append(key)
                    progress.tick()

            total = run_under_restarts(redis, worker, workers_n, restarts, step)
            stats = c.stats
        expect(redis.starts == restarts + 1, f"{redis.starts} starts")
    print(f"   {len(own)} own values, {len(nils)} nil, {len(mismatches)} mismatched,"
          f" {len(errors)} failed; {stats.connects} connections, {stats.losses} losses")
    expect(mismatches == [], f"mismatched replies for {mismatches[:5]}")
    expect(errors == [], f"failed requests: {errors[:3]}")
    expect(len(own) + len(nils) == total, f"{len(own) + len(nils)} of {total} done")
    expect(stats.connects >= restarts + 1, f"only {stats.connects} connections")
    expect(stats.losses >= restarts, f"only {stats.losses} losses for {restarts} restarts")


@check
def check_redis_idle_kill_noticed_and_healed():
    """If redis kills the idle connection (CLIENT KILL, then SIGKILL), then
    the background notices each time without a caller and the client heals."""
    clock = FakeClock()
    factory = ReconnectingClientFactory(initialDelay=1.0, jitter=0)
    with RedisServer() as redis:
        with ReconnectingClient(redis.address, factory=factory, clock=clock) as c:
            for round_, how in enumerate(["client-kill", "sigkill"], 1):
                client_id = c.call(request, "CLIENT", "ID", timeout=5)
                start = time.monotonic()
                if how == "sigkill":
                    redis.kill()
                else:
                    with socket.create_connection(redis.address, timeout=5) as admin:
                        killed = request(admin, "CLIENT", "KILL", "ID", client_id)
                        expect(killed == 1, f"CLIENT KILL answered {killed!r}")
                c.wait_state(State.WAITING, timeout=5)
                took = time.monotonic() - start
                expect(c.stats.losses == round_, f"losses={c.stats.losses} after {how}")
                print(f"   {how}: noticed after {took * 1000:.1f} ms")
                if how == "sigkill":
                    redis.start()
                [call] = clock.getDelayedCalls()
                clock.advance(max(0.0, call.getTime() - clock.seconds()))
                c.wait_connected(timeout=5)
                expect(c.call(request, "PING", timeout=5) == "PONG", "no PONG after healing")
            expect(c.stats.connects == 3, f"connects={c.stats.connects}")


@check
def check_http_keepalive_across_nginx_restarts():
    """If 20 greenlets GET files over h11 sessions while nginx answers
    Connection: close every 5th request and is SIGKILLed and restarted three
    times, then every body is right and no request fails."""
    workers_n, restarts, step = 20, 3, 50
    names = sorted(FILES)
    wrong, errors, closes = [], [], []
    with NginxServer(FILES, keepalive_requests=5) as nginx:
        with http_keepalive.KeepAliveClient(*nginx.address, factory=quick()) as http:
            def worker(n, progress):
                for i in range(MAX_REQUESTS):
                    if progress.stop:
                        return
                    name = names[(n + i) % len(names)]
                    try:
                        response = http.get(f"/{name}", timeout=20, attempts=None)
                    except (ConnectionLost, ConnectTimeout) as exc:
                        errors.append(repr(exc))
                    else:
                        if response.status != 200 or response.body != FILES[name]:
                            wrong.append(name)
                        closes.append(response.closed)
                    progress.tick()

            total = run_under_restarts(nginx, worker, workers_n, restarts, step)
            stats = http.client.stats
    print(f"   {total} GETs, {sum(closes)} Connection: close, {stats.connects} connections,"
          f" {stats.losses} losses")
    expect(wrong == [], f"wrong bodies for {wrong[:5]}")
    expect(errors == [], f"failed requests: {errors[:3]}")
    expect(len(closes) == total, f"{len(closes)} of {total} done")
    expect(stats.connects >= restarts + 1, f"only {stats.connects} connections")
    expect(sum(closes) >= total // 10, f"only {sum(closes)} Connection: close answers")


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
        except ServerMissing as exc:
            print(exc, file=sys.stderr)
            return 3
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
