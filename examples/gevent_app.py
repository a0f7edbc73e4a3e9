"""A monkey-patched gevent application: 100 greenlets share one connection.

``gevent.monkey.patch_all()`` comes first, before anything else is imported,
as gevent requires. After that, ``ReconnectingClient(..., backend="auto")``
sees the patched ``socket`` module and runs on the gevent backend: its
connection attempts, back-off timers and idle-connection watch are greenlets
and hub timers, and the sockets it hands out are gevent sockets.

100 greenlets each make 5 echo requests with payloads only they send,
through one shared client; halfway through, the embedded echo server
(``gevent.server.StreamServer``) is stopped and started again on the same
port. A ticker greenlet measures how long the hub ever went without running
it, to show that nothing blocked the hub.

Run it with ``python examples/gevent_app.py``; it prints a summary and exits
0 when every request got its own reply.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.server  # noqa: E402

from rcf_sync import ReconnectingClient, ReconnectingClientFactory  # noqa: E402

GREENLETS = 100
REQUESTS = 5


class EchoServer:
    """``gevent.server.StreamServer`` echoing, restartable on the same port."""

    MAX_READS = 100000

    def __init__(self, host="127.0.0.1", port=0):
        self.host, self.port = host, port
        self._server = None
        self._conns = set()

    def start(self):
        self._server = gevent.server.StreamServer((self.host, self.port), self._echo)
        self._server.start()
        self.port = self._server.address[1]
        return self

    def _echo(self, conn, address):
        self._conns.add(conn)
        try:
            for _ in range(self.MAX_READS):
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            pass
        finally:
            self._conns.discard(conn)

    def stop(self):
        server, self._server = self._server, None
        if server is None:
            return
        server.close()  # stop accepting
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)  # each handler then ends
            except OSError:
                pass
        server.stop(timeout=5)


class HubTicker:
    """A greenlet waking every 10 ms; ``longest`` is the longest time the
    hub took to run it again."""

    def __init__(self, interval=0.01, limit=6000):
        self.longest = 0.0
        self._stop = gevent.event.Event()
        self._glet = gevent.spawn(self._run, interval, limit)

    def _run(self, interval, limit):
        last = time.monotonic()
        for _ in range(limit):
            stopping = self._stop.wait(interval)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now
            if stopping:
                return

    def stop(self):
        self._stop.set()
        self._glet.join(2)


def echo(sock, payload):
    """One request: send ``payload``, read back as many bytes."""
    sock.settimeout(5)
    sock.sendall(payload)
    received = b""
    for _ in range(len(payload)):
        chunk = sock.recv(len(payload) - len(received))
        if not chunk:
            raise ConnectionResetError("the server closed the connection mid-reply")
        received += chunk
        if len(received) == len(payload):
            break
    return received


def main():
    server = EchoServer().start()
    ticker = HubTicker()
    factory = ReconnectingClientFactory(initialDelay=0.02, maxDelay=0.5)
    results = {"ok": 0, "mismatched": 0, "failed": 0}
    halfway = gevent.event.Event()
    total = GREENLETS * REQUESTS

    def user(n):
        for i in range(REQUESTS):
            payload = f"greenlet {n:03d} request {i};".encode() * (1 + (n + i) % 8)
            try:
                reply = client.call(echo, payload, attempts=5, timeout=10)
            except Exception as exc:
                results["failed"] += 1
                print(f"greenlet {n} request {i} failed: {exc}")
                continue
            results["ok" if reply == payload else "mismatched"] += 1
            if sum(results.values()) == total // 2:
                halfway.set()

    try:
        with ReconnectingClient((server.host, server.port), factory=factory) as client:
            backend = client._backend.name
            users = [gevent.spawn(user, n) for n in range(GREENLETS)]
            restarts = 0
            if halfway.wait(30):
                server.stop()
                server.start()
                restarts += 1
            gevent.joinall(users, timeout=60)
            unfinished = sum(1 for g in users if not g.dead)
            gevent.killall(users, timeout=5)
            stats = client.stats
    finally:
        ticker.stop()
        server.stop()
    print(f"backend: {backend}")
    print(f"greenlets: {GREENLETS} sharing one client, {REQUESTS} requests each")
    print(f"ok: {results['ok']}")
    print(f"mismatched: {results['mismatched']}")
    print(f"failed: {results['failed']}")
    print(f"unfinished greenlets: {unfinished}")
    print(f"server restarts: {restarts}")
    print(f"connections: {stats.connects}, losses: {stats.losses}")
    print(f"longest hub pause: {ticker.longest * 1000:.0f} ms")
    return 0 if results["ok"] == total and backend == "gevent" else 1


if __name__ == "__main__":
    sys.exit(main())
