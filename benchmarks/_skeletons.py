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
  library shares them with ``call()``.

The steps are written out whole: a shared helper would add its own call to
what is being measured.
"""

import socket
import threading
import time

IDLE, LEASED = object(), object()
_now = time.monotonic
WINDOW = 10.0  # the gate's window: every lease here comes straight back


class Conn:
    __slots__ = ("owner", "doomed", "released_at", "holder", "sock", "session")


class Handle:
    __slots__ = ("_idle", "_lock", "_closed", "_tickets", "_caller_id")

    def connection(self):
        return Gated(self)

    def layered(self):
        return Layered(self)

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


class Skeleton:
    """Only the idle list's pop and append."""
    __slots__ = ("_h", "_c")

    def __init__(self, h):
        self._h = h

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


def skeleton_handle(lock=None):
    """A handle holding one idle connection (a real, unconnected socket)."""
    h = Handle()
    h._lock = lock or threading.Lock()
    h._closed, h._tickets, h._caller_id = False, (), threading.get_ident
    c = Conn()
    c.owner, c.doomed, c.released_at, c.holder = IDLE, None, _now(), threading.get_ident()
    c.sock = socket.socket()
    c.session = c
    h._idle = [c]
    return h


def _with_class(cls):
    def run(h, n):
        for _ in range(n):
            with cls(h):
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


#: case: (label, run(handle, n))
SKELETONS = {
    "skeleton": ("skeleton: idle-list pop and append", _with_class(Skeleton)),
    "skeleton+checks": ("skeleton + the hot path's checks", _with_class(Checked)),
    "skeleton+checks+gate": ("skeleton + checks + the gate", _with_class(Gated)),
    "skeleton+checks+gate, made by a method":
        ("the same, made by a method (handle.connection())", _made_by_method),
    "skeleton+checks+gate, layered":
        ("the same, take and give in methods of the handle", _layered),
}
