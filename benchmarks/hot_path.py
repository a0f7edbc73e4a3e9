"""Hot path: 64-byte echo round trips from one caller.

Compares, against an echo server in another process (thread per connection,
so that its CPU never counts against the caller):

* thread backend, in this process: a raw blocking socket; ``client.call()``;
  the ``client.connection()`` lease; ``client.sendall()/recv()`` on the
  handle; Twisted's ``ReconnectingClientFactory`` driven through crochet
  (``@wait_for`` round trips from a plain thread, what a synchronous Twisted
  user runs);
* gevent backend, in a monkey-patched child process: a raw gevent socket;
  ``client.call()``; the lease; ``sendall()/recv()``.

Variants run in interleaved blocks (each block: every variant once, the
order rotated from block to block); the tables give the median over blocks
of the wall time and CPU per round trip, and the median of the per-block
ratios to the raw socket of the same block.

    python benchmarks/hot_path.py            # full
    python benchmarks/hot_path.py --quick    # about 15 s
    python benchmarks/hot_path.py --profile  # cProfile of the lease and call loops
"""

import sys

if "--gevent-child" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import argparse
import cProfile
import gc
import io
import pstats
import time

import _common as C
from _common import MSG, SIZE, roundtrip

# -- variants ------------------------------------------------------------------------

def raw_variant(address):
    import socket

    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as TCPConnector does

    def run(n):
        for _ in range(n):
            roundtrip(sock)

    return run, sock.close


def rcf_variants(address, backend):
    """(name, run, close) for call, lease and handle, each on its own client."""
    from rcf_sync import ReconnectingClient

    out = []

    def new_client():
        c = ReconnectingClient(address, backend=backend)
        c.start()
        c.wait_connected(timeout=10)
        return c

    c_call = new_client()

    def run_call(n, client=c_call, fn=roundtrip):
        for _ in range(n):
            client.call(fn)

    out.append(("client.call()", run_call, c_call.close))

    c_lease = new_client()

    def run_lease(n, client=c_lease, fn=roundtrip):
        for _ in range(n):
            with client.connection() as sock:
                fn(sock)

    out.append(("connection() lease", run_lease, c_lease.close))

    c_handle = new_client()

    def run_handle(n, client=c_handle):
        for _ in range(n):
            client.sendall(MSG)
            got = client.recv(SIZE)
            for _ in range(SIZE):
                if len(got) >= SIZE:
                    break
                got += client.recv(SIZE - len(got))

    out.append(("handle sendall/recv", run_handle, c_handle.close))
    return out


def twisted_variant(address):
    """Twisted's ReconnectingClientFactory in crochet's reactor thread; the
    caller does blocking round trips through ``@wait_for``."""
    import crochet

    crochet.setup()
    from twisted.internet import defer, protocol, reactor

    class Echo(protocol.Protocol):
        def connectionMade(self):
            self.transport.setTcpNoDelay(True)
            self.buf = b""
            self.waiting = None
            self.factory.proto = self
            d, self.factory.ready = self.factory.ready, None
            if d is not None:
                d.callback(self)

        def dataReceived(self, data):
            self.buf += data
            if len(self.buf) >= SIZE and self.waiting is not None:
                d, self.waiting = self.waiting, None
                got, self.buf = self.buf[:SIZE], self.buf[SIZE:]
                d.callback(got)

    Factory = C.twisted_factory(Echo)

    factory = Factory()
    factory.ready = defer.Deferred()
    factory.proto = None

    @crochet.wait_for(timeout=10)
    def connect():
        reactor.connectTCP(address[0], address[1], factory)
        return factory.ready

    @crochet.wait_for(timeout=10)
    def echo_once():
        p = factory.proto
        d = defer.Deferred()
        p.waiting = d
        p.transport.write(MSG)
        return d

    @crochet.wait_for(timeout=10)
    def stop():
        factory.stopTrying()
        if factory.proto is not None:
            factory.proto.transport.loseConnection()

    connect()

    def run(n):
        for _ in range(n):
            echo_once()

    return run, stop


# -- measuring -----------------------------------------------------------------------

def measure(run, n):
    """Per-round-trip wall, caller-thread CPU and process CPU, in seconds."""
    gc.collect()
    p0 = time.process_time()
    c0 = time.thread_time()
    w0 = time.perf_counter()
    run(n)
    w1 = time.perf_counter()
    c1 = time.thread_time()
    p1 = time.process_time()
    return [(w1 - w0) / n, (c1 - c0) / n, (p1 - p0) / n]


def interleave(variants, blocks, n):
    """variants: list of (name, run). Returns {name: [[wall, cpu, pcpu], ...]}."""
    for _name, run in variants:  # warm-up, not recorded
        run(max(50, n // 5))
    results = {name: [] for name, _ in variants}
    k = len(variants)
    for b in range(blocks):
        for i in range(k):
            name, run = variants[(b + i) % k]
            results[name].append(measure(run, n))
    return results


def summarize(results, raw_name):
    """Rows: name, wall us, ratio [p25-p75], caller CPU us, ratio, proc CPU us, ratio."""
    raw = results[raw_name]
    rows = []
    summary = {}
    for name, blocks in results.items():
        wall = [b[0] for b in blocks]
        cpu = [b[1] for b in blocks]
        pcpu = [b[2] for b in blocks]
        r_wall = [b[0] / r[0] for b, r in zip(blocks, raw)]
        r_cpu = [b[1] / r[1] for b, r in zip(blocks, raw) if r[1] > 0]
        r_pcpu = [b[2] / r[2] for b, r in zip(blocks, raw) if r[2] > 0]
        d_wall = [(b[0] - r[0]) for b, r in zip(blocks, raw)]
        s = {
            "wall_us": C.median(wall) * 1e6,
            "cpu_us": C.median(cpu) * 1e6,
            "pcpu_us": C.median(pcpu) * 1e6,
            "ratio_wall": C.median(r_wall),
            "ratio_wall_iqr": (C.percentile(r_wall, 25), C.percentile(r_wall, 75)),
            "ratio_cpu": C.median(r_cpu),
            "ratio_pcpu": C.median(r_pcpu),
            "extra_wall_us": C.median(d_wall) * 1e6,
        }
        summary[name] = s
        rows.append([
            name,
            C.fmt(s["wall_us"], ".1f"),
            C.fmt(s["extra_wall_us"], "+.1f"),
            "{} [{}-{}]".format(C.fmt(s["ratio_wall"], ".3f"), C.fmt(s["ratio_wall_iqr"][0], ".3f"),
                                C.fmt(s["ratio_wall_iqr"][1], ".3f")),
            C.fmt(s["cpu_us"], ".1f"),
            C.fmt(s["ratio_cpu"], ".3f"),
            C.fmt(s["pcpu_us"], ".1f"),
            C.fmt(s["ratio_pcpu"], ".3f"),
        ])
    headers = ["variant", "wall us/RT", "extra us/RT", "wall / raw [p25-p75]",
               "caller CPU us/RT", "CPU / raw", "process CPU us/RT", "proc CPU / raw"]
    return C.table(headers, rows), summary


def verdicts(summary, names, wall_target=1.03, cpu_target=1.10):
    lines = []
    for name in names:
        s = summary[name]
        w_ok = s["ratio_wall"] <= wall_target
        c_ok = s["ratio_cpu"] <= cpu_target
        lines.append(f"- {name}: wall {s['ratio_wall']:.3f}x raw ({'met' if w_ok else 'NOT met'}, "
                     f"target <= {wall_target}x); caller CPU {s['ratio_cpu']:.3f}x raw "
                     f"({'met' if c_ok else 'NOT met'}, target <= {cpu_target}x)")
    return "\n".join(lines)


# -- the gevent child ---------------------------------------------------------------

def gevent_child(args):
    C.watchdog(args.child_limit)
    address = (C.HOST, args.port)
    raw_run, raw_close = raw_variant(address)
    variants = [("raw gevent socket", raw_run)]
    closers = [raw_close]
    for name, run, close in rcf_variants(address, "gevent"):
        variants.append((name, run))
        closers.append(close)
    results = interleave(variants, args.blocks, args.n)
    for close in closers:
        close()
    C.emit({"results": results, "order": [n for n, _ in variants]})


# -- profiling -----------------------------------------------------------------------

def fixed_costs(client, n, blocks=9):
    """Caller CPU per operation with no I/O inside: what a lease costs by
    itself, next to the bare Python constructs it is made of."""
    import threading

    lock = threading.Lock()
    sock = client.wait_connected(timeout=10)

    def noop(s):
        return s

    def bare_loop(n):
        for _ in range(n):
            pass

    def lock_with(n):
        for _ in range(n):
            with lock:
                pass

    def gettimeout(n):
        for _ in range(n):
            sock.gettimeout()

    def lease(n):
        for _ in range(n):
            with client.connection():
                pass

    def call(n):
        for _ in range(n):
            client.call(noop)

    rows = []
    cases = [("empty loop", bare_loop), ("with threading.Lock()", lock_with),
             ("sock.gettimeout()", gettimeout), ("with client.connection(): pass", lease),
             ("client.call(noop)", call)]
    per = {name: [] for name, _ in cases}
    for _block in range(blocks):
        for name, fn in cases:
            c0 = time.thread_time()
            fn(n)
            per[name].append((time.thread_time() - c0) / n)
    base = C.median(per["empty loop"])
    for name, _ in cases:
        m = C.median(per[name])
        rows.append([name, C.fmt(m * 1e9, ".0f"), C.fmt((m - base) * 1e9, ".0f")])
    return ("## Fixed cost per operation, no I/O (thread backend, caller CPU, median of "
            f"{blocks} blocks x {n})\n\n"
            + C.table(["operation", "ns/op", "ns/op minus empty loop"], rows)
            + "\n")


def profile(address, n):
    from rcf_sync import ReconnectingClient

    out = []
    with ReconnectingClient(address, backend="thread") as client:
        client.wait_connected(timeout=10)
        out.append(fixed_costs(client, 20 * n // 10))

        def lease_loop():
            for _ in range(n):
                with client.connection() as sock:
                    roundtrip(sock)

        def call_loop():
            for _ in range(n):
                client.call(roundtrip)

        for label, loop in (("connection() lease", lease_loop), ("client.call()", call_loop)):
            loop()  # warm-up
            prof = cProfile.Profile(time.thread_time)  # caller CPU, not waiting
            prof.runcall(loop)
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats("tottime").print_stats(18)
            out.append(f"## cProfile (thread CPU clock), {label}, {n} round trips\n\n```\n"
                       + buf.getvalue().strip() + "\n```\n")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (about 15 s)")
    p.add_argument("--blocks", type=int, help="interleaved blocks per variant")
    p.add_argument("-n", type=int, help="round trips per block")
    p.add_argument("--profile", action="store_true", help="profile the lease and call loops instead")
    p.add_argument("--no-twisted", action="store_true")
    p.add_argument("--no-gevent", action="store_true")
    p.add_argument("--gevent-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-limit", type=float, default=600, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.blocks is None:
        args.blocks = 9 if args.quick else 21
    if args.n is None:
        args.n = 2500 if args.quick else 8000
    args.blocks = max(1, min(args.blocks, 1000))
    args.n = max(1, min(args.n, 1_000_000))
    if args.gevent_child:
        return gevent_child(args)

    C.watchdog(1800)
    C.print_header("Hot path: 64-byte echo round trips from one caller")
    with C.ServerProcess("threaded") as server:
        address = server.address
        if args.profile:
            print(profile(address, 20000 if not args.quick else 5000))
            return
        print(f"server: thread-per-connection echo in pid {server.proc.pid}; "
              f"{args.blocks} interleaved blocks x {args.n} round trips per variant\n")
        raw_run, raw_close = raw_variant(address)
        variants = [("raw blocking socket", raw_run)]
        closers = [raw_close]
        for name, run, close in rcf_variants(address, "thread"):
            variants.append((name, run))
            closers.append(close)
        if not args.no_twisted:
            try:
                tw_run, tw_close = twisted_variant(address)
            except ImportError as exc:
                print(f"(Twisted via crochet skipped: {exc}; pip install -e '.[compare]')\n")
            else:
                variants.append(("Twisted RCF via crochet", tw_run))
                closers.append(tw_close)
        t0 = time.perf_counter()
        results = interleave(variants, args.blocks, args.n)
        for close in closers:
            close()
        tbl, summary = summarize(results, "raw blocking socket")
        print(f"## thread backend (this process; caller = main thread), "
              f"{time.perf_counter() - t0:.1f} s\n")
        print(tbl)
        print()
        print(verdicts(summary, ["client.call()", "connection() lease", "handle sendall/recv"]))
        if "Twisted RCF via crochet" in summary:
            s = summary["Twisted RCF via crochet"]
            print(f"- Twisted via crochet: wall {s['ratio_wall']:.3f}x raw, process CPU "
                  f"{s['ratio_pcpu']:.3f}x raw (its work runs on the reactor thread, so caller "
                  f"CPU alone understates it)")
        print()
        sys.stdout.flush()

        if not args.no_gevent:
            t0 = time.perf_counter()
            try:
                child = C.run_child(
                    [__file__, "--gevent-child", "--port", str(server.port), "--blocks",
                     str(args.blocks), "-n", str(args.n)], timeout=900)
            except RuntimeError as exc:
                print(f"## gevent backend: failed\n\n{str(exc)[-1500:]}\n")
                return
            results = {name: child["results"][name] for name in child["order"]}
            tbl, summary = summarize(results, "raw gevent socket")
            print(f"## gevent backend (monkey-patched child process), "
                  f"{time.perf_counter() - t0:.1f} s\n")
            print(tbl)
            print()
            print(verdicts(summary, ["client.call()", "connection() lease", "handle sendall/recv"]))
            print()
    print("wall/CPU per round trip: medians over blocks; ratios: median of per-block ratios to the "
          "raw socket measured in the same block (p25-p75 of those ratios in brackets); "
          "extra us/RT: median per-block difference to raw.")


if __name__ == "__main__":
    main()
