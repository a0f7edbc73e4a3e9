"""HTTP/1.1 keep-alive with h11, across server restarts and ``Connection: close``.

Run it against an HTTP/1.1 server (default ``127.0.0.1:80``)::

    python examples/http_keepalive.py [HOST:PORT] [PATH ...] [--repeat N]

It GETs each path ``N`` times (default 4) over one reconnecting client and
prints, per response, the status, the length and a SHA-256 prefix of the
body, then how many connections that took and how many the server closed.

What it shows:

* h11's ``Connection`` state is the per-connection object: ``on_connect``
  returns an :class:`HTTPSession` (the socket and its h11 state), each lease
  hands it out, and it is dropped with its connection, so the state of one
  connection is never applied to the next;
* ``lost_on=(h11.RemoteProtocolError,)``: h11 raises that error, not an
  ``OSError``, when the server closes a keep-alive connection under a
  request (``recv()`` returns ``b""`` before the response is complete);
  given to ``lost_on=``, it discards the connection and ``call()`` runs the
  GET again on a new one, so a server restart costs no request;
* a response with ``Connection: close`` (nginx sends one every
  ``keepalive_requests`` requests) is complete and returned, and leaves the
  connection finished: the session shuts its socket down, so the background
  discards it, and a request that still finds it raises
  ``ConnectionResetError`` before sending anything, so ``call()`` moves to a
  new connection.
"""

import hashlib
import socket
import sys

import h11

from rcf_sync import ReconnectingClient, ReconnectingClientFactory

__all__ = ["HTTPSession", "KeepAliveClient", "Response", "main"]

#: Most h11 events (or reads) one response may take (a bound, not a knob).
MAX_EVENTS = 100000


class Response:
    """A complete response: ``status``, ``headers`` (list of (name, value)
    bytes pairs), ``body``, and ``closed`` (the server said ``Connection:
    close``)."""

    def __init__(self, status, headers, body, closed):
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = closed

    def __repr__(self):
        return f"<Response {self.status} {len(self.body)} bytes{' close' if self.closed else ''}>"


class HTTPSession:
    """One HTTP/1.1 connection: the socket and its h11 client state. One
    request at a time (a lease gives it to one caller)."""

    def __init__(self, sock, host, timeout=10.0):
        self.sock = sock
        self.host = host
        self.timeout = timeout
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.requests = 0

    def get(self, target, headers=()):
        """GET ``target``; return a :class:`Response`."""
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # the previous exchange kept the connection alive
        if conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
            # Closed by the server after its last response, or left mid-way:
            # nothing was sent, so running the request elsewhere is safe.
            raise ConnectionResetError(
                f"this connection is finished (h11 states {conn.our_state}/{conn.their_state})")
        self.requests += 1
        self.sock.settimeout(self.timeout)
        request = h11.Request(method="GET", target=target,
                              headers=[("Host", self.host), ("User-Agent", "rcf_sync-example"),
                                       *headers])
        self.sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
        response, body = None, []
        for _ in range(MAX_EVENTS):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                # b"" (end of file) is fed to h11 too: before the response
                # is complete it makes the next event a RemoteProtocolError.
                conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection")
        else:
            raise h11.RemoteProtocolError("response too long")
        closed = conn.our_state is h11.MUST_CLOSE
        if closed:
            # The exchange is complete, the connection is not reusable. Shut
            # it down (the client owns the descriptor: no close() here) so
            # that the background discards it now.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return Response(response.status_code, response.headers, b"".join(body), closed)


class KeepAliveClient:
    """A reconnecting HTTP/1.1 client for one ``host:port``: GETs run on a
    kept-alive connection and are re-run on a new one when it dies under
    them. Keyword arguments go to :class:`~rcf_sync.ReconnectingClient`."""

    def __init__(self, host, port, **kwargs):
        kwargs.setdefault("factory", ReconnectingClientFactory(initialDelay=0.1, maxDelay=5))
        self.host_header = f"{host}:{port}"
        self.client = ReconnectingClient((host, port), on_connect=self._session,
                                         lost_on=(h11.RemoteProtocolError,), **kwargs)

    def _session(self, sock):
        return HTTPSession(sock, self.host_header)

    def get(self, target, timeout=10, attempts=5):
        """GET ``target`` (idempotent, so it may run more than once)."""
        return self.client.call(HTTPSession.get, target, timeout=timeout, attempts=attempts)

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
    repeat = 4
    if "--repeat" in argv:
        i = argv.index("--repeat")
        repeat = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    address = argv[0] if argv else "127.0.0.1:80"
    paths = argv[1:] or ["/"]
    host, _, port = address.rpartition(":")
    closes = 0
    with KeepAliveClient(host or "127.0.0.1", int(port)) as http:
        for _ in range(repeat):
            for path in paths:
                response = http.get(path)
                closes += response.closed
                digest = hashlib.sha256(response.body).hexdigest()[:16]
                print(f"GET {path} -> {response.status}, {len(response.body)} bytes,"
                      f" sha256 {digest}{', Connection: close' if response.closed else ''}")
        stats = http.client.stats
        print(f"requests: {repeat * len(paths)}, connections: {stats.connects},"
              f" closed by the server: {closes}")
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
