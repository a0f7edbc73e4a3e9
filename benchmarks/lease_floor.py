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
  ``rcf_sync/``), to price each: the kernel check made to run on every
  lease (``RECHECK_AFTER = 0``: what a lease cost before the hot path
  skipped it for a connection its caller gave back an instant ago), and the
  hot path turned off (every lease through ``_acquire``/``_release``, two
  lock blocks);
* the skeletons of ``_skeletons.py``: the hot path written out inline with
  no layers, step by step up to the cheapest lease that keeps every
  guarantee of the library's, then made by a method and layered as the
  library is;
* the pieces alone: ``poll(0)``, the cheapest ``getsockopt`` queries, the
  whole ``lease_check``, ``gettimeout()``, ``time.monotonic()``,
  ``threading.get_ident()``.

Part 2, a 64-byte echo round trip against the select echo server of
``_common.py`` (another process): a raw blocking socket, ``client.call()``,
the ``connection()`` lease, ``call()`` with the kernel check on every
lease, and two that price a lease where it runs in such a loop (between
blocking reads, not in a tight loop with warm caches): the raw socket inside
the floor's context manager, and a raw round trip followed by
``call(noop)``; interleaved blocks; wall and caller CPU, medians of
per-block ratios to raw.

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
from _skeletons import SKELETONS, skeleton_handle


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

def part1(client, blocks, n):
    from rcf_sync import _leasing

    lock = threading.Lock()
    value = object()
    shared = Minimal(lock, value)
    sock = client.wait_connected(timeout=10)
    conn = client._conn
    real_check = _leasing.lease_check
    real_take, real_give = _leasing.Leasing._take_now, _leasing.Leasing._give_now
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

    def always_check():
        _leasing.RECHECK_AFTER = 0.0

    def gate_back():
        _leasing.RECHECK_AFTER = real_window

    real_window = _leasing.RECHECK_AFTER

    def usual_path():
        _leasing.Leasing._take_now = lambda self: None
        _leasing.Leasing._give_now = lambda self, conn: False

    def hot_path_back():
        _leasing.Leasing._take_now, _leasing.Leasing._give_now = real_take, real_give

    skeleton = skeleton_handle()

    def run_skeleton(run):
        return lambda n: run(skeleton, n)

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

    def get_ident(n):
        g = threading.get_ident
        for _ in range(n):
            g()

    cases = [
        ("empty loop", empty),
        ("with lock: (bare threading.Lock)", bare_lock),
        ("with Minimal(lock): (floor, new object per use)", minimal_new),
        ("with minimal: (one instance reused)", minimal_reused),
        ("with Minimal(lock) as v: noop(v) (floor of call)", minimal_call),
        ("with client.connection(): pass", lease),
        ("client.call(noop)", call),
        ("lease, kernel check on every lease (RECHECK_AFTER = 0)",
         with_patch(lease, always_check, gate_back)),
        ("call, kernel check on every lease (RECHECK_AFTER = 0)",
         with_patch(call, always_check, gate_back)),
        ("lease, usual path only (_acquire/_release)", with_patch(lease, usual_path, hot_path_back)),
        ("call, usual path only (_acquire/_release)", with_patch(call, usual_path, hot_path_back)),
    ] + [(label, run_skeleton(run)) for label, run in SKELETONS.values()] + [
        ("poll.poll(0) alone", poll0),
        # The cheapest other kernel queries that could tell unread bytes or a
        # FIN (none releases the interpreter lock, unlike poll()):
        ("getsockopt(SO_ERROR) alone", sockopt(socket.SO_ERROR, 0)),
        ("getsockopt(SO_MEMINFO, 4) alone (receive-queue bytes)",
         sockopt(getattr(socket, "SO_MEMINFO", 55), 4)),
        ("lease_check(conn) alone", lease_check_only),
        ("sock.gettimeout() alone", gettimeout),
        ("time.monotonic() alone", monotonic),
        ("threading.get_ident() alone", get_ident),
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
        if (name.startswith(("with client.connection", "lease", "skeleton", "the same"))
                and "alone" not in name):
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
    real_window = _leasing.RECHECK_AFTER

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

    lock = threading.Lock()

    def run_raw_minimal(n):
        for _ in range(n):
            with Minimal(lock, raw) as s:
                roundtrip(s)

    def noop(s):
        return s

    def run_raw_after_noop_call(n):
        for _ in range(n):
            c_call.call(noop)
            roundtrip(raw)

    def run_call_always(n):
        _leasing.RECHECK_AFTER = 0.0
        try:
            for _ in range(n):
                c_call.call(roundtrip)
        finally:
            _leasing.RECHECK_AFTER = real_window

    cases = [("raw socket", run_raw), ("client.call()", run_call),
             ("connection() lease", run_lease), ("call(), kernel check on every lease", run_call_always),
             ("raw socket inside with Minimal(lock)", run_raw_minimal),
             ("raw socket, then call(noop) on the client", run_raw_after_noop_call)]
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
            med, base, rows = part1(client, blocks1, n1)
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
