"""A line-protocol client that keeps working across server restarts.

The protocol is one request line, one reply line (UTF-8, ``\\n``-terminated)::

    HELLO <name>   ->  WELCOME        handshake, once per connection
    PING           ->  PONG
    ECHO <text>    ->  <text>
    anything else  ->  ERR <reason>

What it shows:

* the handshake lives in ``on_connect``: it runs on every new connection
  before anyone may use it, and a refused handshake counts as a failed
  attempt (the factory backs off and tries again);
* each request is a ``client.call()``: it leases the connection to one caller
  at a time and, when the connection dies under the request, reruns it on
  the next connection (PING and ECHO are idempotent);
* a protocol error (an ``ERR`` reply) is reported to the caller without
  throwing away a healthy connection.

:func:`serve` starts the small loopback server this example talks to (tests
use it too). ``main()`` starts it on 127.0.0.1 with a free port, sends a few
requests, restarts the server on the same port, sends more and prints what
happened. Run it with ``python examples/line_protocol.py``.
"""

import socket
import sys
import threading

from rcf_sync import ReconnectingClient, ReconnectingClientFactory

__all__ = ["LineClient", "LineServer", "ProtocolError", "serve", "main"]

#: Longest line either side accepts, newline included.
MAX_LINE = 4096


class ProtocolError(Exception):
    """The server answered with an error or with something unexpected."""


# -- the server ----------------------------------------------------------------


class LineServer:
    """The example's loopback server: one thread accepting, one per
    connection. Use :func:`serve` to start one; ``close()`` stops listening
    and closes every connection."""

    MAX_ACCEPTS = 10000
    MAX_REQUESTS = 100000

    def __init__(self, host, port):
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.address = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns = set()
        self._threads = []
        self._spawn(self._accept_loop)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self):
        for _ in range(self.MAX_ACCEPTS):
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve_connection, conn)

    def _serve_connection(self, conn):
        reader = conn.makefile("rb")
        try:
            greeted = False
            for _ in range(self.MAX_REQUESTS):
                raw = reader.readline(MAX_LINE)
                if not raw.endswith(b"\n"):
                    return  # closed, or a line too long
                line = raw[:-1].decode("utf-8", "replace")
                if not greeted:
                    if not line.startswith("HELLO "):
                        conn.sendall(b"ERR say HELLO first\n")
                        return
                    greeted = True
                    reply = "WELCOME"
                elif line == "PING":
                    reply = "PONG"
                elif line.startswith("ECHO "):
                    reply = line[len("ECHO "):]
                else:
                    reply = f"ERR unknown command {line.split(' ', 1)[0]!r}"
                conn.sendall(reply.encode() + b"\n")
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            reader.close()
            conn.close()

    def close(self):
        """Stop listening, close every connection and join the threads."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def serve(host="127.0.0.1", port=0):
    """Start a :class:`LineServer` listening on ``host:port`` (``port=0``: a
    free port; see its ``address``) and return it."""
    return LineServer(host, port)


# -- the client ----------------------------------------------------------------


def _read_line(sock):
    """Read one reply line from ``sock`` (the server sends nothing unasked)."""
    data = b""
    for _ in range(MAX_LINE):
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        data += chunk
        end = data.find(b"\n")
        if end == len(data) - 1:
            return data[:-1].decode("utf-8", "replace")
        if end >= 0 or len(data) >= MAX_LINE:
            break
    # Not one line: the stream is out of step, so this connection is dropped.
    raise ProtocolError(f"malformed reply {data[:60]!r}")


def _exchange(sock, line, timeout):
    """Send one request line and return the reply line. Socket errors (a
    timeout included) make the client drop this connection."""
    sock.settimeout(timeout)
    sock.sendall(line.encode() + b"\n")
    return _read_line(sock)


class LineClient:
    """A client of the line protocol over a :class:`rcf_sync.ReconnectingClient`.

    ``name`` is sent in the handshake; ``timeout`` bounds each reply;
    ``attempts`` is how many connections a request may be tried on.
    """

    def __init__(self, host, port, *, name="client", timeout=2.0, attempts=3, backend="auto"):
        if "\n" in name:
            raise ValueError("name must be a single line")
        self.name = name
        self.timeout = timeout
        self.attempts = attempts
        self.handshakes = 0
        factory = ReconnectingClientFactory(initialDelay=0.05, maxDelay=2.0)
        self._client = ReconnectingClient((host, port), factory=factory, backend=backend,
                                          on_connect=self._handshake, name=f"line {host}:{port}")

    def _handshake(self, sock):
        reply = _exchange(sock, f"HELLO {self.name}", self.timeout)
        if reply != "WELCOME":
            raise ProtocolError(f"handshake refused: {reply!r}")
        self.handshakes += 1

    def request(self, line, timeout=10.0):
        """Send ``line`` and return the reply; ``ProtocolError`` for an
        ``ERR`` reply. ``timeout`` bounds the whole request, reconnecting
        included."""
        if "\n" in line:
            raise ValueError("a request is a single line")
        reply = self._client.call(_exchange, line, self.timeout, attempts=self.attempts,
                                  timeout=timeout)
        if reply.startswith("ERR "):
            raise ProtocolError(reply[len("ERR "):])
        return reply

    def ping(self):
        """``PING``: returns ``"PONG"``."""
        reply = self.request("PING")
        if reply != "PONG":
            raise ProtocolError(f"PING answered {reply!r}")
        return reply

    def echo(self, text):
        """``ECHO text``: returns ``text``."""
        return self.request(f"ECHO {text}")

    @property
    def stats(self):
        """The underlying client's counters."""
        return self._client.stats

    def start(self):
        self._client.start()
        return self

    def close(self):
        self._client.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()


# -- the demonstration -------------------------------------------------------------


def main():
    server = serve("127.0.0.1", 0)
    host, port = server.address
    print(f"server listening on {host}:{port}")
    try:
        with LineClient(host, port, name="example") as client:
            print(f"PING -> {client.ping()}")
            print(f"ECHO hello -> {client.echo('hello')}")
            try:
                client.request("JUMP")
            except ProtocolError as exc:
                print(f"JUMP -> error: {exc}")
            server.close()
            server = serve(host, port)
            print("server restarted")
            print(f"PING -> {client.ping()}")
            print(f"ECHO still here -> {client.echo('still here')}")
            stats = client.stats
            print(f"handshakes: {client.handshakes}, connections: {stats.connects}, "
                  f"losses: {stats.losses}")
    finally:
        server.close()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
