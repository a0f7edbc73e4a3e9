"""The gevent backend: greenlets and the hub's own timers and watchers.

Imported only when a client asks for it. Connection attempts run in a
greenlet that drives the shared attempt generator with gevent's cooperative
waits, except the plain case (an IP address or a Unix path, no TLS, no
hook), which is a write watcher and a timer on the hub; idle connections
are watched by a read watcher on the hub, stopped while a caller holds the
lease. Nothing here blocks the hub: timer and watcher callbacks only
schedule or hand over work.

Works with and without ``gevent.monkey.patch_all()``. Without patching, a
user's socket factory runs in gevent's thread pool (it may block) and the
plain socket it returns is turned into a gevent socket; the sockets handed to
callers are always gevent sockets. Clients of this backend are used from
greenlets of the thread whose hub they were created in.
"""

from __future__ import annotations

import socket
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable

try:
    import gevent
    import gevent.event
    import gevent.socket
    import gevent.ssl
    from gevent import Timeout as _GTimeout
except ImportError as exc:  # pragma: no cover - exercised without gevent only
    raise ImportError(
        'the gevent backend needs gevent: pip install "rcf_sync[gevent]"'
    ) from exc

from .._connectors import _IN_PROGRESS
from .._steps import TLS, Adopt, Readable, Resolve, UserCall, Writable
from ._base import begin_connects, deliver_once, delivered, guard, socket_is_patched
from ._gevent_clock import GeventClock, _get_ident, _RealLock

if TYPE_CHECKING:
    from .._callbacks import UserCode
    from .._connectors import _Address, _SocketConnector
    from .._steps import Step
    from ._seam import Deliver, Steps

__all__ = ["GeventBackend", "GeventClock"]




def _capture(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except BaseException as exc:
        return False, exc


def _close_late_result(pending: Any) -> None:
    ok, value = pending.get()
    if ok and hasattr(value, "close"):
        value.close()


def _to_gevent_socket(sock: socket.socket) -> Any:
    """Hand back ``sock`` as a socket that yields to the hub."""
    if isinstance(sock, (gevent.socket.socket, gevent.ssl.SSLSocket)):
        sock.settimeout(None)
        return sock
    if hasattr(sock, "context"):  # a standard-library TLS socket
        sock.close()
        raise TypeError(
            "under the gevent backend without monkey-patching, a socket factory "
            "must return a gevent socket for TLS (use gevent.ssl) or a plain socket"
        )
    g = gevent.socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    g.settimeout(None)
    return g


def _tls(raw: socket.socket, connector: _SocketConnector) -> Any:
    g = _to_gevent_socket(raw)
    try:
        t = gevent.ssl.SSLSocket(
            sock=g, server_hostname=connector.server_hostname,
            _context=connector.ssl_context, do_handshake_on_connect=False,
        )
    except BaseException:
        g.close()
        raise
    try:
        t.do_handshake()
    except BaseException:
        t.close()
        raise
    return t


def _call_blocking(backend: GeventBackend, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Run user code that may block the thread: in gevent's thread pool
    unless the socket module is patched (then it cooperates)."""
    if socket_is_patched():
        return fn(*args)
    # The pool would print what the call raises: bring it back as a value.
    pending = backend._hub.threadpool.spawn(_capture, fn, args)
    try:
        ok, value = pending.get()
    except BaseException:
        # Abandoned (cancelled, timed out): close what arrives later.
        pending.rawlink(_close_late_result)
        raise
    if not ok:
        raise value
    return value


class _Attempt:
    """Drives one connection-attempt generator in a greenlet.

    The attempt's deadline is applied per wait (a socket wait gets the time
    left as its timeout), so the usual connect costs no extra timer; steps
    that are not socket waits run under a ``gevent.Timeout`` for the time left.
    """

    def __init__(self, backend: GeventBackend, steps: Steps, timeout: float | None,
                 deliver: Callable[[Any, BaseException | None], None],
                 user_code: Callable[[], UserCode]) -> None:
        self._backend = backend
        self._user = user_code
        self._deliver = deliver
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = False
        self._glet = gevent.spawn(self._run, steps)

    def _run(self, steps: Steps) -> None:
        try:
            sock = self._trampoline(steps)
        except gevent.GreenletExit:
            return
        except BaseException as exc:
            if isinstance(exc, _GTimeout):
                exc = self._timed_out()
            if not self._cancelled:
                deliver_once(self, None, exc)
            return
        if self._cancelled:
            sock.close()
        else:
            deliver_once(self, sock, None)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"timed out after {self._timeout:g}s")

    def _left(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        return left

    def _trampoline(self, gen: Steps) -> Any:
        value, exc = None, None
        while True:
            try:
                request = gen.throw(exc) if exc is not None else gen.send(value)
            except StopIteration as stop:
                return stop.value
            value, exc = None, None
            try:
                value = self._perform(request)
            except BaseException as error:
                exc = error

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Writable):
            return gevent.socket.wait_write(step.sock.fileno(), timeout=self._left(),
                                            timeout_exc=self._timed_out())
        if isinstance(step, Readable):
            return gevent.socket.wait_read(step.sock.fileno(), timeout=self._left(),
                                           timeout_exc=self._timed_out())
        if isinstance(step, Adopt):
            return _to_gevent_socket(step.sock)
        with _GTimeout(self._left()):
            if isinstance(step, Resolve):
                return gevent.socket.getaddrinfo(step.host, step.port, 0, socket.SOCK_STREAM)
            if isinstance(step, TLS):
                return _tls(step.sock, step.connector)
            if isinstance(step, UserCall):
                return self._user_call(step)
        raise TypeError(f"unknown attempt step {step!r}")

    def _user_call(self, step: UserCall) -> Any:
        # In the handle's user-code queue, so it never overlaps its other
        # callbacks; this greenlet waits for the result.
        result = gevent.event.AsyncResult()
        user = self._user()
        call = user.run(step.fn, step.args,
                              lambda value, exc: result.set_exception(exc) if exc is not None
                              else result.set(value), step.threaded)
        try:
            return result.get()
        except BaseException:
            user.abandon(call)
            raise

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._glet.kill(block=False)
            self._backend._dying.add(self._glet)


class _Connect:
    """The plain case's attempt (one address known without a lookup, no TLS,
    no user code: see the connector's ``_direct_address``) as two watchers
    on the hub, with no greenlet: the same calls as the attempt generator
    followed by ``Adopt``, through the connector's own methods, ending the
    same ways. Everything here runs in the hub."""

    __slots__ = ("_backend", "_connector", "_address", "_timeout", "_deliver", "_sock",
                 "_err", "_watchers")
    _err: int  # connect_ex's, set by begin()

    def __init__(self, backend: GeventBackend, connector: _SocketConnector, address: _Address,
                 timeout: float | None,
                 deliver: Callable[[Any, BaseException | None], None]) -> None:
        self._backend = backend
        self._connector = connector
        self._address = address
        self._timeout = timeout
        self._deliver = deliver
        self._sock: socket.socket | None = None  # until delivered or closed
        self._watchers: tuple[Any, ...] = ()      # the write watcher, and the deadline's timer

    def begin(self) -> None:
        """The backend's (``begin_connects``): open the socket and begin the
        connect, unless the attempt was cancelled since it started."""
        if self._deliver is delivered:
            return
        try:
            self._sock, self._err = self._connector._open_direct(self._address)
        except BaseException as exc:
            self._fail(exc)

    def watch(self) -> None:
        """The backend's, after :meth:`begin`: wait for the connect to end,
        or end the attempt if it already has."""
        if self._sock is None or self._deliver is delivered:
            return
        if self._err not in _IN_PROGRESS:
            self._ended(self._err)
            return
        sock = self._sock
        loop = self._backend._hub.loop
        writable = loop.io(sock.fileno(), 2)
        writable.start(guard, self._resume)
        if self._timeout is None:
            self._watchers = (writable,)
        else:
            deadline = loop.timer(self._timeout)
            deadline.start(guard, self._expire)
            self._watchers = (writable, deadline)

    def _resume(self) -> None:
        self._stop_watchers()
        sock = self._sock
        if sock is None:  # cancelled
            return
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException as exc:
            self._fail(exc)
            return
        self._ended(err)

    def _ended(self, err: int) -> None:
        sock = self._sock
        assert sock is not None
        try:
            self._connector._check_connected(sock, self._address[0], err)
            adopted = _to_gevent_socket(sock)
        except BaseException as exc:
            self._fail(exc)
            return
        self._sock = None
        deliver_once(self, adopted, None)

    def _expire(self) -> None:
        if self._sock is not None:
            self._fail(TimeoutError(f"timed out after {self._timeout:g}s"))

    def _fail(self, exc: BaseException) -> None:
        self._close()
        deliver_once(self, None, exc)

    def cancel(self) -> None:
        """Abandon the attempt; its socket is closed, ``deliver`` is not called."""
        self._deliver = delivered
        self._close()

    def _close(self) -> None:
        self._stop_watchers()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _stop_watchers(self) -> None:
        watchers, self._watchers = self._watchers, ()
        for w in watchers:
            w.stop()
            w.close()


class _IdleWatch:
    """A read watcher on an idle connection, stopped while it is leased.
    The watch itself is the watcher's callback: no bound method is made at
    each start, nor kept while it waits (one per idle connection)."""

    __slots__ = ("_callback", "_arg", "_watcher")

    def __init__(self, backend: GeventBackend, sock: socket.socket,
                 callback: Callable[[Any], None], arg: Any) -> None:
        self._callback = callback
        self._arg = arg
        self._watcher = backend._hub.loop.io(sock.fileno(), 1)
        self._watcher.start(self)

    def __call__(self) -> None:
        w = self._watcher
        if w is not None:
            w.stop()
            guard(self._callback, self._arg)

    def leased(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def released(self, now: float = 0.0) -> None:
        w = self._watcher
        if w is not None and not w.active:
            w.start(self)

    rearm = released

    def abandon(self) -> None:
        """After a fork: stop the watcher of the parent's descriptor."""
        self.close()

    def close(self) -> None:
        w, self._watcher = self._watcher, None
        if w is not None:
            w.stop()
            w.close()


class GeventBackend:
    """Backend running clients on the current thread's gevent hub.

    Its clients are used from greenlets of that hub's thread
    (``caller_thread``); a call from another OS thread raises."""

    name = "gevent"
    watch_follows_leases = True  # its watcher stops during a lease

    def event(self) -> Any:  # a gevent.event.Event (gevent ships no types)
        return gevent.event.Event()

    lock = staticmethod(_RealLock)
    thread_ident = staticmethod(_get_ident)  # the OS thread's, even when patched
    caller_id = staticmethod(gevent.getcurrent)

    def __init__(self) -> None:
        hub = gevent.get_hub()
        self._hub_ref = weakref.ref(hub)
        self.caller_thread = self._hub_thread = _get_ident()
        self.clock = GeventClock(hub, self._hub_thread)
        self._dying: weakref.WeakSet[Any] = weakref.WeakSet()  # greenlets killed, maybe not dead yet
        self._connects: list[_Connect] = []  # hub only: direct connects not yet begun

    def settle(self, timeout: float) -> None:
        """Wait (cooperatively, up to ``timeout``) for the greenlets we
        killed to be gone, so that ``close()`` leaves none behind."""
        if self.in_loop():
            return
        glets = [g for g in self._dying if not g.dead]
        self._dying = weakref.WeakSet()
        if glets:
            gevent.joinall(glets, timeout=timeout)

    @property
    def _hub(self) -> Any:
        return self._hub_ref()

    def describe_caller_error(self) -> str:
        return (f"this rcf_sync client uses the gevent hub of thread {self._hub_thread} "
                f"({self._hub!r}); it was called from thread {_get_ident()}: use it from "
                "greenlets of that thread, or give other threads a client with backend='thread'")

    def acquire(self) -> None:
        pass

    def release(self, timeout: float = 5.0) -> None:
        pass

    def in_loop(self) -> bool:
        return gevent.getcurrent() is self._hub

    def wake(self, event: Any) -> None:
        event.set()  # a waiting greenlet runs only when the hub gets to it anyway

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        if _get_ident() == self._hub_thread:
            self._hub.loop.run_callback(guard, fn, *args)
        else:
            self._hub.loop.run_callback_threadsafe(guard, fn, *args)

    def call_first(self, fn: Callable[..., object], *args: Any) -> None:
        self.call_soon(fn, *args)  # the hub runs callbacks in one turn: nothing to jump

    def call_later_real(self, seconds: float, fn: Callable[..., object],
                        *args: object) -> Any:
        return self.clock.callLater(seconds, fn, *args)

    def start_attempt(self, steps: Steps, timeout: float | None,
                      deliver: Callable[[Any, BaseException | None], None],
                      user_code: Callable[[], UserCode]) -> _Attempt:
        return _Attempt(self, steps, timeout, deliver, user_code)

    def connect_direct(self, connector: _SocketConnector, address: _Address,
                       timeout: float | None,
                       deliver: Callable[[Any, BaseException | None], None]) -> _Connect:
        """As :meth:`start_attempt` for the connector's own attempt followed
        by an ``Adopt``, when it has a direct address (no lookup, no TLS)
        and no user code runs: the same calls on two hub watchers, with no
        greenlet; ``deliver`` runs in the hub."""
        attempt = _Connect(self, connector, address, timeout, deliver)
        connects = self._connects
        connects.append(attempt)
        if len(connects) == 1:  # begun with the others of this turn of the hub
            self._hub.loop.run_callback(guard, self._begin_connects)
        return attempt

    def _begin_connects(self) -> None:
        connects, self._connects = self._connects, []
        begin_connects(connects)

    def run_blocking(self, fn: Callable[..., Any], args: tuple[Any, ...], deliver: Deliver,
                     threaded: bool = False) -> _Job:
        """Run ``fn(*args)`` in a new greenlet (with ``threaded``, code that
        may block its thread runs in gevent's thread pool unless sockets are
        patched); ``deliver(result, exc)`` in the hub's thread afterwards.
        Returns a job with ``abandon()``."""
        return _Job(self, fn, args, deliver, threaded)

    def watch_idle(self, sock: socket.socket, callback: Callable[[Any], None], arg: Any,
                   idle_since: Callable[[Any], float | None]) -> _IdleWatch:
        return _IdleWatch(self, sock, callback, arg)  # it follows leases instead

    def __repr__(self) -> str:
        return "<GeventBackend>"


class _Job:
    """User code in its own greenlet."""

    __slots__ = ("_glet", "_backend")

    def __init__(self, backend: GeventBackend, fn: Callable[..., Any], args: tuple[Any, ...],
                 deliver: Deliver, threaded: bool) -> None:
        self._backend = backend
        self._glet = gevent.spawn(self._run, backend, fn, args, deliver, threaded)

    @staticmethod
    def _run(backend: GeventBackend, fn: Callable[..., Any], args: tuple[Any, ...],
             deliver: Deliver, threaded: bool) -> None:
        try:
            result = _call_blocking(backend, fn, args) if threaded else fn(*args)
            exc = None
        except gevent.GreenletExit:
            return
        except BaseException as error:
            result, exc = None, error
        deliver(result, exc)

    def abandon(self) -> None:
        self._glet.kill(block=False)
        self._backend._dying.add(self._glet)


# One backend per hub, dropped with its hub (the backend holds the hub weakly).
_per_hub: weakref.WeakKeyDictionary[Any, GeventBackend] = weakref.WeakKeyDictionary()


def shared_backend() -> GeventBackend:
    """The :class:`GeventBackend` of the current thread's hub."""
    hub = gevent.get_hub()
    backend = _per_hub.get(hub)
    if backend is None:
        backend = _per_hub[hub] = GeventBackend()
    return backend

