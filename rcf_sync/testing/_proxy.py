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

import collections
import errno
import ipaddress
import logging
import math
import numbers
import operator
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FaultProxy"]

log = logging.getLogger("rcf_sync.testing")

_RECV_SIZE = 65536
_BUFFER_LIMIT = 256 * 1024  # per direction, per connection
_ACCEPT_BATCH = 64  # connections accepted per readiness event
_DRAIN_LIMIT = 16  # recv calls spent discarding unread input before a FIN
_LINGER_RESET = struct.pack("ii", 1, 0)

_WAKE = object()
_LISTEN = object()

# States of a connection's upstream side.
_PENDING = "pending"  # not yet connecting (accepted while blackholed)
_CONNECTING = "connecting"
_CONNECTED = "connected"


def _loopback_host(host: object, owner: str = "FaultProxy") -> tuple[socket.AddressFamily, str]:
    """Return ``(family, literal)`` for a loopback listen host, else raise
    ``ValueError`` saying that ``owner`` listens on loopback only."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a string, got {host!r}")
    if host.lower() == "localhost":
        return socket.AF_INET, "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{owner} listens on loopback only; {host!r} is not a loopback "
            "address (use 127.0.0.1, ::1 or 'localhost')"
        ) from None
    if not addr.is_loopback:
        raise ValueError(
            f"{owner} listens on loopback only; {host!r} is not a loopback address"
        )
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return family, str(addr)


def _port(value: Any, what: str) -> int:
    try:
        port = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} must be in 0..65535, got {port!r}")
    return port


def _close_reset(sock: socket.socket) -> None:
    """Close ``sock`` abortively: the peer gets a RST (ECONNRESET)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _close_fin(sock: socket.socket) -> None:
    """Close ``sock`` in an orderly way: the peer reads end-of-file.

    Unread input is discarded first, because closing a socket that still has
    unread input makes the kernel send a RST instead of a FIN.
    """
    try:
        for _ in range(_DRAIN_LIMIT):
            if not sock.recv(_RECV_SIZE):
                break
    except OSError:  # includes BlockingIOError: nothing (more) to discard
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of a proxied connection: chunks waiting for delivery."""

    __slots__ = ("chunks", "buffered", "eof_in", "eof_out")

    def __init__(self) -> None:
        # Each chunk is [due time, data] (a list: _flush trims the data in place).
        self.chunks: collections.deque[list[Any]] = collections.deque()
        self.buffered = 0
        self.eof_in = False  # the source sent a FIN
        self.eof_out = False  # the FIN was passed on to the destination

    def head_due(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None


class _Conn:
    """A proxied connection: the accepted client socket and its upstream."""

    __slots__ = (
        "client", "upstream", "state", "addr_index", "budget",
        "to_up", "to_client", "masks", "closed",
    )

    def __init__(self, client: socket.socket, budget: int | None) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = _PENDING
        self.addr_index = 0
        self.budget = budget  # bytes left before the cut, or None
        self.to_up = _Pipe()
        self.to_client = _Pipe()
        self.masks: dict[socket.socket, int] = {}  # socket -> registered selector mask
        self.closed = False


class _Command:
    __slots__ = ("func", "args", "done", "result", "error")

    def __init__(self, func: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class FaultProxy:
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

    @property
    def _selector(self) -> selectors.BaseSelector:
        """The loop's selector (exists from :meth:`start` on)."""
        sel = self._sel
        if sel is None:
            raise RuntimeError("FaultProxy not started")
        return sel

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
        if not isinstance(seconds, numbers.Real) or isinstance(seconds, bool):
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

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for cmd in commands:
            try:
                cmd.result = cmd.func(*cmd.args)
            except Exception as exc:
                cmd.error = exc
            cmd.done.set()

    def _do_set(self, name: str, value: object) -> None:
        setattr(self, name, value)

    def _do_heal(self) -> None:
        self._blackholed = False
        self._delay = 0.0
        self._cut = None
        for conn in self._conns:
            for pipe in (conn.to_up, conn.to_client):
                for chunk in pipe.chunks:
                    chunk[0] = 0.0

    def _listen(self) -> socket.socket:
        listener = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, _LISTEN)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        return listener

    def _do_refuse(self) -> None:
        if self._listener is None:
            return
        for _ in range(16):  # take in what is already in the backlog
            if not self._accept_some():
                break
        self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None

    def _do_accept(self) -> None:
        if self._listener is None:
            self._listen()

    def _do_reset_all(self) -> None:
        for conn in list(self._conns):
            self._end(conn, reset=True)

    def _do_close_all(self) -> None:
        for conn in list(self._conns):
            self._end(conn, reset=False)

    # ----------------------------------------------------------- the loop

    def _loop(self) -> None:
        try:
            while not self._stopping:
                events = self._selector.select(self._timeout())
                for key, mask in events:
                    data = key.data
                    if data is _WAKE:
                        self._drain_wake()
                    elif data is _LISTEN:
                        if self._listener is not None:
                            self._accept_some()
                    else:
                        conn, sock = data
                        if not conn.closed:
                            self._ready(conn, sock, mask)
                self._run_commands()
                for conn in list(self._conns):
                    self._pump(conn)
        except BaseException:
            log.exception("FaultProxy %s stopped by an unexpected error", self._address)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        with self._lock:
            self._running = False
            commands, self._commands = self._commands, []
        for cmd in commands:
            cmd.error = RuntimeError("FaultProxy is closed")
            cmd.done.set()
        for conn in list(self._conns):
            self._end(conn, reset=False)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._selector.close()

    def _timeout(self) -> float | None:
        """Seconds until the next delayed chunk falls due (None: no timer).

        A chunk already due whose destination has write interest registered
        waits for the selector instead; one without (it fell due since the
        last pump) calls for an immediate round.
        """
        if self._blackholed:
            return None
        now = time.monotonic()
        soonest = None
        for conn in self._conns:
            for pipe, dst in ((conn.to_up, conn.upstream), (conn.to_client, conn.client)):
                due = pipe.head_due()
                if due is None:
                    continue
                if due <= now:
                    if dst is not None and conn.masks.get(dst, 0) & selectors.EVENT_WRITE:
                        continue
                    return 0.0
                if soonest is None or due < soonest:
                    soonest = due
        if soonest is None:
            return None
        return max(0.0, soonest - now)

    def _drain_wake(self) -> None:
        wake_r = self._wake_r
        if wake_r is None:  # close() took it: nothing left to drain
            return
        try:
            while wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept_some(self) -> bool:
        """Accept up to a batch of pending connections; return whether the
        batch was full (so more may be waiting)."""
        listener = self._listener
        if listener is None:
            return False
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:  # e.g. ECONNABORTED, EMFILE
                log.debug("FaultProxy accept failed: %s", exc)
                return False
            if len(self._conns) >= self._max_connections:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(sock, self._cut)
            self._conns.add(conn)
            self._count_delta(+1)
            if conn.budget == 0:
                self._end(conn, reset=True)
                continue
            self._pump(conn)
        return True

    def _count_delta(self, delta: int) -> None:
        with self._count_changed:
            self._count += delta
            self._count_changed.notify_all()

    def _connect_next(self, conn: _Conn) -> None:
        """Start a non-blocking connect to the next upstream address; close
        the client (FIN) when none is left."""
        while conn.addr_index < len(self._upstream_addrs):
            family, sockaddr = self._upstream_addrs[conn.addr_index]
            conn.addr_index += 1
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
                conn.upstream = sock
                conn.state = _CONNECTING
                return
            log.debug("FaultProxy upstream %s: %s", sockaddr, errno.errorcode.get(err, err))
            sock.close()
        self._end(conn, reset=False)

    def _ready(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        if sock is conn.upstream and conn.state == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                conn.state = _CONNECTED
            else:
                log.debug("FaultProxy upstream connect failed: %s",
                          errno.errorcode.get(err, err))
                self._unregister(conn, sock)
                sock.close()
                conn.upstream = None
                self._connect_next(conn)
            return
        pipe_in = conn.to_up if sock is conn.client else conn.to_client
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._end(conn, reset=True)  # pass a reset on as a reset
                return
            if data == b"":
                pipe_in.eof_in = True
            elif data:
                pipe_in.chunks.append([time.monotonic() + self._delay, memoryview(data)])
                pipe_in.buffered += len(data)
        # Writes are made by _pump, which runs for every connection after
        # each round of events.

    def _flush(self, conn: _Conn, pipe: _Pipe, dst: socket.socket) -> bool:
        """Send the due chunks of ``pipe`` to ``dst``; return False if the
        connection ended."""
        now = time.monotonic()
        while pipe.chunks and pipe.chunks[0][0] <= now:
            chunk = pipe.chunks[0]
            view = chunk[1]
            if conn.budget is not None:
                view = view[:conn.budget]
            try:
                sent = dst.send(view)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._end(conn, reset=True)
                return False
            pipe.buffered -= sent
            if sent == len(chunk[1]):
                pipe.chunks.popleft()
            else:
                chunk[1] = chunk[1][sent:]
            if conn.budget is not None:
                conn.budget -= sent
                if conn.budget <= 0:
                    self._end(conn, reset=True)
                    return False
            if sent < len(view):
                return True
        if pipe.eof_in and not pipe.chunks and not pipe.eof_out:
            pipe.eof_out = True
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return True

    def _pump(self, conn: _Conn) -> None:
        """Move what can be moved on ``conn`` and update its registrations."""
        if conn.closed:
            return
        if self._blackholed:
            self._register(conn, conn.client, 0)
            if conn.upstream is not None:
                mask = selectors.EVENT_WRITE if conn.state == _CONNECTING else 0
                self._register(conn, conn.upstream, mask)
            return
        if conn.state == _PENDING:
            self._connect_next(conn)
            if conn.closed:
                return
        upstream = conn.upstream
        if upstream is None:  # pragma: no cover - connecting or connected has one
            raise RuntimeError(f"{conn.state} connection without an upstream socket")
        if conn.state == _CONNECTING:
            self._register(conn, conn.client, 0)
            self._register(conn, upstream, selectors.EVENT_WRITE)
            return
        if not self._flush(conn, conn.to_up, upstream):
            return
        if not self._flush(conn, conn.to_client, conn.client):
            return
        if conn.to_up.eof_out and conn.to_client.eof_out:
            self._end(conn, reset=False)
            return
        now = time.monotonic()
        for sock, pipe_in, pipe_out in (
            (conn.client, conn.to_up, conn.to_client),
            (upstream, conn.to_client, conn.to_up),
        ):
            mask = 0
            if not pipe_in.eof_in and pipe_in.buffered < _BUFFER_LIMIT:
                mask |= selectors.EVENT_READ
            due = pipe_out.head_due()
            if due is not None and due <= now:
                mask |= selectors.EVENT_WRITE  # the last send would block
            self._register(conn, sock, mask)

    def _register(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        old = conn.masks.get(sock, 0)
        if mask == old:
            return
        if old == 0:
            self._selector.register(sock, mask, (conn, sock))
        elif mask == 0:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, (conn, sock))
        conn.masks[sock] = mask

    def _unregister(self, conn: _Conn, sock: socket.socket) -> None:
        if conn.masks.pop(sock, 0):
            self._selector.unregister(sock)

    def _end(self, conn: _Conn, reset: bool) -> None:
        """Close both sockets of ``conn``: with a RST if ``reset``, else
        with a FIN."""
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        close = _close_reset if reset else _close_fin
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                self._unregister(conn, sock)
                close(sock)
        conn.to_up.chunks.clear()
        conn.to_client.chunks.clear()
        self._count_delta(-1)
