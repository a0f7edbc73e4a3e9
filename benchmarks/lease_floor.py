"""The lease against the interpreter's floor, in one process and one run.

Part 1, no I/O (thread backend, caller CPU ``time.thread_time()`` and wall
``time.perf_counter()``, interleaved blocks, medians):

* ``with lock:`` on a bare ``threading.Lock``;
* a minimal class-based context manager that takes and releases one lock,
  built for each use (``with Minimal(lock, value):``, what
  ``client.connection()`` must do at least: it also returns a new object per
  use) and reused (one instance entered again and again);
* ``with client.connection(): pass`` and ``client.call(noop)``;
* the same lease with single steps replaced in this process only (never in
  ``rcf_sync/``), to price each: the lease-time check (``lease_check``) made
  a no-op, or gated (skipped when the connection was released less than
  ``--window`` seconds ago: the idle watch already stamps the release time),
  the entry check (``_enter``), the idle watch's ``released()``, and a
  *flattened* lease: the same work on the usual path (one lock block to
  take, the check, ``gettimeout()``, one lock block to give back, the idle
  watch) written as one context manager with no method layers, to show what
  the layers cost; and a model (not the library) where the exclusive use of
  the connection is a lock of its own, taken without blocking at lease and
  released at its end, with the gated check.

Part 2, a 64-byte echo round trip against the select echo server of
``_common.py`` (another process): a raw blocking socket, ``client.call()``,
the ``connection()`` lease, and ``call()`` with the check off, interleaved
blocks; wall and caller CPU, medians of per-block ratios to raw.

    python benchmarks/lease_floor.py            # about 60 s
    python benchmarks/lease_floor.py --quick    # about 15 s
"""

import argparse
import gc
import select
import socket
import threading
import time

import _common as C
from _common import roundtrip


class Minimal:
    """The floor: a context manager that takes and releases one lock."""

    __slots__ = ("_lock", "_value")

    def __init__(self, lock, value):
        self._lock = lock
        self._value = value

    def __enter__(self):
        self._lock.acquire()
        return self._value

    def __exit__(self, exc_type, exc, tb):
        self._lock.release()
        return False


def measure(fn, n):
    gc.collect()
    c0 = time.thread_time()
    w0 = time.perf_counter()
    fn(n)
    w1 = time.perf_counter()
    c1 = time.thread_time()
    return (w1 - w0) / n, (c1 - c0) / n


def interleave(cases, blocks, n):
    for _name, fn in cases:
        fn(max(100, n // 10))
    out = {name: [] for name, _ in cases}
    for b in range(blocks):
        k = len(cases)
        for i in range(k):
            name, fn = cases[(b + i) % k]
            out[name].append(measure(fn, n))
    return out


# -- part 1 -----------------------------------------------------------------------

def flattened_lease(client):
    """The usual path of ``client.connection()`` as one context manager,
    same work, no method layers (for pricing the layers only)."""
    from rcf_sync import _leasing
    from rcf_sync._connection import Owner

    IDLE, LEASED = Owner.IDLE, Owner.LEASED
    lock = client._lock
    leases = client._leases

    class Flat:
        __slots__ = ("_conn",)

        def __enter__(self):
            with lock:
                conn = client._conn
                if leases or conn is None or conn.owner is not IDLE:
                    raise RuntimeError("slow path not modelled")
                conn.owner = LEASED
            if _leasing.lease_check(conn) is not None:
                raise RuntimeError("slow path not modelled")
            self._conn = conn
            return conn.session

        def __exit__(self, exc_type, exc, tb):
            conn = self._conn
            if exc_type is None:
                sock = conn.sock
                if sock.gettimeout() is not None:
                    sock.settimeout(None)
                with lock:
                    if conn.doomed is None and conn.owner is LEASED and not leases:
                        conn.owner = IDLE
                        watch = conn.watch
                    else:
                        raise RuntimeError("slow path not modelled")
                if watch is not None:
                    watch.released()
                return False
            return client._release(conn, exc)

    return Flat


def ownership_lock_lease(client, window):
    """A model (not the library): the exclusive use of a connection as a lock
    of its own, taken without blocking by the lease and given back at its
    end; the check gated on the release time. What a lease costs when the
    usual path is one non-blocking acquire and one release."""
    conn = client._conn
    held = threading.Lock()
    stamp = [time.monotonic()]
    leases = client._leases
    real_check = __import__("rcf_sync._connection", fromlist=["lease_check"]).lease_check

    class OwnLease:
        __slots__ = ("_conn",)

        def __enter__(self, _mono=time.monotonic):
            c = conn
            if not held.acquire(False):
                raise RuntimeError("slow path not modelled")
            if c.doomed is not None or leases:
                held.release()
                raise RuntimeError("slow path not modelled")
            if _mono() - stamp[0] >= window and real_check(c) is not None:
                held.release()
                raise RuntimeError("slow path not modelled")
            self._conn = c
            return c.session

        def __exit__(self, exc_type, exc, tb, _mono=time.monotonic):
            c = self._conn
            if exc_type is None and c.sock.gettimeout() is None:
                stamp[0] = _mono()
                held.release()
                if leases:
                    raise RuntimeError("slow path not modelled")
                return False
            held.release()
            return False

    return OwnLease


def part1(client, blocks, n, window):
    from rcf_sync import _handle, _leasing
    from rcf_sync._backends import _thread

    lock = threading.Lock()
    value = object()
    shared = Minimal(lock, value)
    sock = client.wait_connected(timeout=10)
    conn = client._conn
    real_check = _leasing.lease_check
    real_released = _thread._IdleWatch.released
    Flat = flattened_lease(client)
    OwnLease = ownership_lock_lease(client, window)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)

    def noop(s):
        return s

    def empty(n):
        for _ in range(n):
            pass

    def bare_lock(n):
        for _ in range(n):
            with lock:
                pass

    def minimal_new(n):
        for _ in range(n):
            with Minimal(lock, value):
                pass

    def minimal_reused(n):
        for _ in range(n):
            with shared:
                pass

    def minimal_call(n):
        # call(fn)'s floor: a function taking the lock, calling fn, releasing
        for _ in range(n):
            with Minimal(lock, value) as v:
                noop(v)

    def lease(n):
        for _ in range(n):
            with client.connection():
                pass

    def call(n):
        for _ in range(n):
            client.call(noop)

    def with_patch(fn, patch, unpatch):
        def run(n):
            patch()
            try:
                fn(n)
            finally:
                unpatch()
        return run

    def check_off():
        _leasing.lease_check = lambda conn: None

    def check_gated():
        def gated(conn, _mono=time.monotonic, _real=real_check):
            watch = conn.watch
            if watch is not None and _mono() - watch._since < window:
                return None
            return _real(conn)
        _leasing.lease_check = gated

    def check_back():
        _leasing.lease_check = real_check

    real_enter = _handle.Handle._enter

    def enter_off():
        _handle.Handle._enter = lambda self: None

    def enter_back():
        _handle.Handle._enter = real_enter

    def released_off():
        _thread._IdleWatch.released = lambda self: None

    def released_back():
        _thread._IdleWatch.released = real_released

    def flat(n):
        for _ in range(n):
            with Flat():
                pass

    def own(n):
        for _ in range(n):
            with OwnLease():
                pass

    def poll0(n):
        p = poller.poll
        for _ in range(n):
            p(0)

    def sockopt(option, size):
        get = sock.getsockopt

        def run(n):
            for _ in range(n):
                get(socket.SOL_SOCKET, option, size) if size else get(socket.SOL_SOCKET, option)
        return run

    def lease_check_only(n):
        for _ in range(n):
            real_check(conn)

    def gettimeout(n):
        for _ in range(n):
            sock.gettimeout()

    def monotonic(n):
        m = time.monotonic
        for _ in range(n):
            m()

    cases = [
        ("empty loop", empty),
        ("with lock: (bare threading.Lock)", bare_lock),
        ("with Minimal(lock): (floor, new object per use)", minimal_new),
        ("with minimal: (one instance reused)", minimal_reused),
        ("with Minimal(lock) as v: noop(v) (floor of call)", minimal_call),
        ("with client.connection(): pass", lease),
        ("client.call(noop)", call),
        ("lease, lease_check a no-op", with_patch(lease, check_off, check_back)),
        ("call, lease_check a no-op", with_patch(call, check_off, check_back)),
        (f"lease, check skipped if released < {window * 1e3:g} ms ago",
         with_patch(lease, check_gated, check_back)),
        (f"call, check skipped if released < {window * 1e3:g} ms ago",
         with_patch(call, check_gated, check_back)),
        ("lease, _enter a no-op", with_patch(lease, enter_off, enter_back)),
        ("lease, idle watch released() a no-op", with_patch(lease, released_off, released_back)),
        ("lease flattened (same work, no layers)", flat),
        ("lease flattened, check a no-op", with_patch(flat, check_off, check_back)),
        (f"model: ownership lock per connection, check gated at {window * 1e3:g} ms", own),
        ("poll.poll(0) alone", poll0),
        # The cheapest other kernel queries that could tell unread bytes or a
        # FIN (none releases the interpreter lock, unlike poll()):
        ("getsockopt(SO_ERROR) alone", sockopt(socket.SO_ERROR, 0)),
        ("getsockopt(SO_MEMINFO, 4) alone (receive-queue bytes)",
         sockopt(getattr(socket, "SO_MEMINFO", 55), 4)),
        ("lease_check(conn) alone", lease_check_only),
        ("sock.gettimeout() alone", gettimeout),
        ("time.monotonic() alone", monotonic),
    ]
    res = interleave(cases, blocks, n)
    med = {name: (C.median([x[0] for x in v]), C.median([x[1] for x in v]))
           for name, v in res.items()}
    base = med["empty loop"][1]
    floor = med["with Minimal(lock): (floor, new object per use)"][1] - base
    floor_call = med["with Minimal(lock) as v: noop(v) (floor of call)"][1] - base
    rows = []
    for name, _ in cases:
        wall, cpu = med[name]
        net = cpu - base
        ratio = ""
        if name.startswith(("with client.connection", "lease", "model")) and "alone" not in name:
            ratio = f"{net / floor:.2f}x"
        elif name.startswith(("client.call", "call")):
            ratio = f"{net / floor:.2f}x / {net / floor_call:.2f}x"
        elif name.startswith("with") or name.endswith("alone") or "alone (" in name:
            ratio = f"{net / floor:.2f}x"
        rows.append([name, f"{wall * 1e9:.0f}", f"{cpu * 1e9:.0f}", f"{net * 1e9:.0f}", ratio])
    return med, base, rows


# -- part 2 -----------------------------------------------------------------------

def part2(address, blocks, n):
    from rcf_sync import ReconnectingClient, _leasing

    raw = socket.create_connection(address)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c_call = ReconnectingClient(address, backend="thread").start()
    c_lease = ReconnectingClient(address, backend="thread").start()
    c_call.wait_connected(timeout=10)
    c_lease.wait_connected(timeout=10)
    real_check = _leasing.lease_check

    def run_raw(n):
        for _ in range(n):
            roundtrip(raw)

    def run_call(n):
        for _ in range(n):
            c_call.call(roundtrip)

    def run_lease(n):
        for _ in range(n):
            with c_lease.connection() as s:
                roundtrip(s)

    def run_call_nocheck(n):
        _leasing.lease_check = lambda conn: None
        try:
            for _ in range(n):
                c_call.call(roundtrip)
        finally:
            _leasing.lease_check = real_check

    cases = [("raw socket", run_raw), ("client.call()", run_call),
             ("connection() lease", run_lease), ("call(), lease_check a no-op", run_call_nocheck)]
    try:
        res = interleave(cases, blocks, n)
    finally:
        raw.close()
        c_call.close()
        c_lease.close()
    rawb = res["raw socket"]
    rows = []
    out = {}
    for name, _ in cases:
        v = res[name]
        rw = C.median([b[0] / r[0] for b, r in zip(v, rawb)])
        rc = C.median([b[1] / r[1] for b, r in zip(v, rawb) if r[1] > 0])
        dw = C.median([b[0] - r[0] for b, r in zip(v, rawb)])
        dc = C.median([b[1] - r[1] for b, r in zip(v, rawb)])
        out[name] = (rw, rc)
        rows.append([name, f"{C.median([b[0] for b in v]) * 1e6:.2f}", f"{dw * 1e6:+.2f}",
                     f"{rw:.3f} [{C.percentile([b[0] / r[0] for b, r in zip(v, rawb)], 25):.3f}-"
                     f"{C.percentile([b[0] / r[0] for b, r in zip(v, rawb)], 75):.3f}]",
                     f"{C.median([b[1] for b in v]) * 1e6:.2f}", f"{dc * 1e6:+.2f}", f"{rc:.3f}"])
    return out, rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--window", type=float, default=0.001,
                   help="gated check: skip it when released less than this many seconds ago")
    args = p.parse_args()
    C.watchdog(900)
    blocks1, n1 = (7, 20000) if args.quick else (15, 50000)
    blocks2, n2 = (7, 2000) if args.quick else (21, 5000)
    C.print_header("Lease floor: the lease against a minimal lock context manager")
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    with C.ServerProcess("select") as server:
        factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)
        with ReconnectingClient(server.address, factory=factory, backend="thread") as client:
            client.wait_connected(timeout=10)
            t0 = time.perf_counter()
            med, base, rows = part1(client, blocks1, n1, args.window)
            print(f"## 1. No I/O: ns per operation ({blocks1} interleaved blocks x {n1}; "
                  f"{time.perf_counter() - t0:.1f} s)\n")
            print(C.table(["operation", "wall ns", "caller CPU ns", "CPU ns minus empty loop",
                           "/ floor (call: / floor, / floor of call)"], rows))
            lease = med["with client.connection(): pass"][1] - base
            call = med["client.call(noop)"][1] - base
            floor = med["with Minimal(lock): (floor, new object per use)"][1] - base
            fcall = med["with Minimal(lock) as v: noop(v) (floor of call)"][1] - base
            print(f"\n- lease {lease * 1e9:.0f} ns = {lease / floor:.2f}x the floor "
                  f"({floor * 1e9:.0f} ns; target <= 1.5x: "
                  f"{'met' if lease / floor <= 1.5 else 'NOT met'})")
            print(f"- call(noop) {call * 1e9:.0f} ns = {call / floor:.2f}x the floor, "
                  f"{call / fcall:.2f}x the floor of a call ({fcall * 1e9:.0f} ns) (target <= 1.5x: "
                  f"{'met' if call / fcall <= 1.5 else 'NOT met'})\n")
        t0 = time.perf_counter()
        out, rows = part2(server.address, blocks2, n2)
        print(f"## 2. 64-byte round trip, select echo server in pid {server.proc.pid} "
              f"({blocks2} interleaved blocks x {n2}; {time.perf_counter() - t0:.1f} s)\n")
        print(C.table(["variant", "wall us/RT", "extra wall us", "wall / raw [p25-p75]",
                       "caller CPU us/RT", "extra CPU us", "CPU / raw"], rows))
        rw, rc = out["client.call()"]
        print(f"\n- call(): wall {rw:.3f}x raw (target <= 1.05x: {'met' if rw <= 1.05 else 'NOT met'}),"
              f" caller CPU {rc:.3f}x raw (target <= 1.10x: {'met' if rc <= 1.10 else 'NOT met'})")
    print("\nCPU: time.thread_time() of the calling thread; medians over blocks; round-trip ratios "
          "are medians of per-block ratios to the raw socket of the same block. Steps are "
          "replaced in this process only.")
    print("load average at end: " + " ".join(f"{x:.2f}" for x in __import__("os").getloadavg()))


if __name__ == "__main__":
    main()
