"""A small Redis client over a lease: one RESP request, exactly one reply.

Run it against a redis-server (default ``127.0.0.1:6379``)::

    python examples/redis_resp.py [HOST:PORT]

What it shows:

* ``on_connect`` returns a per-connection object, :class:`RespConnection`
  (the socket and the parser's buffer): every lease hands out that object,
  and it is dropped with its connection, so a buffer never outlives its
  stream;
* a request reads exactly one reply: bytes left over after it mean the
  stream is not what the parser thinks, which is :class:`Desync`, given to
  ``lost_on=`` so that the connection is thrown away (never read on) and
  ``call()`` runs the request again on a new one;
* the server closing the connection mid-reply (``recv()`` returning
  ``b""``) is a ``ConnectionResetError``: the connection is discarded and
  the request re-run;
* ``call()`` is for idempotent commands (``GET``, ``SET``); a command that
  must not run twice (``INCR``) goes through ``connection()``, where a lost
  connection surfaces as ``ConnectionLost`` and the caller decides.

The keys it writes start with ``rcf_sync:example:`` and are deleted at the
end.
"""

import os
import sys

from rcf_sync import ConnectionLost, ReconnectingClient, ReconnectingClientFactory

__all__ = ["Desync", "RedisError", "RespConnection", "Redis", "main"]

#: Most ``recv()`` calls one reply may take (a bound, not a tuning knob).
MAX_READS = 100000


class RedisError(Exception):
    """The server answered ``-ERR ...``: the command failed, the stream is fine."""


class Desync(Exception):
    """The bytes on the connection are not exactly the reply expected: the
    stream is broken and must not be read on."""


def encode(*args):
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespConnection:
    """One connection to Redis: the socket and the reply buffer. Not
    thread-safe: a lease gives it to one caller at a time."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.timeout = timeout
        self.requests = 0
        self._buf = bytearray()
        self._reads = 0

    def execute(self, *args):
        """Send one command and return its reply (``str`` for a status,
        ``int``, ``bytes``, ``None`` for nil, or a list); an error reply
        raises :class:`RedisError`."""
        reply = self.ask(*args)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def ask(self, *args):
        """As :meth:`execute`, but an error reply is returned, not raised."""
        if self._buf:
            raise Desync(f"{len(self._buf)} unread bytes before a request")
        self.requests += 1
        self.sock.settimeout(self.timeout)
        self.sock.sendall(encode(*args))
        self._reads = 0
        reply = self._reply()
        if self._buf:  # nothing else was asked: anything more is not ours
            raise Desync(f"{len(self._buf)} bytes after the reply: {bytes(self._buf[:40])!r}")
        return reply

    def _fill(self):
        self._reads += 1
        if self._reads > MAX_READS:
            raise Desync("reply too long")
        data = self.sock.recv(65536)
        if not data:
            # End of file in the middle of a reply: the connection is gone.
            raise ConnectionResetError("the server closed the connection mid-reply")
        self._buf += data

    def _line(self):
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 2]
                return line
            self._fill()

    def _bulk(self, n):
        while len(self._buf) < n + 2:
            self._fill()
        if self._buf[n:n + 2] != b"\r\n":
            raise Desync("a bulk string is not followed by CRLF")
        data = bytes(self._buf[:n])
        del self._buf[:n + 2]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        try:
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                return RedisError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else self._bulk(n)
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [self._reply() for _ in range(n)]
        except ValueError:
            raise Desync(f"bad length in {line[:40]!r}") from None
        raise Desync(f"not a RESP reply: {line[:40]!r}")


class Redis:
    """A reconnecting Redis client. ``execute()`` re-runs a command on the
    next connection when the connection dies under it (idempotent commands
    only); ``execute_once()`` never re-runs it. Keyword arguments go to
    :class:`~rcf_sync.ReconnectingClient`."""

    def __init__(self, host, port, name="redis-example", **kwargs):
        kwargs.setdefault("factory", ReconnectingClientFactory(initialDelay=0.1, maxDelay=5))
        self.name = name
        self.client = ReconnectingClient((host, port), on_connect=self._handshake,
                                         lost_on=(Desync,), name=name, **kwargs)

    def _handshake(self, sock):
        # Runs on every new connection before anyone gets it; what it returns
        # is what leases hand out.
        conn = RespConnection(sock)
        if conn.execute("CLIENT", "SETNAME", self.name) != "OK":
            raise Desync("CLIENT SETNAME was not answered OK")
        return conn

    def execute(self, *args, timeout=10, attempts=5):
        # An error reply leaves the stream healthy: it is raised here, after
        # the lease, because an exception escaping a lease discards the
        # connection.
        reply = self.client.call(RespConnection.ask, *args, timeout=timeout, attempts=attempts)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def execute_once(self, *args, timeout=10):
        """Run a command that must not run twice; ``ConnectionLost`` when
        the connection died under it (it may or may not have run)."""
        with self.client.connection(timeout=timeout) as conn:
            reply = conn.ask(*args)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def start(self):
        self.client.start()
        return self

    def close(self):
        self.client.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def main(argv):
    host, _, port = (argv[0] if argv else "127.0.0.1:6379").rpartition(":")
    prefix = f"rcf_sync:example:{os.getpid()}:"
    with Redis(host or "127.0.0.1", int(port)) as redis:
        print("PING ->", redis.execute("PING"))
        wrong = 0
        for i in range(100):
            value = f"value {i}".encode()
            redis.execute("SET", f"{prefix}{i}", value)
            if redis.execute("GET", f"{prefix}{i}") != value:
                wrong += 1
        print(f"SET then GET 100 keys: {100 - wrong} right, {wrong} wrong")
        try:
            print("INCR ->", redis.execute_once("INCR", f"{prefix}counter"))
        except ConnectionLost as exc:
            print(f"INCR: connection lost, it may or may not have run ({exc})")
        try:
            redis.execute("LPUSH", f"{prefix}0", "x")
        except RedisError as exc:
            print("LPUSH on a string ->", str(exc).split()[0])
        deleted = redis.execute("DEL", *[f"{prefix}{i}" for i in range(100)], f"{prefix}counter")
        print("DEL ->", deleted)
        stats = redis.client.stats
        print(f"connections: {stats.connects}, losses: {stats.losses}")
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
