"""What every backend provides, and the pieces backends share.

A backend hands a client every concurrency primitive it needs, so client code
never imports ``threading`` or ``gevent``:

``clock``
    its real ``IReactorTime`` clock (monotonic seconds).
``lock()``, ``event()``
    a mutual-exclusion lock and an event of the right kind.
``acquire()`` / ``release()``
    count a client using the backend; background machinery starts with the
    first and is stopped (and joined) after the last.
``call_soon(fn, *args)``
    run ``fn`` on the backend's loop; thread-safe, never blocks.
``start_attempt(steps, timeout, deliver)``
    drive a connection-attempt generator (see ``_connectors``); call
    ``deliver(sock, exc)`` on the loop when it ends; return a handle whose
    ``cancel()`` abandons it (closing any socket it made).
``watch_idle(sock, callback, arg, idle_since)``
    call ``callback(arg)`` on the loop when the peer may have closed or reset
    ``sock``, or sent bytes while it is idle; returns a handle with
    ``leased()``, ``released()`` (called only when the backend's
    ``watch_follows_leases`` is true; otherwise the watch reads
    ``idle_since(arg)``), ``rearm()``, ``abandon()`` and ``close()``.
``call_later_real(seconds, fn)``
    a timer in real time, for attempt deadlines, independent of the client's
    (possibly fake) back-off clock.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import sys
from typing import Any, Callable

__all__ = ["socket_is_patched", "original", "peer_gone", "log_negative_delay", "delivered",
           "deliver_once"]

log = logging.getLogger("rcf_sync")


def socket_is_patched() -> bool:
    """True when gevent has monkey-patched the ``socket`` module (looked up in
    ``sys.modules``, never by importing gevent)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def original(module: str, name: str) -> Any:
    """The standard library's ``module.name``, even under monkey-patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    return getattr(sys.modules.get(module) or __import__(module), name)


_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
_DEAD_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN}


_poll_found: list[Callable[[], Any] | None] = []


def _real_poll() -> Callable[[], Any] | None:
    """The standard library's ``select.poll`` (never gevent's), or None."""
    if not _poll_found:
        try:
            _poll_found.append(original("select", "poll"))
        except AttributeError:
            _poll_found.append(None)
    return _poll_found[0]


def peer_gone(sock: socket.socket) -> bool:
    """Without blocking, tell whether the peer of an idle ``sock`` has closed
    or reset it (True), or whether it is open, possibly with unread data
    (False)."""
    try:
        fd = sock.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    poll = _real_poll()
    if poll is not None and _POLLRDHUP:
        p = poll()
        p.register(fd, select.POLLIN | _POLLRDHUP)
        events = p.poll(0)
        if not events:
            return False
        mask = events[0][1]
        if mask & (_POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return True
        return False
    # Elsewhere: peek at the byte stream (not possible through TLS, which is
    # then taken as alive).
    if hasattr(sock, "context"):
        return False
    raw = original("socket", "socket")(fileno=socket.dup(fd))
    try:
        raw.setblocking(False)
        return bool(raw.recv(1, socket.MSG_PEEK) == b"")
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno in _DEAD_ERRNOS or exc.errno is None
    finally:
        raw.close()


def idle_status(sock: socket.socket) -> str:
    """Look, without blocking, at an idle ``sock`` nobody else is using:
    ``"closed"`` (peer closed or reset it), ``"data"`` (application bytes are
    waiting that nobody asked for) or ``"quiet"``. Through TLS, protocol
    records without data (session tickets) count as quiet; data is consumed
    (the connection is then discarded anyway)."""
    if peer_gone(sock):
        return "closed"
    try:
        old = sock.gettimeout()
        sock.settimeout(0.0)
    except OSError:
        return "closed"
    try:
        if hasattr(sock, "context"):  # TLS
            data = sock.recv(1)
        else:
            data = sock.recv(1, socket.MSG_PEEK)
        return "data" if data else "closed"
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return "quiet"
    except OSError:
        return "closed"
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def guard(fn: Callable[..., object], *args: Any) -> None:
    """Run a callback of the background: an exception it raises is logged,
    never allowed to end the loop that runs every client."""
    try:
        fn(*args)
    except Exception:
        log.exception("unexpected error in the rcf_sync background running %r", fn)


_warned_negative: list[bool] = []


def log_negative_delay(delay: float) -> None:
    """Log, once per process, that a negative delay was run as zero."""
    if not _warned_negative:
        _warned_negative.append(True)
        log.warning(
            "callLater(%r): a negative delay (Twisted's Gaussian jitter can produce "
            "one) runs at once; this is logged once", delay,
        )


# -- fork ---------------------------------------------------------------------

_fork_listeners: list[Callable[[], None]] = []  # run in a forked child, in order


def after_fork_in_child(fn: Callable[[], None], first: bool = False) -> None:
    """Run ``fn()`` in the child after every ``os.fork()`` (``first``: before
    the listeners registered so far). Listeners must be quick and must not
    start threads: a child that forks only to ``exec`` stays cheap."""
    if first:
        _fork_listeners.insert(0, fn)
    else:
        _fork_listeners.append(fn)


def _in_forked_child() -> None:
    for fn in list(_fork_listeners):
        try:
            fn()
        except Exception:  # a child must not die in an at-fork hook
            log.exception("rcf_sync: after-fork clean-up %r failed", fn)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)


def delivered(sock: object, exc: BaseException | None) -> None:
    """What a finished attempt holds instead of its ``deliver``: the handle's
    callback keeps the handle's record of the attempt, which keeps the
    attempt (a cycle per attempt otherwise)."""


def begin_connects(connects: list[Any]) -> None:
    """Begin each of ``connects`` (direct connects started in one turn of a
    backend's loop), one after the other, then let each wait for its end.

    A connect on loopback runs the handshake inside ``connect()`` and wakes
    the server. Begun back to back, the connects find the server still
    accepting the one before; spread out by each attempt's own work, they
    find it asleep each time, and waking it on another CPU can cost the
    connecting thread more than the connect itself (three times as much on
    the VM of ``benchmarks/RESULTS.md``)."""
    for attempt in connects:
        guard(attempt.begin)
    for attempt in connects:
        guard(attempt.watch)


def deliver_once(attempt: Any, sock: object, exc: BaseException | None) -> None:
    """Hand an ended attempt's outcome to its ``_deliver``, leaving no cycle
    to the garbage collector (a herd ends thousands a second; full
    collections then stall the loop for tens of ms): the attempt drops its
    callback (see :func:`delivered`), and a connect error of ours drops its
    traceback, whose frames hold the error. User exceptions keep theirs for
    the log."""
    deliver, attempt._deliver = attempt._deliver, delivered
    if isinstance(exc, OSError):
        exc.__traceback__ = None
    deliver(sock, exc)
