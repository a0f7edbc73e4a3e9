"""The loop thread of ``FaultProxy`` (``_proxy``): commands, accepting,
connecting upstream, pumping the pipes with their delays and cuts, and
ending connections. Everything here runs on that thread; the fields it
uses are set up by ``FaultProxy.__init__``, where their owners are written.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ._proxy_parts import (
    _ACCEPT_BATCH,
    _BUFFER_LIMIT,
    _CONNECTED,
    _CONNECTING,
    _LISTEN,
    _PENDING,
    _RECV_SIZE,
    _WAKE,
    _close_fin,
    _close_reset,
    _Command,
    _Conn,
    _Pipe,
    log,
)

__all__ = ["_ProxyLoop"]


class _ProxyLoop:
    """The loop side of :class:`~rcf_sync.testing.FaultProxy` (not public)."""

    if TYPE_CHECKING:
        _upstream: tuple[str, int]
        _family: socket.AddressFamily
        _host: str
        _port: int
        _max_connections: int
        _lock: threading.Lock
        _count_changed: threading.Condition
        _commands: list[_Command]
        _started: bool
        _stopping: bool
        _running: bool
        _count: int
        _address: tuple[str, int] | None
        _thread: threading.Thread | None
        _wake_r: socket.socket | None
        _wake_w: socket.socket | None
        _sel: selectors.BaseSelector | None
        _listener: socket.socket | None
        _upstream_addrs: list[tuple[int, Any]]
        _conns: set[_Conn]
        _blackholed: bool
        _delay: float
        _cut: int | None

    @property
    def _selector(self) -> selectors.BaseSelector:
        """The loop's selector (exists from :meth:`start` on)."""
        sel = self._sel
        if sel is None:
            raise RuntimeError("FaultProxy not started")
        return sel

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
