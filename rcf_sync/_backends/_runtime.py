"""The thread backend's process-wide runtime and its lifetime.

One *loop thread* per process owns an ``epoll`` (or ``selectors``) poller,
a heap of real-time timers and a queue of callbacks posted from other
threads (woken through a socketpair); a :class:`WorkerPool` runs what must
block. The runtime is a lifetime object:

* :meth:`Runtime.acquire` counts a user and starts the loop if needed;
  :meth:`Runtime.release` lowers the count and, after the last user, waits
  for the loop to stop and stops the idle workers -- unless a new user came
  meanwhile (the count is re-checked after the wait, under the lock), in
  which case everything keeps running for it.
* After ``os.fork()`` the child's runtime forgets the parent's loop thread,
  workers and wake-up channel (closing its copies of their descriptors, never
  touching the poller the parent still uses) and builds new ones when it is
  next needed; the timers stay, so back-off schedules carry on.

Ownership: ``_users``, ``_releasing``, ``_thread``, ``_poller``,
``_wake_r``/``_wake_w`` under ``_cond`` (taken as its bare ``_lock`` where
nothing waits or notifies); ``_ready`` is a deque appended to by any thread
and consumed by the loop only; the poller's registrations belong to the loop thread (other
threads post to it), except :meth:`arm_now` which ``epoll`` makes safe from
any thread.
"""

from __future__ import annotations

import collections
import os
import select
import selectors
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .._timers import TimerQueue
from ._base import after_fork_in_child, begin_connects, guard
from ._workers import WorkerPool

if TYPE_CHECKING:
    from .._timers import DelayedCall
    from ._attempt import Deadlines
    from ._thread import ThreadClock, _Arming

__all__ = ["Runtime", "READ", "WRITE", "READ_WRITE", "IDLE", "MAX_WORKERS"]


#: Worker threads busy at once (name lookups, user code); idle ones exit.
MAX_WORKERS = 16
#: Threads of abandoned (hung) user code allowed besides those.
MAX_ABANDONED = 48
#: Seconds an idle worker waits for a job before it exits.
WORKER_IDLE_TIMEOUT = 10.0

READ, WRITE, IDLE = "readable", "writable", "idle"
READ_WRITE = "readable or writable"  # a protocol's socket with bytes to send

#: Callbacks the loop runs between two looks at its due timers.
_TIMER_CHECK_EVERY = 32

#: Descriptors the process's table is grown to hold (up to the soft limit)
#: before the loop thread starts: see :func:`_grow_descriptor_table`.
FD_TABLE = 4096


def _grow_descriptor_table(fd: int) -> None:
    """Make the kernel's descriptor table hold ``FD_TABLE`` descriptors now.

    Linux grows a process's table by doubling as descriptors are opened, and
    in a process with more than one thread each growth waits for an RCU grace
    period: milliseconds, tens on a virtual machine. The loop thread opening
    a thousand connections would stall five times (about 30 ms in all,
    measured). Grown once here, before the loop thread exists, a process
    that has no other thread pays nothing, and one that has pays once. The
    table (about 8 bytes a descriptor, kernel memory) never shrinks; the
    duplicate is closed at once."""
    try:
        import fcntl
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        top = FD_TABLE if soft == resource.RLIM_INFINITY else min(FD_TABLE, soft)
        # The lowest free descriptor >= top - 1: never one in use.
        spare = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top - 1)
    except (ImportError, AttributeError, OSError, ValueError):
        return  # not Linux-like, or no room: the table grows as it always did
    os.close(spare)


def _no_yield() -> None:  # pragma: no cover - platforms without sched_yield
    pass


_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", _no_yield)


class _Poller:
    """One-shot readiness notifications."""

    def __init__(self) -> None:
        # Every fd known to the epoll instance, with the callback it is armed
        # for (None: a one-shot that fired, still registered).
        self._callbacks: dict[int, Callable[[], None] | None] = {}
        self._epoll: Any
        self._selector: Any
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
            one = select.EPOLLONESHOT
            self._masks = {
                READ: select.EPOLLIN | one,
                WRITE: select.EPOLLOUT | one,
                READ_WRITE: select.EPOLLIN | select.EPOLLOUT | one,
                # Bytes nobody asked for, a FIN or an RST on an idle connection.
                IDLE: select.EPOLLIN | getattr(select, "EPOLLRDHUP", 0x2000) | one,
            }
        else:  # pragma: no cover - not Linux
            self._epoll = None
            self._selector = selectors.DefaultSelector()
            self._masks = {READ: selectors.EVENT_READ, WRITE: selectors.EVENT_WRITE,
                           READ_WRITE: selectors.EVENT_READ | selectors.EVENT_WRITE,
                           IDLE: selectors.EVENT_READ}

    def arm(self, fd: int, kind: str, callback: Callable[[], None]) -> None:
        mask = self._masks[kind]
        if self._epoll is not None:
            registered = fd in self._callbacks
            self._callbacks[fd] = callback
            if registered:  # a one-shot that fired: re-arm
                try:
                    self._epoll.modify(fd, mask)
                    return
                except FileNotFoundError:  # its socket was closed, the number reused
                    pass
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:  # registered by a socket we saw no close of
                self._epoll.modify(fd, mask)
        else:  # pragma: no cover
            self._callbacks[fd] = callback
            try:
                self._selector.modify(fd, mask)
            except KeyError:
                self._selector.register(fd, mask)

    def forget(self, fd: int) -> None:
        self._callbacks.pop(fd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        else:  # pragma: no cover
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def poll(self, timeout: float | None) -> list[Callable[[], None]]:
        """Wait up to ``timeout`` seconds; return the callbacks of ready fds
        (each disarmed)."""
        ready = []
        if self._epoll is not None:
            callbacks = self._callbacks
            for fd, _ in self._epoll.poll(-1 if timeout is None else timeout):
                cb = callbacks.get(fd)
                if cb is not None:
                    callbacks[fd] = None  # disarmed, still registered
                    ready.append(cb)
        else:  # pragma: no cover
            for key, _ in self._selector.select(timeout):
                cb = self._callbacks.pop(key.fd, None)
                try:
                    self._selector.unregister(key.fd)
                except (KeyError, ValueError):
                    pass
                if cb is not None:
                    ready.append(cb)
        return ready

    def close(self) -> None:
        (self._epoll or self._selector).close()


class Runtime:
    """The process-wide loop thread, its poller, timers and workers."""

    clock: ThreadClock
    arming: _Arming

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._users = 0
        self._releasing = 0  # release() calls waiting for the loop to stop
        self._thread: threading.Thread | None = None
        self._poller: _Poller | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._ready: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque())
        self._sleeping = False  # loop thread only (read racily by post())
        self._wakes: list[Any] = []  # loop thread only: events to set (wake_soon)
        self._wakes_due = 0.0  # loop thread only: when the oldest of _wakes is due
        self._wake_every = sys.getswitchinterval()
        self._connects: list[Any] = []  # loop thread only: connects to begin (connect_soon)
        self.timers = TimerQueue(time.monotonic, on_earlier=self.wake)
        # Attempt deadlines by timeout length (loop thread only; _attempt).
        self.deadlines: dict[float, Deadlines] = {}
        self.workers = WorkerPool(MAX_WORKERS, self.post, WORKER_IDLE_TIMEOUT,
                                  MAX_WORKERS + MAX_ABANDONED, schedule=self._later)
        after_fork_in_child(self._reset_in_child, first=True)

    # -- lifetime -----------------------------------------------------------

    def acquire(self) -> None:
        """Count a user; the loop runs from now on."""
        # Every client's start() comes here: the bare lock, and a notify
        # only for a release() that waits (it returns: a user came).
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._ensure_running_locked()
            if self._releasing:
                self._cond.notify_all()
        if self.workers.stopped:
            self.workers.resume()

    def release(self, timeout: float = 5.0) -> None:
        """Uncount a user. After the last one, wait (up to ``timeout``) for
        the loop to finish what is queued and stop, then stop idle workers,
        unless another user arrived meanwhile."""
        with self._cond:
            self._users -= 1
            if self._users > 0:
                return
            thread = self._thread
            self._wake_locked()
            if thread is not None and thread is not threading.current_thread():
                self._releasing += 1
                try:
                    self._cond.wait_for(lambda: self._thread is not thread or self._users > 0,
                                        timeout)
                finally:
                    self._releasing -= 1
            if self._users > 0:
                return
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.workers.stop(timeout)
        # A worker may have finished a job of an abandoned attempt after the
        # loop stopped: its delivery (which closes what the job made) runs
        # here rather than staying queued for a loop that may never come.
        with self._cond:
            leftovers = []
            if self._thread is None and self._users <= 0:
                leftovers = list(self._ready)
                self._ready.clear()
        for fn, args in leftovers:
            guard(fn, *args)

    def _ensure_running_locked(self) -> None:
        if self._thread is None:
            self._poller = _Poller()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            _grow_descriptor_table(self._wake_r.fileno())
            self._thread = threading.Thread(target=self._run, name="rcf_sync-loop", daemon=True)
            self._thread.start()

    def _reset_in_child(self) -> None:
        # After fork: no loop thread, no workers exist here. Close our copies
        # of the poller and wake-up pair without touching their registrations
        # (the epoll instance is shared with the parent until closed).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._releasing = 0
        closing: list[socket.socket | _Poller | None] = [self._wake_r, self._wake_w, self._poller]
        for obj in closing:
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass
        self._poller = None
        self._wake_r = self._wake_w = None
        self._thread = None
        self._ready = collections.deque()
        self._wakes = []
        self._connects = []  # the parent's, not begun: they hold no socket
        self.timers.reset_lock()
        self.workers.reset_after_fork()

    def threads(self) -> list[threading.Thread]:
        """The threads of ours alive now (for tests and benchmarks)."""
        out = [t for t in self.workers.threads if t.is_alive()]
        t = self._thread
        if t is not None and t.is_alive():
            out.append(t)
        return out

    # -- from any thread ----------------------------------------------------

    def post(self, fn: Callable[..., object], *args: Any, first: bool = False) -> None:
        """Run ``fn(*args)`` on the loop thread soon (``first``: before what
        is queued already). Never blocks."""
        ready = self._ready
        was_empty = not ready
        if first:
            ready.appendleft((fn, args))
        else:
            ready.append((fn, args))
        # The loop looks at the queue after it marks itself asleep, so only
        # the post that finds the queue empty has to wake it.
        if self._thread is None:
            with self._cond:
                self._ensure_running_locked()
        elif was_empty and self._sleeping:
            self.wake()

    def schedule(self, when: float, fn: Callable[..., object], args: tuple[Any, ...],
                 kw: dict[str, Any]) -> DelayedCall:
        """A timer on the loop at monotonic time ``when``."""
        call = self.timers.schedule(when, fn, args, kw)
        if self._thread is None:
            with self._cond:
                self._ensure_running_locked()
        return call

    def _later(self, delay: float, fn: Callable[[], None]) -> DelayedCall:
        return self.schedule(time.monotonic() + delay, fn, (), {})

    def wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except OSError:
                pass

    def _wake_locked(self) -> None:
        self.wake()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    # -- loop thread only -----------------------------------------------------

    def arm(self, sock: socket.socket, kind: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the loop once ``sock`` is ready for ``kind``."""
        assert self._poller is not None, "arm() outside the running loop"
        self._poller.arm(sock.fileno(), kind, callback)

    def forget(self, sock: socket.socket) -> None:
        poller = self._poller
        if poller is None:
            return
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd >= 0:
            poller.forget(fd)

    def _drain_wakeups(self) -> None:
        wake_r, poller = self._wake_r, self._poller
        assert wake_r is not None and poller is not None
        try:
            while wake_r.recv(4096):
                pass
        except OSError:
            pass
        poller.arm(wake_r.fileno(), READ, self._drain_wakeups)
        # Woken by a post, the loop often runs on the poster's CPU: on one
        # CPU the wake-up preempts the poster inside send(), with the
        # interpreter lock released, and the loop would take one post per
        # wake-up (a context switch pair each: 100 start() calls cost twice
        # what they do on two CPUs). Yielding once lets the poster finish
        # its burst; the loop takes the queue when the poster waits.
        _yield_cpu()

    def _run(self) -> None:
        poller, wake_r = self._poller, self._wake_r
        assert poller is not None and wake_r is not None
        poller.arm(wake_r.fileno(), READ, self._drain_wakeups)
        timers, ready = self.timers, self._ready
        while True:
            for i in range(len(ready)):
                fn, args = ready.popleft()
                guard(fn, *args)
                if i % _TIMER_CHECK_EVERY == _TIMER_CHECK_EVERY - 1:
                    self._run_due()
            self._run_due(True)
            if self._users <= 0:
                for deadlines in self.deadlines.values():
                    deadlines.drop_idle_timer()
            with self._cond:
                stop = self._users <= 0 and not ready and not len(timers)
                if stop:
                    self._stop_locked()
            if stop:
                # A post or timer that came while we decided to stop may
                # have seen this thread still set: start a new loop for it.
                if ready or len(timers):
                    with self._cond:
                        self._ensure_running_locked()
                return
            next_time = timers.next_time()
            timeout = None if next_time is None else max(0.0, next_time - time.monotonic())
            self._sleeping = True
            if ready:
                timeout = 0
            try:
                callbacks = poller.poll(timeout)
            finally:
                self._sleeping = False
            for i, cb in enumerate(callbacks):
                guard(cb)
                if i % _TIMER_CHECK_EVERY == _TIMER_CHECK_EVERY - 1:
                    self._run_due()
            # Not kept while the loop sleeps: they hold finished attempts.
            callbacks = cb = None  # type: ignore[assignment]

    def _run_due(self, pass_end: bool = False) -> None:
        # A burst of work (a thousand attempts) must not make every timer due
        # meanwhile late by the whole burst: they run between its slices.
        # The wake-ups gathered (wake_soon) are set at the end of each pass
        # over the ready work, and within a long one once the oldest has
        # waited the interpreter's switch interval: a waiting caller is then
        # no later than the interpreter lock would make it anyway, and a
        # caller waiting on a thousand clients in turn is not woken (taking
        # the lock from the loop and giving it back) every few of them.
        now = time.monotonic()
        for call in self.timers.pop_due(now):
            guard(call)
        if self._connects:
            self._begin_connects()
        if self._wakes and (pass_end or now >= self._wakes_due):
            self._set_wakes()

    def connect_soon(self, attempt: Any) -> None:
        """Loop: begin ``attempt`` (``begin()``, then ``watch()``) with the
        other connects started in this slice of the loop's work, once it
        ends (see ``_base.begin_connects``)."""
        self._connects.append(attempt)

    def _begin_connects(self) -> None:
        connects, self._connects = self._connects, []
        begin_connects(connects)

    def wake_soon(self, event: Any) -> None:
        """Set ``event`` now, or, on the loop, once the current pass over its
        work ends (or, in a long pass, once it has waited the interpreter's
        switch interval): a caller waiting on each of a thousand clients in
        turn is then woken a few times, not once per client (each wake-up
        takes the interpreter lock from the loop and gives it back)."""
        if self.in_loop():
            if not self._wakes:
                self._wakes_due = time.monotonic() + self._wake_every
            self._wakes.append(event)
        else:
            event.set()

    def _set_wakes(self) -> None:
        wakes = self._wakes
        if wakes:
            self._wakes = []
            for event in wakes:
                event.set()

    def _stop_locked(self) -> None:
        for obj in (self._poller, self._wake_r, self._wake_w):
            if obj is not None:
                obj.close()
        self._poller = None
        self._wake_r = self._wake_w = None
        self._thread = None
        self._cond.notify_all()

