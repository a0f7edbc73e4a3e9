"""The thread backend's bounded worker pool: ``submit(fn, args, deliver)``.

Threads are started on demand, up to ``size`` busy at once, and an idle one
exits after ``idle_timeout`` seconds (or at :meth:`stop`). A job that finds
every thread busy waits: only if it has waited ``stall`` seconds (the busy
ones are blocked, not merely busy) is another thread started. So short jobs
-- most user code is a few microseconds of a factory method -- run one after
the other on one thread instead of a dozen threads taking the GIL from the
loop and from each other. ``deliver(result,
exc)`` is posted to the loop through ``post`` and must not block.

A job can be *abandoned* (its attempt timed out or was cancelled while user
code hangs in it): its thread then stops counting against ``size``, so hung
user code never starves the others, and exits as soon as the job returns;
what the job produced is given to ``deliver`` anyway, marked abandoned by the
caller, so that a late socket is closed. Threads of abandoned jobs are at
most ``hard_limit - size``; past that, new jobs wait for a thread.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

Deliver = Callable[[Any, "BaseException | None"], None]
Post = Callable[..., None]
Schedule = Callable[[float, Callable[[], None]], object]

__all__ = ["WorkerPool", "Job"]


class Job:
    """A submitted job; :meth:`abandon` frees its thread's slot."""

    __slots__ = ("fn", "args", "deliver", "abandoned", "retired", "queued_at", "_pool", "_worker")

    def __init__(self, pool: WorkerPool, fn: Callable[..., Any], args: tuple[Any, ...],
                 deliver: Deliver) -> None:
        self.fn, self.args, self.deliver = fn, args, deliver
        self.abandoned = False
        self.retired = False  # abandoned while it ran: its thread exits after it
        self.queued_at = time.monotonic()
        self._pool = pool
        self._worker: threading.Thread | None = None  # the thread running it (pool's lock)

    def abandon(self) -> None:
        """Stop waiting for this job: dropped if it has not started; if it
        runs, its thread leaves the pool's count. Thread-safe."""
        self._pool._abandon(self)


class WorkerPool:
    """At most ``size`` busy threads (plus abandoned ones up to
    ``hard_limit``), started on demand, reclaimed when idle."""

    def __init__(self, size: int, post: Post, idle_timeout: float = 10.0,
                 hard_limit: int | None = None, name: str = "rcf_sync-worker",
                 schedule: Schedule | None = None, stall: float = 0.01) -> None:
        self.size = size
        # ``schedule(delay, fn)`` runs fn later (the loop's timers); without
        # it, a thread is started at once for a job that finds all busy.
        self._schedule = schedule
        self._stall = stall
        self.hard_limit = hard_limit if hard_limit is not None else 4 * size
        self._post = post
        self._idle_timeout = idle_timeout
        self._name = name
        self._reset()

    def _reset(self) -> None:
        # Everything below is guarded by _cond (its lock).
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque[Job] = collections.deque()
        self._threads: set[threading.Thread] = set()  # every live worker thread
        self._busy: set[threading.Thread] = set()     # those running a job now
        self._counted = 0        # workers counting against size (not abandoned)
        self._idle = 0           # workers waiting for a job
        self._stop = False
        self._check_due = False  # a stall check is scheduled

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], deliver: Deliver) -> Job:
        """Queue ``fn(*args)``; return its :class:`Job`."""
        job = Job(self, fn, args, deliver)
        with self._cond:
            self._jobs.append(job)
            check = False
            if self._idle:
                self._cond.notify()
            elif self._counted < self.size and len(self._threads) < self.hard_limit:
                if self._counted == 0 or self._schedule is None:
                    self._spawn_locked()
                elif not self._check_due:
                    self._check_due = check = True
        if check:
            self._schedule(self._stall, self._check_stall)  # type: ignore[misc]
        return job

    def _check_stall(self) -> None:
        # The loop, ``stall`` after a job found every thread busy.
        again = False
        with self._cond:
            self._check_due = False
            if self._jobs and not self._idle:
                waited = time.monotonic() - self._jobs[0].queued_at
                if (waited >= self._stall and self._counted < self.size
                        and len(self._threads) < self.hard_limit):
                    self._spawn_locked()
                self._check_due = again = True
        if again:
            self._schedule(self._stall, self._check_stall)  # type: ignore[misc]

    def _spawn_locked(self) -> None:
        t = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._threads.add(t)
        self._counted += 1
        t.start()

    def _abandon(self, job: Job) -> None:
        with self._cond:
            if job.abandoned:
                return
            job.abandoned = True
            worker = job._worker
            if worker is None:
                try:
                    self._jobs.remove(job)
                except ValueError:
                    pass
                return
            if worker not in self._threads:
                return  # a thread of the parent (before a fork), or gone
            # The thread finishes this job on its own time and then exits.
            self._counted -= 1
            job.retired = True
            if self._jobs and not self._idle and len(self._threads) < self.hard_limit:
                self._spawn_locked()

    def _work(self) -> None:
        me = threading.current_thread()
        cond = self._cond
        while True:
            with cond:
                while not self._jobs:
                    if self._stop:
                        return self._exit_locked(me, counted=True)
                    self._idle += 1
                    woke = cond.wait(self._idle_timeout)
                    self._idle -= 1
                    if not woke and not self._jobs:
                        return self._exit_locked(me, counted=True)
                job = self._jobs.popleft()
                job._worker = me
                self._busy.add(me)
            try:
                result, exc = job.fn(*job.args), None
            except BaseException as error:  # delivered, not lost
                result, exc = None, error
            self._post(job.deliver, result, exc)
            with cond:
                self._busy.discard(me)
                retired = job.retired
                job._worker = None
                if retired:
                    return self._exit_locked(me, counted=False)

    def _exit_locked(self, me: threading.Thread, counted: bool) -> None:
        self._threads.discard(me)
        if counted:
            self._counted -= 1

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` ran since the last :meth:`resume` (read
        without the lock: a new user that races a stop ends as it did
        before, with workers that exit after their job)."""
        return self._stop

    def resume(self) -> None:
        """Workers stay when idle again (a new user after :meth:`stop`);
        until then, a job that comes gets a thread that exits after it."""
        with self._cond:
            self._stop = False

    def stop(self, timeout: float) -> None:
        """Make idle workers exit and join them for up to ``timeout``
        seconds. Threads busy in a job are not waited for (a user's code
        may block for long): each exits when its job returns, once no job is
        queued. Jobs still queued keep their place."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            threads = [t for t in self._threads if t not in self._busy]
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's workers do not exist here."""
        self._reset()

    @property
    def threads(self) -> list[threading.Thread]:
        """The live worker threads."""
        with self._cond:
            return list(self._threads)
