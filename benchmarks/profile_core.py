"""Where the time and memory go: profiles of connect-all and of the herd.

Each part runs in a fresh child process (gevent: monkey-patched) against
loopback only and prints its own report:

* ``memory``: N thread- (or gevent-) backend clients connected to the select
  echo server of ``_common.py`` and left idle past the idle watches' arming
  delay; tracemalloc (the N clients' allocations still held, by line and by
  file) and ``gc`` (objects added, by type, with ``sys.getsizeof``), per
  client;
* ``connect``: cProfile of the loop thread (its CPU clock) while N clients
  connect (``start()`` of each, then ``wait_connected()``), per attempt and
  by function; and of the caller thread doing the ``start()`` calls;
* ``herd``: N clients retrying in lockstep against a refused loopback port
  (the policy of ``timers.py``: ``initialDelay=0.02, jitter=0,
  maxDelay=0.05``), cProfile of the loop thread for a fixed period, per
  attempt and by function;
* ``pieces``: the pieces those profiles point at, each timed alone (state
  transition, disabled logging, the factory-call wrapper, epoll re-arming,
  keepalive options, the numeric lookup, a timer armed and cancelled);
* ``--py-spy``: also sample the connect and herd children with py-spy (if it
  is installed), top functions by own samples.

The cProfile figures are inflated by the profiler itself (a few hundred ns
per Python call); read them as shares, and the "loop CPU per attempt without
profiler" line (measured in the same child before profiling) as the
absolute figure.

    python benchmarks/profile_core.py            # N=1000, 3 s herd
    python benchmarks/profile_core.py --quick    # N=300, 1 s herd
"""

import sys

if "--child" in sys.argv and "gevent" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import argparse
import collections
import cProfile
import gc
import io
import os
import pstats
import shutil
import subprocess
import threading
import time

import _common as C

HERD_POLICY = {"initialDelay": 0.02, "jitter": 0, "maxDelay": 0.05}
WARM = 10


def _stats_text(prof, limit, sort="tottime", per=None, strip=True):
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    if strip:
        st.strip_dirs()
    st.sort_stats(sort).print_stats(limit)
    text = buf.getvalue().strip()
    total = st.total_tt
    head = f"total {total * 1e3:.1f} ms profiled"
    if per:
        head += f", {total / per * 1e6:.1f} us per attempt (profiler included)"
    return head + "\n" + text[text.find("ncalls"):] if "ncalls" in text else head + "\n" + text


def _by_function_per_attempt(prof, per, limit=25):
    """(function, calls per attempt, own us per attempt, cumulative us per attempt)."""
    st = pstats.Stats(prof)
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append((tt, ct, nc, f"{os.path.basename(fname)}:{line}({func})"))
    rows.sort(reverse=True)
    out = []
    for tt, ct, nc, name in rows[:limit]:
        out.append([name, f"{nc / per:.2f}", f"{tt / per * 1e6:.2f}", f"{ct / per * 1e6:.2f}"])
    return C.table(["function", "calls/attempt", "own us/attempt", "cumulative us/attempt"], out)


def _loop_runner(backend_name):
    """A function running fn on the backend's loop and waiting for it."""
    if backend_name == "thread":
        from rcf_sync._backends._thread import shared_backend

        backend = shared_backend()
    else:
        from rcf_sync._backends import get_backend

        backend = get_backend("gevent")

    def on_loop(fn):
        done = threading.Event()
        result = []

        def run():
            try:
                result.append(fn())
            finally:
                done.set()

        backend.call_soon(run)
        if not done.wait(30):
            raise RuntimeError("the loop did not run the call")
        return result[0] if result else None

    return on_loop


def _loop_thread_time(on_loop):
    return on_loop(time.thread_time)


def _type_name(o):
    t = type(o)
    return f"{getattr(t, '__qualname__', t.__name__)} ({t.__dict__.get('__module__', 'builtins')})"


# -- memory ------------------------------------------------------------------------------

def child_memory(args):
    import tracemalloc

    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    address = (C.HOST, args.port)
    warm = [ReconnectingClient(address, backend=args.backend).start() for _ in range(WARM)]
    for c in warm:
        c.wait_connected(timeout=30)
    time.sleep(0.1)
    gc.collect()
    before_types = collections.Counter(_type_name(o) for o in gc.get_objects())
    rss0 = C.rss_kib()
    tracemalloc.start(1)
    snap0 = tracemalloc.take_snapshot()
    clients = [ReconnectingClient(address, factory=ReconnectingClientFactory(initialDelay=0.05),
                                  backend=args.backend) for _ in range(args.n)]
    for c in clients:
        c.start()
    for c in clients:
        c.wait_connected(timeout=60)
    time.sleep(0.3)  # idle past ARM_AFTER: every idle watch armed
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rss1 = C.rss_kib()
    n = args.n
    filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    snap0, snap1 = snap0.filter_traces(filt), snap1.filter_traces(filt)
    total = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    total_count = sum(s.count_diff for s in snap1.compare_to(snap0, "filename"))
    print(f"## memory, {args.backend} backend, N={n}\n")
    print(f"RSS delta {(rss1 - rss0) / n:.2f} KiB per client (tracemalloc running: its own "
          f"bookkeeping is in the RSS); traced allocations held {total / n:.0f} B "
          f"= {total / n / 1024:.2f} KiB per client in {total_count / n:.1f} blocks\n")
    print("### by file (bytes and blocks per client)\n")
    rows = []
    for s in snap1.compare_to(snap0, "filename")[:12]:
        if s.size_diff <= 0:
            continue
        rows.append([s.traceback[0].filename.replace(C.REPO + "/", ""),
                     f"{s.size_diff / n:.0f}", f"{s.count_diff / n:.2f}"])
    print(C.table(["file", "B/client", "blocks/client"], rows))
    print("\n### by line (top 25)\n")
    rows = []
    for s in snap1.compare_to(snap0, "lineno")[:25]:
        if s.size_diff <= 0:
            continue
        fr = s.traceback[0]
        src = ""
        try:
            import linecache

            src = linecache.getline(fr.filename, fr.lineno).strip()[:70]
        except Exception:
            pass
        rows.append([f"{fr.filename.replace(C.REPO + '/', '')}:{fr.lineno}", f"{s.size_diff / n:.0f}",
                     f"{s.count_diff / n:.2f}", src])
    print(C.table(["line", "B/client", "blocks/client", "source"], rows))
    gc.collect()
    objs = gc.get_objects()
    after_types = collections.Counter(_type_name(o) for o in objs)
    sizes = collections.Counter()
    for o in objs:
        try:
            sizes[_type_name(o)] += sys.getsizeof(o)
        except TypeError:
            pass
    print("\n### gc-tracked objects added, by type (per client; getsizeof of all live objects of "
          "the type / all live objects of the type x added)\n")
    rows = []
    for name, cnt in sorted(after_types.items(), key=lambda kv: -(kv[1] - before_types[kv[0]])):
        added = cnt - before_types[name]
        if added < n // 2:
            continue
        avg = sizes[name] / cnt
        rows.append([name, f"{added / n:.2f}", f"{avg:.0f}", f"{added * avg / n:.0f}"])
    print(C.table(["type", "objects/client", "getsizeof avg (B)", "B/client"], rows[:30]))
    sample = clients[0]
    print("\n### one client's own attributes\n")
    d = getattr(sample, "__dict__", {})
    print(f"{type(sample).__name__}: {len(d)} instance attributes, __dict__ {sys.getsizeof(d)} B: "
          + ", ".join(sorted(d)))
    fac = sample.factory
    print(f"factory {type(fac).__name__}: {len(vars(fac))} attributes, __dict__ "
          f"{sys.getsizeof(vars(fac))} B")
    conn = getattr(sample, "_conn", None)
    if conn is not None:
        print(f"connection: {type(conn).__name__} {sys.getsizeof(conn)} B; its watch "
              f"{type(conn.watch).__name__} {sys.getsizeof(conn.watch)} B; socket "
              f"{type(conn.sock).__name__} {sys.getsizeof(conn.sock)} B")
    for c in clients + warm:
        c.close()
    C.emit({"ok": True})


# -- connect-all profile -------------------------------------------------------------------

def child_connect(args):
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    address = (C.HOST, args.port)
    warm = [ReconnectingClient(address, backend=args.backend).start() for _ in range(WARM)]
    for c in warm:
        c.wait_connected(timeout=30)
    on_loop = _loop_runner(args.backend)
    n = args.n
    print(f"## connect-all, {args.backend} backend, N={n}\n")

    def connect_all(profile_loop=None, profile_caller=None, reverse=False):
        clients = [ReconnectingClient(address, factory=ReconnectingClientFactory(initialDelay=0.05),
                                      backend=args.backend) for _ in range(n)]
        if profile_loop is not None:
            on_loop(profile_loop.enable)
        lt0 = on_loop(time.thread_time) if args.backend == "thread" else None
        c0 = time.thread_time()
        w0 = time.perf_counter()
        if profile_caller is not None:
            profile_caller.enable()
        for c in clients:
            c.start()
        if profile_caller is not None:
            profile_caller.disable()
        started = time.perf_counter() - w0
        caller_cpu = time.thread_time() - c0
        for c in (reversed(clients) if reverse else clients):
            c.wait_connected(timeout=60)
        wall = time.perf_counter() - w0
        lt1 = on_loop(time.thread_time) if args.backend == "thread" else None
        if profile_loop is not None:
            on_loop(profile_loop.disable)
        for c in clients:
            c.close()
        return wall, started, caller_cpu, (None if lt0 is None else lt1 - lt0)

    plain = [connect_all() for _ in range(3)]
    wall = C.median([p[0] for p in plain])
    loop_cpu = C.median([p[3] for p in plain])
    print(f"without profiler (median of 3): connect-all {wall * 1e3:.1f} ms = "
          f"{wall / n * 1e6:.1f} us per client; start() loop {C.median([p[1] for p in plain]) * 1e3:.1f}"
          f" ms; caller CPU {C.median([p[2] for p in plain]) / n * 1e6:.1f} us per client"
          + (f"; loop thread CPU {loop_cpu / n * 1e6:.1f} us per attempt" if loop_cpu else "")
          + "\n")
    rev = [connect_all(reverse=True) for _ in range(3)]
    rwall = C.median([p[0] for p in rev])
    print(f"waiting on the clients in reverse order (the caller sleeps until the last one is "
          f"connected, so it is woken about once instead of once per client): connect-all "
          f"{rwall * 1e3:.1f} ms = {rwall / n * 1e6:.1f} us per client ({rwall / wall:.2f}x)"
          + (f"; loop thread CPU {C.median([p[3] for p in rev]) / n * 1e6:.1f} us per attempt"
             if loop_cpu else "") + "\n")
    if args.backend == "thread":
        prof = cProfile.Profile(time.thread_time)
        connect_all(profile_loop=prof)
        print("### loop thread, cProfile (thread CPU clock), per attempt\n")
        print(_by_function_per_attempt(prof, n))
    caller = cProfile.Profile(time.thread_time)
    connect_all(profile_caller=caller)
    print("\n### caller thread: the start() calls, cProfile (thread CPU clock), per client\n")
    print(_by_function_per_attempt(caller, n, limit=15))
    if args.backend == "gevent":
        prof = cProfile.Profile()
        prof.enable()
        connect_all()
        prof.disable()
        print("\n### whole process (hub and greenlets), cProfile, per client\n")
        print(_by_function_per_attempt(prof, n))
    for c in warm:
        c.close()
    if args.repeat:
        for _ in range(args.repeat):  # for py-spy: more samples
            connect_all()
    C.emit({"ok": True})


# -- herd profile --------------------------------------------------------------------------

def child_herd(args):
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory, TCPConnector

    n = args.n
    on_loop = _loop_runner(args.backend)
    keep, refused = C.refused_address()
    clients = [ReconnectingClient(TCPConnector(*refused, timeout=5),
                                  factory=ReconnectingClientFactory(**HERD_POLICY),
                                  backend=args.backend) for _ in range(n)]
    print(f"## herd, {args.backend} backend, N={n} retrying in lockstep against a refused port\n")

    def attempts():
        return sum(c.stats.connect_failures for c in clients)

    for c in clients:
        c.start()
    time.sleep(0.3)
    a0 = attempts()
    lt0 = on_loop(time.thread_time) if args.backend == "thread" else None
    p0 = time.process_time()
    w0 = time.perf_counter()
    time.sleep(args.duration)
    w1 = time.perf_counter()
    p1 = time.process_time()
    lt1 = on_loop(time.thread_time) if args.backend == "thread" else None
    a1 = attempts()
    done = a1 - a0
    line = (f"without profiler: {done} attempts in {w1 - w0:.2f} s = {done / (w1 - w0):.0f}/s; "
            f"process CPU {(p1 - p0) / done * 1e6:.1f} us per attempt "
            f"({(p1 - p0) / (w1 - w0) * 100:.0f} % of a core)")
    if lt0 is not None:
        line += f"; loop thread CPU {(lt1 - lt0) / done * 1e6:.1f} us per attempt"
    print(line + "\n")
    if args.backend == "thread":
        prof = cProfile.Profile(time.thread_time)
        on_loop(prof.enable)
    else:
        prof = cProfile.Profile()
        prof.enable()
    a0 = attempts()
    time.sleep(args.duration)
    if args.backend == "thread":
        on_loop(prof.disable)
    else:
        prof.disable()
    done = attempts() - a0
    print(f"### {'loop thread' if args.backend == 'thread' else 'whole process'}, cProfile, "
          f"{done} attempts profiled, per attempt\n")
    print(_by_function_per_attempt(prof, done, limit=30))
    if args.repeat:
        time.sleep(args.repeat)  # for py-spy
    for c in clients:
        c.close()
    keep.close()
    C.emit({"ok": True})


# -- pieces of an attempt, timed alone ------------------------------------------------------

def child_pieces(args):
    """ns per call of the pieces the profiles point at, each timed alone."""
    import logging
    import select
    import socket

    from rcf_sync import ReconnectingClient, ReconnectingClientFactory
    from rcf_sync._state import Event, State, transition

    n = 20000

    def timed(fn, count=n):
        fn(max(10, count // 10))
        vals = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn(count)
            vals.append((time.perf_counter() - t0) / count * 1e9)
        return C.median(vals)

    rows = []

    def add(name, fn, count=n):
        rows.append([name, f"{timed(fn, count):.0f}"])

    def empty(k):
        for _ in range(k):
            pass

    add("empty loop", empty)

    def trans(k):
        for _ in range(k):
            transition(State.CONNECTING, Event.FAILED)

    add("_state.transition(CONNECTING, FAILED) (tuple-of-Enum dict key)", trans)
    table = {(id(a), id(b)): 1 for a in State for b in Event}

    def trans_id(k, a=State.CONNECTING, b=Event.FAILED):
        for _ in range(k):
            table[id(a), id(b)]

    add("same lookup keyed by identity (for comparison)", trans_id)
    log = logging.getLogger("rcf_sync")

    def info(k):
        for _ in range(k):
            log.info("%s will retry in %d seconds", "x", 1)

    add("log.info() with INFO disabled (3 per attempt with noisy=True)", info)
    f = ReconnectingClientFactory()
    c = ReconnectingClient(("127.0.0.1", 9), factory=f, backend="thread")

    def fcalls(k):
        for _ in range(k):
            c._factory_calls([("doStart", ()), ("startedConnecting", (None,))], None)
            f.doStop()

    def direct(k):
        for _ in range(k):
            f.doStart()
            f.startedConnecting(None)
            f.doStop()

    add("_factory_calls([doStart, startedConnecting]) + doStop", fcalls)
    add("the same three methods called directly", direct)
    a, b = socket.socketpair()
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLIN | select.EPOLLONESHOT)

    afd = a.fileno()

    def rereg(k, fd=afd):
        for _ in range(k):
            try:
                ep.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
            except FileExistsError:
                ep.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)

    def modify(k, fd=afd):
        for _ in range(k):
            ep.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)

    add("epoll re-arm as _Poller.arm does it (register, FileExistsError, modify)", rereg)
    add("epoll modify alone", modify)

    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def sockopts(k, s=tcp):
        for _ in range(k):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)

    def setblocking(k, s=tcp):
        for _ in range(k):
            s.setblocking(False)
            s.setblocking(True)

    add("4 keepalive setsockopt() (every attempt, refused ones too)", sockopts)
    add("setblocking(False) + setblocking(True)", setblocking)

    def gai_str(k):
        for _ in range(k):
            socket.getaddrinfo("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)

    def gai_bytes(k):
        for _ in range(k):
            socket.getaddrinfo(b"127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)

    def pton(k):
        for _ in range(k):
            socket.inet_pton(socket.AF_INET, "127.0.0.1")

    add("getaddrinfo('127.0.0.1', AI_NUMERICHOST) (once per client: idna codec)", gai_str, 5000)
    add("the same with a bytes host (no idna)", gai_bytes, 5000)
    add("inet_pton(AF_INET, '127.0.0.1')", pton)

    def sock_cycle(k):
        for _ in range(k):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.close()

    add("socket() + close()", sock_cycle, 5000)
    from rcf_sync._backends._thread import get_runtime

    rt = get_runtime()

    def sched_cancel(k):
        for _ in range(k):
            rt.clock.callLater(30, empty, 0).cancel()

    add("ThreadClock.callLater(30, ...) + cancel() (the attempt deadline)", sched_cancel, 5000)
    rt.timers.clear()
    ep.close()
    a.close()
    b.close()
    tcp.close()
    print("## pieces of an attempt, each timed alone (wall ns per call, median of 5)\n")
    print(C.table(["piece", "ns"], rows))
    C.emit({"ok": True})


# -- parent --------------------------------------------------------------------------------

def run(what, backend, n, duration, repeat=0, spy=False):
    server = C.ServerProcess("select") if what in ("memory", "connect") else None
    cmd = [sys.executable, __file__, "--child", what, "--backend", backend, "-n", str(n),
           "--duration", str(duration), "--repeat", str(repeat)]
    if server is not None:
        cmd += ["--port", str(server.port)]
    env = C.child_env()
    spy_out = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=C.REPO)
        if spy:
            spy_out = _py_spy(proc.pid, duration if what == "herd" else 4.0, what)
        out, err = proc.communicate(timeout=600)
    finally:
        if server is not None:
            server.close()
    lines = [ln for ln in out.splitlines() if not ln.startswith("{")]
    print("\n".join(lines))
    if proc.returncode != 0:
        print(f"(child failed, exit {proc.returncode}: {err[-1500:]})")
    if spy_out:
        print(spy_out)
    print()
    sys.stdout.flush()


def _py_spy(pid, seconds, what):
    exe = shutil.which("py-spy")
    if exe is None:
        return "(py-spy not installed)"
    time.sleep(1.5 if what == "herd" else 0.8)  # let the child build its clients
    raw = f"/tmp/profile_core_{os.getpid()}_{pid}.txt"
    try:
        subprocess.run([exe, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))),
                        "--rate", "1000", "--format", "raw", "--output", raw, "--threads",
                        "--nonblocking"], capture_output=True, text=True, timeout=seconds + 60)
        own = collections.Counter()
        total = 0
        with open(raw) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                frames = stack.split(";")
                count = int(count)
                if "thread" in frames[0].lower() and "MainThread" in frames[0]:
                    continue  # the caller thread: only the loop thread is of interest here
                total += count
                leaf = frames[-1]
                own[leaf] += count
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return f"(py-spy failed: {exc})"
    finally:
        try:
            os.unlink(raw)
        except OSError:
            pass
    if not total:
        return "(py-spy: no samples)"
    rows = [[name[:110], str(cnt), f"{cnt / total * 100:.1f}"] for name, cnt in own.most_common(20)]
    return (f"### py-spy, non-main threads, {total} samples at 1 kHz, own samples by function\n\n"
            + C.table(["function (file:line)", "samples", "%"], rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("-n", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--parts", default="memory,connect,herd,pieces")
    p.add_argument("--backends", default="thread,gevent")
    p.add_argument("--py-spy", action="store_true", dest="spy")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="thread", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        C.watchdog(300)
        C.raise_nofile()
        args.n = args.n or 1000
        args.duration = args.duration or 3.0
        return {"memory": child_memory, "connect": child_connect, "herd": child_herd,
                "pieces": child_pieces}[args.child](args)
    n = max(1, min(args.n or (300 if args.quick else 1000), 10000))
    duration = max(0.5, min(args.duration or (1.0 if args.quick else 3.0), 30.0))
    C.watchdog(1800)
    C.raise_nofile()
    C.print_header("Profiles: connect-all memory and time, the herd's attempts")
    for part in args.parts.split(","):
        for backend in (["thread"] if part == "pieces" else args.backends.split(",")):
            run(part, backend, n, duration,
                repeat=(6 if part == "connect" else 5) if args.spy and backend == "thread" else 0,
                spy=args.spy and backend == "thread" and part in ("connect", "herd"))


if __name__ == "__main__":
    main()
