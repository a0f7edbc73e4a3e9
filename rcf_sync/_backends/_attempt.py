"""The thread backend's interpreter of attempt steps (see ``_steps``).

An :class:`Attempt` drives one attempt generator on the loop thread: socket
waits arm the poller, name lookups and other library work go to the worker
pool, user code to the handle's user-code queue, and each result is sent
back into the generator on the loop. The attempt's deadline is one real-time
timer; cancelling closes the generator (which closes its sockets) and
abandons a job still running.

Everything here runs on the loop thread, except :meth:`Attempt.cancel`
callers, who are on it too (clients call it from loop work only).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable

from .._steps import TLS, Adopt, Readable, Resolve, UserCall, Writable
from ._runtime import READ, WRITE

if TYPE_CHECKING:
    from .._callbacks import UserCode
    from .._connectors import _SocketConnector
    from .._steps import Step
    from .._timers import DelayedCall
    from ._runtime import Runtime
    from ._seam import Steps

__all__ = ["Attempt", "tls_handshake"]


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
                 "_deadline")

    def __init__(self, runtime: Runtime, steps: Steps, timeout: float | None,
                 deliver: Callable[[Any, BaseException | None], None],
                 user_code: UserCode) -> None:
        self._rt = runtime
        # Generators: the attempt, then nested ones (TLS).
        self._stack: list[Generator[Step, Any, Any]] = [steps]
        self._deliver = deliver
        self._user = user_code
        self._done = False
        self._waiting_on: socket.socket | None = None  # the socket armed in the poller
        # (token, abandon) of the job or user call in flight.
        self._job: tuple[object, Callable[[], None]] | None = None
        self._deadline: DelayedCall | None = None
        if timeout is not None:
            self._deadline = runtime.clock.callLater(timeout, self._expire, timeout)

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

        call = self._user.run(step.fn, step.args, done, step.threaded)
        self._job = (token, lambda: self._user.abandon(call))
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
        while self._stack:
            gen = self._stack.pop()
            try:
                gen.close()
            except Exception:
                pass
        if exc is None:
            self._done = True
            self._cancel_deadline()
        else:
            self._finish(None, exc)

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _finish(self, sock: Any, exc: BaseException | None) -> None:
        self._done = True
        self._cancel_deadline()
        self._deliver(sock, exc)


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
