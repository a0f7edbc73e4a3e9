"""The thread backend: a few background threads shared by every client.

Theory of operation: one *loop thread* per process owns an ``epoll`` (or
``selectors``) poller, a heap of real-time timers and a queue of callbacks
posted from other threads (woken through a socketpair). Connection attempts
run on it as non-blocking steps (connect, TLS handshake), so a black-holed
address costs a registered descriptor and a timer, not a thread. Work that
must block (name resolution, user socket factories, ``on_connect`` hooks)
goes to a small *worker pool* whose results are posted back to the loop.
Idle connections stay registered for hang-up only (``EPOLLRDHUP``), so a
peer's FIN or RST wakes the loop while reply traffic never does.

All of it starts with the first client and is stopped and joined after the
last one releases it: threads in use are 1 loop + at most ``MAX_WORKERS``.
"""

import collections
import logging
import select
import selectors
import socket
import threading
import time

from .._timers import TimerQueue, check_delay
from ._base import log_negative_delay

__all__ = ["ThreadBackend", "ThreadClock", "get_runtime", "MAX_WORKERS"]

log = logging.getLogger("rcf_sync")

#: Upper bound of worker threads (name lookups, socket factories, hooks).
MAX_WORKERS = 4

_READ, _WRITE, _HANGUP = "readable", "writable", "hangup"


class ThreadClock:
    """The thread backend's real clock: ``IReactorTime`` on ``time.monotonic``.

    Calls run on the backend's loop thread. A negative delay runs at once
    (logged once). Thread-safe."""

    def __init__(self, runtime):
        self._runtime = runtime

    def seconds(self):
        """Monotonic seconds."""
        return time.monotonic()

    def callLater(self, delay, callable, *args, **kw):
        """Run ``callable(*args, **kw)`` on the loop thread after ``delay``
        seconds; return a cancellable delayed call."""
        delay = check_delay(delay)
        if delay < 0:
            log_negative_delay(delay)
            delay = 0.0
        return self._runtime.schedule(time.monotonic() + delay, callable, args, kw)

    def getDelayedCalls(self):
        """The pending calls, earliest first."""
        return self._runtime.timers.pending()


class _Poller:
    """One-shot readiness notifications, owned by the loop thread."""

    def __init__(self):
        self._callbacks = {}
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
            self._masks = {
                _READ: select.EPOLLIN | select.EPOLLONESHOT,
                _WRITE: select.EPOLLOUT | select.EPOLLONESHOT,
                _HANGUP: getattr(select, "EPOLLRDHUP", 0x2000) | select.EPOLLONESHOT,
            }
        else:
            self._epoll = None
            self._selector = selectors.DefaultSelector()
            self._masks = {_READ: selectors.EVENT_READ, _WRITE: selectors.EVENT_WRITE,
                           _HANGUP: selectors.EVENT_READ}

    def fileno(self):
        return self._epoll.fileno() if self._epoll else self._selector.fileno()

    def arm(self, fd, kind, callback):
        self._callbacks[fd] = callback
        mask = self._masks[kind]
        if self._epoll is not None:
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:
                self._epoll.modify(fd, mask)
        else:
            try:
                self._selector.modify(fd, mask)
            except KeyError:
                self._selector.register(fd, mask)

    def forget(self, fd):
        self._callbacks.pop(fd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        else:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def poll(self, timeout):
        """Wait up to ``timeout`` seconds; return the callbacks of ready fds
        (each disarmed)."""
        ready = []
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout)
            for fd, _ in events:
                cb = self._callbacks.pop(fd, None)
                if cb is not None:
                    ready.append(cb)
        else:
            for key, _ in self._selector.select(timeout):
                fd = key.fd
                cb = self._callbacks.pop(fd, None)
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
                if cb is not None:
                    ready.append(cb)
        return ready

    def close(self):
        if self._epoll is not None:
            self._epoll.close()
        else:
            self._selector.close()


class _WorkerPool:
    """At most ``size`` threads running blocking jobs; started on demand."""

    def __init__(self, size, post):
        self._size = size
        self._post = post
        self._jobs = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads = []
        self._idle = 0
        self._stopping = False

    def submit(self, fn, args, deliver):
        """Run ``fn(*args)`` on a worker; post ``deliver(result, exc)`` to the loop."""
        with self._cond:
            self._jobs.append((fn, args, deliver))
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self._size:
                t = threading.Thread(target=self._work, name="rcf_sync-worker", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self):
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._stopping and not self._jobs:
                    return
                fn, args, deliver = self._jobs.popleft()
            try:
                result = fn(*args)
            except BaseException as exc:  # delivered, not lost
                self._post(deliver, None, exc)
            else:
                self._post(deliver, result, None)

    def shutdown(self, timeout):
        """Stop the workers; join those that finish within ``timeout``.
        Jobs still queued are dropped; a worker stuck in a job is left to end
        on its own (it is a daemon and holds no lock of ours)."""
        with self._cond:
            self._stopping = True
            dropped = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = False
        return dropped

    @property
    def threads(self):
        return list(self._threads)


class _Runtime:
    """The process-wide loop thread, its poller, timers and worker pool."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._thread = None
        self._ready = collections.deque()
        self._sleeping = False
        self._poller = None
        self._wake_r = self._wake_w = None
        self.timers = TimerQueue(time.monotonic, on_earlier=self.wake)
        self.workers = _WorkerPool(MAX_WORKERS, self.post)
        self.clock = ThreadClock(self)

    # -- lifetime -----------------------------------------------------------

    def acquire(self):
        with self._lock:
            self._users += 1
            self._ensure_running()

    def release(self, timeout=5.0):
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            thread = self._thread
        self.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.workers.shutdown(timeout)
        # A worker may have finished a job of an abandoned attempt after the
        # loop stopped: its delivery (which closes what the job made) is run
        # here rather than left queued for a loop that may never come back.
        with self._lock:
            leftovers = []
            if self._thread is None and self._users <= 0:
                leftovers = list(self._ready)
                self._ready.clear()
        for fn, args in leftovers:
            self._guard(fn, *args)

    def _ensure_running(self):
        # Called with self._lock held.
        if self._thread is None:
            self._poller = _Poller()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._thread = threading.Thread(target=self._run, name="rcf_sync-loop", daemon=True)
            self._thread.start()

    def threads(self):
        """The threads of ours alive now (for tests and benchmarks)."""
        out = [t for t in self.workers.threads if t.is_alive()]
        t = self._thread
        if t is not None and t.is_alive():
            out.append(t)
        return out

    # -- cross-thread entry points ---------------------------------------------

    def post(self, fn, *args):
        """Run ``fn(*args)`` on the loop thread soon. Thread-safe."""
        ready = self._ready
        was_empty = not ready
        ready.append((fn, args))
        # The loop looks at the queue after it marks itself asleep, so only
        # the post that finds the queue empty has to wake it.
        if (was_empty and self._sleeping) or self._thread is None:
            self.wake()

    def schedule(self, when, fn, args, kw):
        call = self.timers.schedule(when, fn, args, kw)
        if self._thread is None or not self.in_loop():
            with self._lock:
                self._ensure_running()
        return call

    def wake(self):
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def in_loop(self):
        return threading.current_thread() is self._thread

    # -- loop-thread only ---------------------------------------------------

    def arm(self, sock, kind, callback):
        self._poller.arm(sock.fileno(), kind, callback)

    def forget(self, sock):
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd >= 0:
            self._poller.forget(fd)

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._poller.arm(self._wake_r.fileno(), _READ, self._drain_wakeups)

    def _run(self):
        self._poller.arm(self._wake_r.fileno(), _READ, self._drain_wakeups)
        while True:
            self._run_ready()
            for call in self.timers.pop_due(time.monotonic()):
                self._guard(call)
            with self._lock:
                if self._users <= 0 and not self._ready and not len(self.timers):
                    self._stop_locked()
                    return
            next_time = self.timers.next_time()
            timeout = None if next_time is None else max(0.0, next_time - time.monotonic())
            self._sleeping = True
            if self._ready:
                timeout = 0
            try:
                ready = self._poller.poll(timeout)
            finally:
                self._sleeping = False
            for cb in ready:
                self._guard(cb)

    def _run_ready(self):
        ready = self._ready
        for _ in range(len(ready)):
            fn, args = ready.popleft()
            self._guard(fn, *args)

    @staticmethod
    def _guard(fn, *args):
        try:
            fn(*args)
        except Exception:
            log.exception("unexpected error in the rcf_sync loop running %r", fn)

    def _stop_locked(self):
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()
        self._poller = None
        self._wake_r = self._wake_w = None
        self._thread = None


_runtime = _Runtime()


def get_runtime():
    """The process-wide thread runtime."""
    return _runtime


class _Attempt:
    """Drives one connection-attempt generator on the loop thread."""

    def __init__(self, runtime, steps, timeout, deliver):
        self._rt = runtime
        self._stack = [steps]
        self._deliver = deliver
        self._done = False
        self._waiting_on = None
        self._job = None
        self._deadline = None
        if timeout is not None:
            self._deadline = runtime.clock.callLater(timeout, self._expire, timeout)

    def start(self):
        self._step(None, None)

    def _step(self, value, exc):
        while not self._done:
            gen = self._stack[-1]
            try:
                request = gen.throw(exc) if exc is not None else gen.send(value)
            except StopIteration as stop:
                self._stack.pop()
                value, exc = stop.value, None
                if not self._stack:
                    return self._finish(value, None)
                continue
            except BaseException as error:
                self._stack.pop()
                value, exc = None, error
                if not self._stack:
                    return self._finish(None, error)
                continue
            value = exc = None
            kind = request[0]
            if kind in (_READ, _WRITE):
                sock = request[1]
                self._waiting_on = sock
                try:
                    self._rt.arm(sock, kind, self._ready)
                except OSError as error:
                    exc = error
                    continue
                return
            if kind == "adopt":
                value = request[1]
                try:
                    value.setblocking(True)
                except OSError as error:
                    value.close()
                    value, exc = None, error
                continue
            if kind == "tls":
                owner = request[2] if len(request) > 2 else None
                self._stack.append(owner._tls_handshake(request[1]))
                continue
            if kind == "resolve":
                host, port = request[1], request[2]
                self._job = object()
                job = self._job
                self._rt.workers.submit(
                    socket.getaddrinfo, (host, port, 0, socket.SOCK_STREAM),
                    lambda r, e: self._job_done(job, r, e),
                )
                return
            if kind in ("call", "hook"):
                self._job = object()
                job = self._job
                self._rt.workers.submit(request[1], request[2:], lambda r, e: self._job_done(job, r, e))
                return
            exc = RuntimeError(f"unknown attempt step {kind!r}")

    def _ready(self):
        self._waiting_on = None
        self._step(None, None)

    def _job_done(self, job, result, exc):
        if self._done or job is not self._job:
            _discard(result)
            return
        self._job = None
        self._step(result, exc)

    def _expire(self, timeout):
        if not self._done:
            self._abort(TimeoutError(f"timed out after {timeout:g}s"))

    def cancel(self):
        """Abandon the attempt; its sockets are closed, ``deliver`` is not called."""
        if not self._done:
            self._abort(None)

    def _abort(self, exc):
        if self._waiting_on is not None:
            self._rt.forget(self._waiting_on)
            self._waiting_on = None
        self._job = None
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

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _finish(self, sock, exc):
        self._done = True
        self._cancel_deadline()
        self._deliver(sock, exc)


def _discard(result):
    if isinstance(result, socket.socket):
        result.close()


class _IdleWatch:
    def __init__(self, runtime, sock, callback):
        self._rt = runtime
        self._sock = sock
        self._callback = callback
        self._closed = False
        self.idle_off = False  # True once it fired (a one-shot): resume() re-arms
        if runtime.in_loop():
            self._arm()
        else:
            runtime.post(self._arm)

    def _arm(self):
        if not self._closed:
            try:
                self._rt.arm(self._sock, _HANGUP, self._fire)
            except (OSError, ValueError):
                self._fire()

    def _fire(self):
        if not self._closed:
            self.idle_off = True
            self._callback()

    def pause(self):
        pass  # hang-up only: reply traffic during a lease never wakes the loop

    def resume(self):
        """Watch again if the watch fired (and was disarmed) meanwhile."""
        if self.idle_off and not self._closed:
            self.idle_off = False
            self._rt.post(self._arm)

    def close(self):
        """Stop watching (call before closing the socket)."""
        if not self._closed:
            self._closed = True
            if self._rt.in_loop():
                self._rt.forget(self._sock)
            else:
                self._rt.post(self._rt.forget, self._sock)


class ThreadBackend:
    """Backend running clients on the shared background threads."""

    name = "thread"
    watch_pauses = False  # idle watches wake on hang-up only, never on replies

    def __init__(self):
        self._rt = get_runtime()
        self.clock = self._rt.clock

    lock = staticmethod(threading.Lock)
    event = staticmethod(threading.Event)

    def acquire(self):
        self._rt.acquire()

    def release(self, timeout=5.0):
        self._rt.release(timeout)

    def call_soon(self, fn, *args):
        self._rt.post(fn, *args)

    def in_loop(self):
        return self._rt.in_loop()

    def call_later_real(self, seconds, fn, *args):
        return self.clock.callLater(seconds, fn, *args)

    def start_attempt(self, steps, timeout, deliver):
        attempt = _Attempt(self._rt, steps, timeout, deliver)
        attempt.start()
        return attempt

    def watch_idle(self, sock, callback):
        return _IdleWatch(self._rt, sock, callback)

    def run_callback(self, fn, *args):
        """Run a user callback (on the loop thread: it must not block)."""
        self._rt._guard(fn, *args)

    def threads(self):
        return self._rt.threads()

    def __repr__(self):
        return "<ThreadBackend>"


_shared = []


def shared_backend():
    """The process's one :class:`ThreadBackend` (it holds no per-client state)."""
    if not _shared:
        _shared.append(ThreadBackend())
    return _shared[0]

