"""``EchoServer``: a loopback echo server to point clients at in tests,
demos and examples, which can be killed and restarted on the same port."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from ._proxy_parts import _loopback_host

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["EchoServer", "echo_round_trip"]

_MODES = ("echo", "silent", "eof")


class EchoServer:
    """A loopback TCP server: one thread accepts, one thread per connection
    answers. ``mode``: ``"echo"`` sends back what it reads; ``"silent"``
    reads and never answers; ``"eof"`` reads one chunk and closes.

    :meth:`start` listens (again on the same port after a :meth:`stop`);
    :meth:`stop` closes the listener and every connection (each peer reads
    end-of-file) and joins the threads; :meth:`drop_all` closes (or resets)
    the open connections but keeps listening. Also a context manager.
    ``ValueError`` for a host that is not loopback or an unknown mode.
    Thread-safe; under gevent's monkey-patching its threads are greenlets.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, mode: str = "echo") -> None:
        self._family, host = _loopback_host(host, "EchoServer")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.host = host
        self.port = port
        self.mode = mode
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._handlers: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on."""
        return (self.host, self.port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Listen (on the same port as before, if it ran already); returns ``self``."""
        listener = socket.socket(self._family)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port or 0))
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                        name="echo-accept", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            handler = threading.Thread(target=self._handle, args=(conn,), name="echo-conn",
                                       daemon=True)
            with self._lock:
                self._conns.add(conn)
                self.accepted += 1
                self._handlers = [t for t in self._handlers if t.is_alive()]
                self._handlers.append(handler)
                self._changed.notify_all()
            handler.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data or self.mode == "eof":
                    break
                if self.mode == "echo":
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def wait_accepted(self, n: int = 1, timeout: float | None = 5) -> bool:
        """Block until ``n`` connections were accepted in all; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: self.accepted >= n, timeout)

    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._conns)

    def push(self, data: bytes) -> int:
        """Send ``data`` unasked on every open connection (a server pushing a
        notification, or a reply nobody waits for); return how many got it."""
        with self._lock:
            conns = list(self._conns)
        sent = 0
        for c in conns:
            try:
                c.sendall(data)
                sent += 1
            except OSError:
                pass
        return sent

    def drop_all(self, reset: bool = False) -> None:
        """Close every open connection (with an RST when ``reset``); keep listening."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                if reset:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self, timeout: float | None = 5) -> None:
        """Stop listening, close every connection, join the threads. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            except OSError:
                pass
            listener.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)  # no accept after this: drop_all sees every connection
        self.drop_all()
        with self._lock:
            handlers, self._handlers = self._handlers, []
        for t in handlers:
            t.join(timeout)


def echo_round_trip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` on ``sock`` and read back exactly as many bytes (one
    request to an :class:`EchoServer`); ``ConnectionResetError`` if the peer
    closes first. Meant for ``client.call(echo_round_trip, payload)``."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(f"peer closed after {len(got)} of {len(payload)} bytes")
        got += chunk
    return got

