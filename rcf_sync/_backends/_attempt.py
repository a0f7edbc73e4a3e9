"""The thread backend's interpreter of attempt steps (see ``_steps``).

An :class:`Attempt` drives one attempt generator on the loop thread: socket
waits arm the poller, name lookups and other library work go to the worker
pool, user code to the handle's user-code queue, and each result is sent
back into the generator on the loop. Deadlines of one length expire in the
order they were set, so the attempts that share a timeout share one
real-time timer (:class:`Deadlines`), not one heap entry each: a herd of a
thousand attempts would otherwise fill the heap with cancelled deadlines.
Cancelling closes the generator (which closes its sockets) and abandons a
job still running.

Everything here runs on the loop thread, except :meth:`Attempt.cancel`
callers, who are on it too (clients call it from loop work only).
"""

from __future__ import annotations

import collections
import socket
import ssl
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable

from .._connectors import _IN_PROGRESS
from .._steps import TLS, Adopt, Readable, Resolve, UserCall, Writable
from ._base import deliver_once
from ._base import delivered as _delivered
from ._runtime import READ, WRITE

if TYPE_CHECKING:
    from .._callbacks import UserCode
    from .._connectors import _Address, _SocketConnector
    from .._steps import Step
    from .._timers import DelayedCall
    from ._runtime import Runtime
    from ._seam import Steps

__all__ = ["Attempt", "Connect", "Deadlines", "tls_handshake"]


def tls_handshake(raw: socket.socket,
                  connector: _SocketConnector) -> Generator[Step, None, ssl.SSLSocket]:
    """Generator: wrap ``raw`` (non-blocking) and complete the handshake."""
    context = connector.ssl_context
    if context is None:
        raise RuntimeError(f"{connector!r} has no TLS context")
    tls = context.wrap_socket(
        raw, server_hostname=connector.server_hostname, do_handshake_on_connect=False
    )
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                yield Readable(tls)
            except ssl.SSLWantWriteError:
                yield Writable(tls)
    except BaseException:
        tls.close()
        raise


class Attempt:
    """One attempt generator driven on the loop thread."""

    __slots__ = ("_rt", "_stack", "_deliver", "_user", "_done", "_waiting_on", "_job",
                 "_deadlines", "_entry")

    def __init__(self, runtime: Runtime, steps: Steps | None, timeout: float | None,
                 deliver: Callable[[Any, BaseException | None], None],
                 user_code: Callable[[], UserCode] | None) -> None:
        self._rt = runtime
        # Generators: the attempt, then nested ones (TLS).
        self._stack: list[Generator[Step, Any, Any]] = [] if steps is None else [steps]
        self._deliver = deliver
        self._user = user_code
        self._done = False
        self._waiting_on: socket.socket | None = None  # the socket armed in the poller
        # (token, abandon) of the job or user call in flight.
        self._job: tuple[object, Callable[[], None]] | None = None
        self._deadlines: Deadlines | None = None
        self._entry: list[Any] | None = None  # [when, self] in the deadlines' queue
        if timeout is not None:
            deadlines = runtime.deadlines.get(timeout)
            if deadlines is None:
                deadlines = runtime.deadlines[timeout] = Deadlines(runtime, timeout)
            self._deadlines = deadlines
            self._entry = deadlines.add(self)

    def start(self) -> None:
        self._step(None, None)

    def _step(self, value: Any, exc: BaseException | None) -> None:
        while not self._done:
            gen = self._stack[-1]
            try:
                step = gen.throw(exc) if exc is not None else gen.send(value)
            except StopIteration as stop:
                self._stack.pop()
                value, exc = stop.value, None
                if not self._stack:
                    self._finish(value, None)
                    return
                continue
            except BaseException as error:
                self._stack.pop()
                value, exc = None, error
                if not self._stack:
                    self._finish(None, error)
                    return
                continue
            value = exc = None
            handler = _HANDLERS.get(type(step))
            if handler is None:
                exc = TypeError(f"unknown attempt step {step!r}")
                continue
            try:
                waiting, value = handler(self, step)
            except Exception as error:
                exc = error
                continue
            if waiting:
                return

    # Each handler returns (waiting, value): waiting=True when the result
    # will come back later through _resume / _job_done.

    def _wait(self, step: Readable | Writable, kind: str) -> tuple[bool, Any]:
        self._waiting_on = step.sock
        self._rt.arm(step.sock, kind, self._resume)
        return True, None

    def _readable(self, step: Readable) -> tuple[bool, Any]:
        return self._wait(step, READ)

    def _writable(self, step: Writable) -> tuple[bool, Any]:
        return self._wait(step, WRITE)

    def _adopt(self, step: Adopt) -> tuple[bool, Any]:
        try:
            step.sock.setblocking(True)
        except OSError:
            step.sock.close()
            raise
        return False, step.sock

    def _tls(self, step: TLS) -> tuple[bool, Any]:
        self._stack.append(tls_handshake(step.sock, step.connector))
        return False, None

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
        token = object()

        def done(result: Any, exc: BaseException | None) -> None:
            self._job_done(token, result, exc)

        job = self._rt.workers.submit(fn, args, done)
        self._job = (token, job.abandon)
        return True, None

    def _resolve(self, step: Resolve) -> tuple[bool, Any]:
        return self._submit(socket.getaddrinfo, (step.host, step.port, 0, socket.SOCK_STREAM))

    def _user_call(self, step: UserCall) -> tuple[bool, Any]:
        token = object()

        def done(result: Any, exc: BaseException | None) -> None:
            self._job_done(token, result, exc)

        assert self._user is not None  # an attempt of steps has a user-code queue
        user = self._user()
        call = user.run(step.fn, step.args, done, step.threaded)
        self._job = (token, lambda: user.abandon(call))
        return True, None

    def _resume(self) -> None:
        self._waiting_on = None
        self._step(None, None)

    def _job_done(self, token: object, result: Any, exc: BaseException | None) -> None:
        job = self._job
        if self._done or job is None or job[0] is not token:
            _discard(result)
            return
        self._job = None
        self._step(result, exc)

    def _expire(self, timeout: float) -> None:
        if not self._done:
            self._abort(TimeoutError(f"timed out after {timeout:g}s"))

    def cancel(self) -> None:
        """Abandon the attempt; its sockets are closed, ``deliver`` is not called."""
        if not self._done:
            self._abort(None)

    def _abort(self, exc: BaseException | None) -> None:
        if self._waiting_on is not None:
            self._rt.forget(self._waiting_on)
            self._waiting_on = None
        job, self._job = self._job, None
        if job is not None:
            job[1]()  # abandon it: a hung job no longer holds a worker or the user queue
        self._close_steps()
        if exc is None:
            self._done = True
            self._deliver = _delivered
            self._cancel_deadline()
        else:
            self._finish(None, exc)

    def _close_steps(self) -> None:
        """Close what the attempt holds (its generators close their sockets),
        once nothing waits on them."""
        while self._stack:
            gen = self._stack.pop()
            try:
                gen.close()
            except Exception:
                pass

    def _cancel_deadline(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            assert self._deadlines is not None
            self._deadlines.done(entry)

    def _finish(self, sock: Any, exc: BaseException | None) -> None:
        self._done = True
        self._cancel_deadline()
        deliver_once(self, sock, exc)


class Connect(Attempt):
    """The plain case's attempt, with no generator: one address known
    without a lookup, no TLS, no user code (see the connector's
    ``_direct_address``). It makes the same calls as the attempt generator
    followed by the handle's ``Adopt`` step, through the connector's own
    methods, and ends the same ways; it only skips the interpreter."""

    __slots__ = ("_connector", "_address", "_sock", "_err")
    _err: int  # connect_ex's, set by begin()

    def __init__(self, runtime: Runtime, connector: _SocketConnector, address: _Address,
                 timeout: float | None,
                 deliver: Callable[[Any, BaseException | None], None]) -> None:
        super().__init__(runtime, None, timeout, deliver, None)
        self._connector = connector
        self._address = address
        self._sock: socket.socket | None = None  # until delivered or closed

    def start(self) -> None:
        self._rt.connect_soon(self)  # begun with the others of this slice

    def begin(self) -> None:
        """The runtime's: open the socket and begin the connect, unless the
        attempt was cancelled or timed out since it started."""
        if self._done:
            return
        try:
            self._sock, self._err = self._connector._open_direct(self._address)
        except BaseException as exc:
            self._fail(exc)

    def watch(self) -> None:
        """The runtime's, after :meth:`begin`: wait for the connect to end,
        or end the attempt if it already has."""
        sock = self._sock
        if self._done or sock is None:
            return
        if self._err in _IN_PROGRESS:
            self._waiting_on = sock
            self._rt.arm(sock, WRITE, self._resume)
        else:
            self._connect_ended(sock, self._err)

    def _resume(self) -> None:
        self._waiting_on = None
        sock = self._sock
        assert sock is not None  # armed only while it is ours
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException as exc:
            self._fail(exc)
            return
        self._connect_ended(sock, err)

    def _connect_ended(self, sock: socket.socket, err: int) -> None:
        try:
            self._connector._check_connected(sock, self._address[0], err)
            sock.setblocking(True)  # the thread backend's Adopt
        except BaseException as exc:
            self._fail(exc)
            return
        self._sock = None
        self._finish(sock, None)

    def _fail(self, exc: BaseException) -> None:
        self._close_steps()
        self._finish(None, exc)

    def _close_steps(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Deadlines:
    """The deadlines of the attempts with one timeout, on one runtime timer.

    Set in start order with the same length, they expire in that order: a
    queue of ``[when, attempt]`` entries, and one timer for the earliest
    live one. An attempt that ends clears its entry (so the queue does not
    keep it alive); cleared entries at the head are dropped at once. The
    timer outlives an empty queue (one client retrying would otherwise set
    and cancel a timer per attempt) until the runtime, with no user left,
    drops it before it stops. Loop thread only."""

    __slots__ = ("_rt", "_timeout", "_queue", "_timer", "_sweeping")

    def __init__(self, runtime: Runtime, timeout: float) -> None:
        self._rt = runtime
        self._timeout = timeout
        self._queue: collections.deque[list[Any]] = collections.deque()
        self._timer: DelayedCall | None = None
        self._sweeping = False

    def __len__(self) -> int:
        return sum(1 for entry in self._queue if entry[1] is not None)

    def add(self, attempt: Attempt) -> list[Any]:
        entry: list[Any] = [time.monotonic() + self._timeout, attempt]
        self._queue.append(entry)
        if self._timer is None and not self._sweeping:
            self._timer = self._rt.schedule(entry[0], self._expire_due, (), {})
        return entry

    def done(self, entry: list[Any]) -> None:
        # The timer stays when the queue empties: the next attempt reuses it
        # (a timer that fires early just sets itself again for the earliest).
        entry[1] = None
        self._trim()

    def _trim(self) -> None:
        queue = self._queue
        while queue and queue[0][1] is None:
            queue.popleft()

    def drop_idle_timer(self) -> None:
        """The runtime is about to stop: cancel a timer no deadline needs."""
        if not self._queue and self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()

    def _expire_due(self) -> None:
        # An attempt that expires may start another (add) or end others
        # (done): the timer is set again once, for the earliest left.
        self._sweeping = True
        queue = self._queue
        now = time.monotonic()
        try:
            while queue:
                entry = queue[0]
                attempt = entry[1]
                if attempt is not None and entry[0] > now:
                    break
                queue.popleft()
                if attempt is not None:
                    entry[1] = None
                    attempt._entry = None
                    attempt._expire(self._timeout)
        finally:
            self._sweeping = False
            self._timer = None
            self._trim()
            if queue:
                self._timer = self._rt.schedule(queue[0][0], self._expire_due, (), {})


_HANDLERS: dict[type, Callable[[Attempt, Any], tuple[bool, Any]]] = {
    Readable: Attempt._readable,
    Writable: Attempt._writable,
    Adopt: Attempt._adopt,
    TLS: Attempt._tls,
    Resolve: Attempt._resolve,
    UserCall: Attempt._user_call,
}


def _discard(result: object) -> None:
    if isinstance(result, socket.socket):
        result.close()
