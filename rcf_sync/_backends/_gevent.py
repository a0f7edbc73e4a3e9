"""The gevent backend: greenlets and the hub's own timers and watchers.

Imported only when a client asks for it. Connection attempts run in a
greenlet that drives the shared attempt generator with gevent's cooperative
waits; idle connections are watched by a read watcher on the hub, stopped
while a caller holds the lease. Nothing here blocks the hub: timer and
watcher callbacks only schedule or hand over work.

Works with and without ``gevent.monkey.patch_all()``. Without patching, a
user's socket factory runs in gevent's thread pool (it may block) and the
plain socket it returns is turned into a gevent socket; the sockets handed to
callers are always gevent sockets. Clients of this backend are used from
greenlets of the thread whose hub they were created in.
"""

import logging
import socket
import time

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

from .._errors import AlreadyCalled, AlreadyCancelled
from .._timers import check_delay
from ._base import log_negative_delay, original, socket_is_patched

__all__ = ["GeventBackend", "GeventClock"]

log = logging.getLogger("rcf_sync")

_get_ident = original("_thread", "get_ident")
_RealLock = original("_thread", "allocate_lock")


def _guard(fn, *args):
    try:
        fn(*args)
    except Exception:
        log.exception("unexpected error in rcf_sync running %r", fn)


class _GeventCall:
    """An ``IDelayedCall`` on a libev/libuv timer of the hub."""

    __slots__ = ("_clock", "_timer", "_time", "func", "args", "kw", "called", "cancelled")

    def __init__(self, clock, when, func, args, kw):
        self._clock = clock
        self._time = when
        self.func, self.args, self.kw = func, args, kw
        self.called = self.cancelled = 0
        self._timer = None
        clock._pending.add(self)
        clock._in_hub(self._start)

    def _start(self):
        if not self.active():
            return
        loop = self._clock._hub.loop
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        loop.update_now()
        self._timer = loop.timer(max(0.0, self._time - time.monotonic()))
        self._timer.start(self._fire)

    def _fire(self):
        if not self.active():
            return
        if self._time > time.monotonic() + 0.0005:  # the loop's time is coarse
            return self._start()
        self.called = 1
        self._release()
        func, args, kw = self.func, self.args, self.kw
        self.func = self.args = self.kw = None
        _guard(lambda: func(*args, **kw))

    def _release(self):
        self._clock._pending.discard(self)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _check(self):
        if self.cancelled:
            raise AlreadyCancelled("this call was already cancelled")
        if self.called:
            raise AlreadyCalled("this call has already run")

    def getTime(self):
        return self._time

    def active(self):
        return not (self.called or self.cancelled)

    def cancel(self):
        self._check()
        self.cancelled = 1
        self.func = self.args = self.kw = None
        self._clock._pending.discard(self)
        self._clock._in_hub(self._release)

    def reset(self, secondsFromNow):
        self._check()
        self._time = time.monotonic() + check_delay(secondsFromNow, "secondsFromNow")
        self._clock._in_hub(self._start)

    def delay(self, secondsLater):
        self._check()
        self._time += check_delay(secondsLater, "secondsLater")
        self._clock._in_hub(self._start)


class GeventClock:
    """The gevent backend's real clock: ``IReactorTime`` on the hub's timers.

    Calls run in the hub (they must not block). A negative delay runs at once
    (logged once). Safe to call from other threads."""

    def __init__(self, hub, hub_thread):
        self._hub = hub
        self._hub_thread = hub_thread
        self._pending = set()

    def _in_hub(self, fn, *args):
        if _get_ident() == self._hub_thread:
            fn(*args)
        else:
            self._hub.loop.run_callback_threadsafe(fn, *args)

    def seconds(self):
        """Monotonic seconds."""
        return time.monotonic()

    def callLater(self, delay, callable, *args, **kw):
        """Run ``callable(*args, **kw)`` in the hub after ``delay`` seconds."""
        delay = check_delay(delay)
        if delay < 0:
            log_negative_delay(delay)
            delay = 0.0
        return _GeventCall(self, time.monotonic() + delay, callable, args, kw)

    def getDelayedCalls(self):
        """The pending calls, earliest first."""
        return sorted((c for c in self._pending if c.active()), key=lambda c: c._time)


def _capture(fn, args):
    try:
        return True, fn(*args)
    except BaseException as exc:
        return False, exc


def _close_late_result(pending):
    ok, value = pending.get()
    if ok and hasattr(value, "close"):
        value.close()


def _to_gevent_socket(sock):
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


def _tls(raw, connector):
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


class _Attempt:
    """Drives one connection-attempt generator in a greenlet.

    The attempt's deadline is applied per wait (a socket wait gets the time
    left as its timeout), so the usual connect costs no extra timer; steps
    that are not socket waits run under a ``gevent.Timeout`` for the time left.
    """

    def __init__(self, backend, steps, timeout, deliver):
        self._backend = backend
        self._deliver = deliver
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = False
        self._glet = gevent.spawn(self._run, steps)

    def _run(self, steps):
        try:
            sock = self._trampoline(steps)
        except gevent.GreenletExit:
            return
        except BaseException as exc:
            if isinstance(exc, _GTimeout):
                exc = self._timed_out()
            if not self._cancelled:
                self._deliver(None, exc)
            return
        if self._cancelled:
            sock.close()
        else:
            self._deliver(sock, None)

    def _timed_out(self):
        return TimeoutError(f"timed out after {self._timeout:g}s")

    def _left(self):
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        return left

    def _trampoline(self, gen):
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

    def _perform(self, request):
        kind = request[0]
        if kind == "writable":
            return gevent.socket.wait_write(request[1].fileno(), timeout=self._left(),
                                            timeout_exc=self._timed_out())
        if kind == "readable":
            return gevent.socket.wait_read(request[1].fileno(), timeout=self._left(),
                                           timeout_exc=self._timed_out())
        if kind == "adopt":
            return _to_gevent_socket(request[1])
        with _GTimeout(self._left()):
            if kind == "resolve":
                return gevent.socket.getaddrinfo(request[1], request[2], 0, socket.SOCK_STREAM)
            if kind == "tls":
                return _tls(request[1], request[2])
            if kind == "call":
                return self._call_blocking(request[1], request[2:])
            if kind == "hook":
                return request[1](*request[2:])
        raise RuntimeError(f"unknown attempt step {kind!r}")

    def _call_blocking(self, fn, args):
        if socket_is_patched():
            return fn(*args)
        # The pool would print what the call raises: bring it back as a value.
        pending = self._backend._hub.threadpool.spawn(_capture, fn, args)
        try:
            ok, value = pending.get()
        except BaseException:
            # Abandoned (cancelled, timed out): close what arrives later.
            pending.rawlink(_close_late_result)
            raise
        if not ok:
            raise value
        return value

    def cancel(self):
        if not self._cancelled:
            self._cancelled = True
            self._glet.kill(block=False)


class _IdleWatch:
    def __init__(self, backend, sock, callback):
        self._backend = backend
        self._callback = callback
        self._watcher = backend._hub.loop.io(sock.fileno(), 1)
        self._watcher.start(self._fire)
        self.idle_off = False  # True while stopped: resume() restarts it

    def _fire(self):
        w = self._watcher
        if w is not None:
            w.stop()
            self.idle_off = True
            _guard(self._callback)

    def pause(self):
        if self._watcher is not None:
            self._watcher.stop()
            self.idle_off = True

    def resume(self):
        w = self._watcher
        if w is not None and not w.active:
            w.start(self._fire)
        self.idle_off = False

    def close(self):
        w, self._watcher = self._watcher, None
        if w is not None:
            w.stop()
            w.close()


class GeventBackend:
    """Backend running clients on the current thread's gevent hub."""

    name = "gevent"
    watch_pauses = True  # a read watcher: stopped while a caller holds the socket
    event = staticmethod(gevent.event.Event)
    lock = staticmethod(_RealLock)

    def __init__(self):
        self._hub = gevent.get_hub()
        self._hub_thread = _get_ident()
        self.clock = GeventClock(self._hub, self._hub_thread)

    def acquire(self):
        pass

    def release(self, timeout=5.0):
        pass

    def in_loop(self):
        return gevent.getcurrent() is self._hub

    def call_soon(self, fn, *args):
        if _get_ident() == self._hub_thread:
            self._hub.loop.run_callback(_guard, fn, *args)
        else:
            self._hub.loop.run_callback_threadsafe(_guard, fn, *args)

    def call_later_real(self, seconds, fn, *args):
        return self.clock.callLater(seconds, fn, *args)

    def start_attempt(self, steps, timeout, deliver):
        return _Attempt(self, steps, timeout, deliver)

    def watch_idle(self, sock, callback):
        return _IdleWatch(self, sock, callback)

    def run_callback(self, fn, *args):
        """Run a user callback where it may block: in a new greenlet."""
        gevent.spawn(_guard, fn, *args)

    def __repr__(self):
        return "<GeventBackend>"


_per_hub = {}


def shared_backend():
    """The :class:`GeventBackend` of the current thread's hub (one per hub,
    dropped when that hub is destroyed)."""
    hub = gevent.get_hub()
    backend = _per_hub.get(id(hub))
    if backend is None or backend._hub is not hub:
        backend = GeventBackend()
        _per_hub[id(hub)] = backend
    return backend

