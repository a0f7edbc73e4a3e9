"""Skeletons of the lease's hot path, for the lease benchmarks
(``lease_floor.py`` times them, ``lease_instructions.py`` counts their
instructions): not the library, each written out inline, each a step on
the one before. Like the library's hot path they take no lock: the idle
list's pop and append are each one atomic step.

* ``skeleton``: only the idle list's pop and append;
* ``skeleton+checks``: plus the checks the library's hot path makes
  (doomed, closed, queued callers, the socket's timeout, the owner);
* ``skeleton+checks+gate``: plus the gate (the caller's identity and two
  clock reads): the cheapest lease that keeps every guarantee the library's
  lease keeps;
* ``... made by a method``: the same returned by ``handle.connection()``, as
  the public API is;
* ``... layered``: and its take and give in methods of the handle, as the
  library shares them with ``call()``;
* ``... as the library``: and the library's own checks beside the hot path:
  protocol mode and the timeout at ``connection()``, gevent's caller-thread
  check and idle-watch flag, the fall-back to the usual path, the guard
  against an ``__exit__`` without ``__enter__``, the owner check for a
  forked child, the queue's tickets read through it.

Each is built as the library builds its lease: ``object.__new__`` and a
store, with no ``__init__`` to run. The steps are written out whole: a
shared helper would add its own call to what is being measured.
"""

import socket
import threading
import time

IDLE, LEASED = object(), object()
_now = time.monotonic
_new = object.__new__
WINDOW = 10.0  # the gate's window: every lease here comes straight back


class Conn:
    __slots__ = ("owner", "doomed", "released_at", "holder", "sock", "session")


class Queue:
    __slots__ = ("tickets",)


class Handle:
    __slots__ = ("_idle", "_closed", "_tickets", "_caller_id", "_proto_mode",
                 "_caller_thread", "_tell_watch", "_leases")

    def connection(self):
        lease = _new(Gated)
        lease._h = self
        return lease

    def layered(self):
        lease = _new(Layered)
        lease._h = self
        return lease

    def _take(self):
        idle = self._idle
        if not idle:
            raise RuntimeError
        conn = idle.pop()
        conn.owner = LEASED
        if (conn.doomed is not None or self._closed or conn.holder != self._caller_id()
                or _now() - conn.released_at >= WINDOW):
            raise RuntimeError
        return conn

    def _give(self, conn):
        if conn.sock.gettimeout() is None and conn.owner is LEASED:
            conn.released_at = _now()
            conn.owner = IDLE
            self._idle.append(conn)
            if conn.doomed is not None or self._closed or self._tickets:
                raise RuntimeError


class Full:
    """The layered skeleton with the library's own checks (see the module
    docstring); what it lacks of the library is only the code behind them."""
    __slots__ = ("_h", "_timeout", "_c")

    def __enter__(self):
        h = self._h
        self._c = conn = h._take_full() or _usual(h)
        return conn.session

    def __exit__(self, a, b, c):
        conn = self._c
        del self._c
        if b is None and self._h._give_full(conn):
            return
        raise RuntimeError


def _usual(h):
    raise RuntimeError


def _full_lease(h, timeout=None):
    if h._proto_mode:
        raise RuntimeError
    lease = _new(Full)
    lease._h = h
    if timeout is not None:
        lease._timeout = float(timeout)
    return lease


def _take_full(h):
    idle = h._idle
    if not idle:
        return None
    if h._caller_thread is not None:
        raise RuntimeError
    try:
        conn = idle.pop()
    except IndexError:
        return None
    conn.owner = LEASED
    me = h._caller_id()
    if (conn.doomed is None and not h._closed and conn.holder == me
            and _now() - conn.released_at < WINDOW and not h._tell_watch):
        return conn
    raise RuntimeError


def _give_full(h, conn):
    sock = conn.sock
    if sock.gettimeout() is not None:
        raise RuntimeError
    if conn.owner is not LEASED:
        return False
    conn.released_at = _now()
    conn.owner = IDLE
    h._idle.append(conn)
    if conn.doomed is not None or h._closed or h._leases.tickets:
        raise RuntimeError
    elif h._tell_watch:
        raise RuntimeError
    return True


Handle.full = _full_lease
Handle._take_full = _take_full
Handle._give_full = _give_full


class Skeleton:
    """Only the idle list's pop and append."""
    __slots__ = ("_h", "_c")

    def __enter__(self):
        conn = self._c = self._h._idle.pop()
        return conn.session

    def __exit__(self, a, b, c):
        self._h._idle.append(self._c)


class Checked(Skeleton):
    """Plus the checks the library's hot path makes."""
    __slots__ = ()

    def __enter__(self):
        h = self._h
        idle = h._idle
        if not idle:
            raise RuntimeError
        conn = idle.pop()
        conn.owner = LEASED
        if conn.doomed is not None or h._closed:
            raise RuntimeError
        self._c = conn
        return conn.session

    def __exit__(self, a, b, c):
        conn = self._c
        h = self._h
        if b is None and conn.sock.gettimeout() is None and conn.owner is LEASED:
            conn.owner = IDLE
            h._idle.append(conn)
            if conn.doomed is not None or h._closed or h._tickets:
                raise RuntimeError


class Gated(Checked):
    """Plus the gate: the caller's identity, two clock reads."""
    __slots__ = ()

    def __enter__(self):
        h = self._h
        idle = h._idle
        if not idle:
            raise RuntimeError
        conn = idle.pop()
        conn.owner = LEASED
        if (conn.doomed is not None or h._closed or conn.holder != h._caller_id()
                or _now() - conn.released_at >= WINDOW):
            raise RuntimeError
        self._c = conn
        return conn.session

    def __exit__(self, a, b, c):
        conn = self._c
        h = self._h
        if b is None and conn.sock.gettimeout() is None and conn.owner is LEASED:
            conn.released_at = _now()
            conn.owner = IDLE
            h._idle.append(conn)
            if conn.doomed is not None or h._closed or h._tickets:
                raise RuntimeError


class Layered(Skeleton):
    """The gated skeleton, its take and give in methods of the handle."""
    __slots__ = ()

    def __enter__(self):
        self._c = conn = self._h._take()
        return conn.session

    def __exit__(self, a, b, c):
        if b is None:
            self._h._give(self._c)


def skeleton_handle():
    """A handle holding one idle connection (a real, unconnected socket)."""
    h = Handle()
    h._closed, h._tickets, h._caller_id = False, (), threading.get_ident
    h._proto_mode, h._caller_thread, h._tell_watch = False, None, False
    h._leases = Queue()
    h._leases.tickets = None
    c = Conn()
    c.owner, c.doomed, c.released_at, c.holder = IDLE, None, _now(), threading.get_ident()
    c.sock = socket.socket()
    c.session = c
    h._idle = [c]  # room for one, as the library's (see _handle._idle_list)
    return h


def _with_class(cls):
    def run(h, n):
        for _ in range(n):
            lease = _new(cls)
            lease._h = h
            with lease:
                pass
    return run


def _made_by_method(h, n):
    for _ in range(n):
        with h.connection():
            pass


def _layered(h, n):
    for _ in range(n):
        with h.layered():
            pass


def _as_the_library(h, n):
    for _ in range(n):
        with h.full():
            pass


#: case: (label, run(handle, n))
SKELETONS = {
    "skeleton": ("skeleton: idle-list pop and append", _with_class(Skeleton)),
    "skeleton+checks": ("skeleton + the hot path's checks", _with_class(Checked)),
    "skeleton+checks+gate": ("skeleton + checks + the gate", _with_class(Gated)),
    "skeleton+checks+gate, made by a method":
        ("the same, made by a method (handle.connection())", _made_by_method),
    "skeleton+checks+gate, layered":
        ("the same, take and give in methods of the handle", _layered),
    "skeleton+checks+gate, as the library":
        ("the same, with the library's own checks beside the hot path", _as_the_library),
}
