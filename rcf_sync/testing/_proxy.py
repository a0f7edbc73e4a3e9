"""``FaultProxy``: a loopback TCP proxy that injects network faults on command.

Theory of operation
-------------------
A single background thread runs a :class:`selectors.DefaultSelector` loop over
the listening socket, every proxied socket (all non-blocking) and one end of a
wake-up socket pair. Each accepted client connection gets its own
non-blocking connect to the upstream server; two one-way *pipes*
(client -> upstream, upstream -> client) carry queues of chunks, each chunk
stamped with the time it may be delivered (read time plus the configured
delay). The selector timeout is the earliest such time, so delays cost no
polling.

Commands (``refuse()``, ``reset_all()``, ``delay()``, ...) may come from any
thread. A command is put on a queue under a lock, a byte is written to the
wake-up socket, and the caller waits until the loop thread has applied it,
so when a command returns, its effect is already in place (for instance,
after ``refuse()`` a connect is refused; after ``reset_all()`` the resets are
sent). All sockets are owned by the loop thread alone, so no socket is
touched by two threads.

Resources are bounded: at most ``max_connections`` proxied connections at a
time (more are closed as soon as they are accepted), and each direction of a
connection buffers at most 256 KiB before the proxy stops reading from that
side (back-pressure, as TCP itself would apply).
"""

from __future__ import annotations

import math
import operator
import selectors
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable

from .._timeouts import is_real
from ._proxy_loop import _ProxyLoop
from ._proxy_parts import _WAKE, _Command, _Conn, _loopback_host, _port

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FaultProxy"]

class FaultProxy(_ProxyLoop):
    """A loopback TCP proxy in front of ``upstream`` that injects faults.

    ``FaultProxy(upstream, *, host="127.0.0.1", port=0, max_connections=256)``
    forwards every connection made to :attr:`address` to ``upstream`` (a
    ``(host, port)`` pair; a host name there is resolved once, at
    :meth:`start`, and each address is tried in turn). Commands break the
    path on demand: :meth:`refuse`, :meth:`accept`, :meth:`reset_all`,
    :meth:`close_all`, :meth:`blackhole`, :meth:`delay`, :meth:`cut_after`,
    and :meth:`heal` to undo the forwarding faults.

    Use it as a context manager (``with FaultProxy(up) as proxy:`` starts it
    and closes it), or call :meth:`start` and :meth:`close`.

    It listens on loopback only: a ``host`` that is not a loopback address
    (``127.0.0.0/8``, ``::1`` or ``"localhost"``) raises ``ValueError``. At
    most ``max_connections`` connections are proxied at once; beyond that a
    new connection is closed as soon as it is accepted.

    Thread-safe: every method and property may be used from any thread.
    Each command takes effect before it returns. Commands raise
    ``RuntimeError`` if the proxy is not running (not started, or closed).
    """

    def __init__(
        self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0,
        max_connections: int = 256,
    ) -> None:
        try:
            up_host, up_port = upstream
        except (TypeError, ValueError):
            raise TypeError(f"upstream must be a (host, port) pair, got {upstream!r}") from None
        if not isinstance(up_host, str):
            raise TypeError(f"upstream host must be a string, got {up_host!r}")
        self._upstream = (up_host, _port(up_port, "upstream port"))
        self._family, self._host = _loopback_host(host)
        self._port = _port(port, "port")
        max_connections = operator.index(max_connections)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        self._max_connections = max_connections

        self._lock = threading.Lock()
        self._count_changed = threading.Condition(self._lock)
        self._commands: list[_Command] = []
        self._started = False
        self._stopping = False
        self._running = False
        self._count = 0
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

        # Owned by the loop thread once started.
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._upstream_addrs: list[tuple[int, Any]] = []
        self._conns: set[_Conn] = set()
        self._blackholed = False
        self._delay = 0.0
        self._cut: int | None = None

    # ----------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind the listening socket and start the proxy thread.

        Raises ``RuntimeError`` if already started (or closed), ``OSError``
        if the port cannot be bound or the upstream host cannot be resolved.
        Thread-safe. Returns ``self``.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("FaultProxy already started" if not self._stopping
                                   else "FaultProxy is closed")
            self._started = True
        addrs = socket.getaddrinfo(self._upstream[0], self._upstream[1],
                                   type=socket.SOCK_STREAM)
        self._upstream_addrs = [(fam, sockaddr) for fam, _, _, _, sockaddr in addrs]
        sel = selectors.DefaultSelector()
        wake_r, wake_w = socket.socketpair()
        try:
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            sel.register(wake_r, selectors.EVENT_READ, _WAKE)
            self._sel = sel
            listener = self._listen()
        except BaseException:
            self._undo_start(sel, wake_r, wake_w)
            raise
        host, port = listener.getsockname()[:2]
        self._address = (host, port)
        self._port = port
        thread = threading.Thread(
            target=self._loop, name=f"FaultProxy {self._host}:{self._port}", daemon=True)
        with self._lock:
            closed = self._stopping
            if not closed:
                self._wake_r, self._wake_w = wake_r, wake_w
                self._thread = thread
                self._running = True
        if closed:  # close() was called while starting
            self._undo_start(sel, wake_r, wake_w)
            raise RuntimeError("FaultProxy is closed")
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._running = False
                self._thread = None
                self._wake_r = self._wake_w = None
            self._undo_start(sel, wake_r, wake_w)
            raise
        return self

    def _undo_start(
        self, sel: selectors.BaseSelector, wake_r: socket.socket, wake_w: socket.socket
    ) -> None:
        """Close what a failed or overtaken start() opened."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        sel.close()
        wake_r.close()
        wake_w.close()

    def close(self) -> None:
        """Stop the proxy: close the listening socket and every connection
        (orderly, as :meth:`close_all`), and join the proxy thread.

        Idempotent and prompt; afterwards no thread or socket of the proxy is
        left. Commands then raise ``RuntimeError``. Raises nothing itself.
        Thread-safe (but do not call it while holding up the proxy thread).
        """
        with self._lock:
            self._started = True  # a proxy closed before start cannot start
            self._stopping = True
            thread = self._thread
        if thread is None:
            return
        self._wake()
        thread.join()
        with self._lock:
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = None
        if wake_r is not None:
            wake_r.close()
        if wake_w is not None:
            wake_w.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "unbound"
        up = f"{self._upstream[0]}:{self._upstream[1]}"
        return f"<FaultProxy {where} -> {up} connections={self._count}>"

    # ---------------------------------------------------------- properties

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the proxy listens on; the same across
        :meth:`refuse` and :meth:`accept`. ``RuntimeError`` before
        :meth:`start`. Thread-safe."""
        if self._address is None:
            raise RuntimeError("FaultProxy not started")
        return self._address

    @property
    def connection_count(self) -> int:
        """The number of proxied connections now open (counted on the
        client side, from accept until the proxy closes that connection).
        Thread-safe."""
        with self._lock:
            return self._count

    def _wait_connection_count(self, predicate: Callable[[int], bool], timeout: float | None) -> bool:
        """Wait until ``predicate(connection_count)`` holds; return whether it
        did within ``timeout`` seconds."""
        with self._count_changed:
            return self._count_changed.wait_for(lambda: predicate(self._count), timeout)

    # ------------------------------------------------------------ commands

    def refuse(self) -> None:
        """Stop listening: new connects are refused (``ECONNREFUSED``) until
        :meth:`accept`. Connections already made, including any still in
        the listen backlog, are accepted and keep working. No-op if not
        listening. Raises ``RuntimeError`` if not running. Thread-safe."""
        self._call(self._do_refuse)

    def accept(self) -> None:
        """Listen again, on the same address (``SO_REUSEADDR``), so new
        connects succeed. No-op if already listening. Raises ``OSError`` if
        the port was taken meanwhile, ``RuntimeError`` if not running.
        Thread-safe."""
        self._call(self._do_accept)

    def reset_all(self) -> None:
        """Reset every open connection: both of its sockets are closed with
        ``SO_LINGER`` 0, so the client and the upstream server see
        ``ECONNRESET``. Raises ``RuntimeError`` if not running. Thread-safe."""
        self._call(self._do_reset_all)

    def close_all(self) -> None:
        """Close every open connection in an orderly way (FIN on both
        sides): the client and the upstream server read end-of-file. Data
        not yet forwarded is dropped. Raises ``RuntimeError`` if not
        running. Thread-safe."""
        self._call(self._do_close_all)

    def blackhole(self) -> None:
        """Forward nothing, either way, from now on, on every connection.

        Existing connections stop forwarding (what is already buffered stays
        buffered); new connections are accepted and held without connecting
        upstream. Nothing is read, so the peers see neither data nor closes.
        :meth:`heal` resumes forwarding, for held connections too. Raises
        ``RuntimeError`` if not running. Thread-safe."""
        self._call(self._do_set, "_blackholed", True)

    def delay(self, seconds: float) -> None:
        """Hold each chunk read from now on for ``seconds`` before forwarding
        it, in each direction (so a round trip gains twice ``seconds``).
        Order is kept. ``ValueError`` for a negative, infinite or NaN value,
        ``TypeError`` for a non-number, ``RuntimeError`` if not running.
        Thread-safe."""
        if not is_real(seconds):
            raise TypeError(f"delay must be a number of seconds, got {seconds!r}")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"delay must be a finite number >= 0, got {seconds!r}")
        self._call(self._do_set, "_delay", seconds)

    def cut_after(self, n: int) -> None:
        """Cut each connection accepted from now on once ``n`` bytes in
        total (both directions together) have been forwarded on it: both of
        its sockets are then reset (``ECONNRESET``), as by :meth:`reset_all`.
        ``cut_after(0)`` resets new connections at once. Connections the
        proxy has already accepted are not affected (a connect that has
        completed but is still in the listen backlog counts as new).
        ``ValueError`` for negative ``n``, ``TypeError`` for a non-integer,
        ``RuntimeError`` if not running. Thread-safe."""
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"cut_after needs an integer byte count, got {n!r}") from None
        if n < 0:
            raise ValueError(f"cut_after needs a byte count >= 0, got {n!r}")
        self._call(self._do_set, "_cut", n)

    def heal(self) -> None:
        """Forward normally again: undo :meth:`blackhole`, :meth:`delay` and
        :meth:`cut_after`. Held connections resume (and connect upstream if
        they had not); chunks waiting out a delay are forwarded at once;
        connections already under a cut keep their byte budget. Does not
        change listening: after :meth:`refuse`, call :meth:`accept`.
        Raises ``RuntimeError`` if not running. Thread-safe."""
        self._call(self._do_heal)

    # ---------------------------------------------- command plumbing

    def _call(self, func: Callable[..., object], *args: object) -> object:
        if threading.current_thread() is self._thread:
            return func(*args)
        cmd = _Command(func, args)
        with self._lock:
            if not self._running or self._stopping:
                raise RuntimeError("FaultProxy is not running")
            self._commands.append(cmd)
        self._wake()
        cmd.done.wait()
        if cmd.error is not None:
            error, cmd.error = cmd.error, None
            raise error
        return cmd.result

    def _wake(self) -> None:
        with self._lock:
            wake_w = self._wake_w
            if wake_w is None:
                return
            try:
                wake_w.send(b"\0")
            except BlockingIOError:
                pass  # a wake-up is already pending
