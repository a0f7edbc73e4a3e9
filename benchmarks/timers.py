"""Timers: how late does each scheduled retry start?

1 and 1000 clients point at a loopback port that refuses connections
(a socket bound there without listening), with ``initialDelay=0.02,
jitter=0, maxDelay=0.05``: each retry is scheduled, runs, fails at once and
is scheduled again. A factory subclass records, for every ``retry()``, the
time the delayed call is due (``_callID.getTime()``, i.e. ``clock.seconds()``
+ delay at scheduling); a connector subclass records when ``connect()``
actually runs (what the delayed call invokes). Lateness = actual - due.
rcf_sync also records when the attempt itself begins on the loop
(``factory.startedConnecting``). Because a factory subclass is user code
(run off the loop, in the client's user-code queue), ``thread-own`` and
``gevent-own`` measure the library's own factory and connector instead,
recording due and run times through a wrapping clock passed as ``clock=``.
Twisted's reactor (same factory settings,
``startedConnecting`` runs inside ``connect()``) is measured the same way
for context, and so is the machine's floor: a bare ``epoll.poll()`` sleeping
until each due time on the same schedule.

Each configuration runs in a fresh child process (gevent: monkey-patched),
for a fixed period, in rotation over rounds; tables give the medians over
rounds of each run's percentiles.

    python benchmarks/timers.py            # 5 s per run, 3 rounds
    python benchmarks/timers.py --quick    # 1.5 s per run, 1 round
"""

import sys

if "--child" in sys.argv and any(a.startswith("gevent") for a in sys.argv):
    from gevent import monkey

    monkey.patch_all()

import argparse
import time

import _common as C

CONTENDERS = ("thread", "gevent", "thread-own", "gevent-own", "twisted", "floor")
POLICY = {"initialDelay": 0.02, "jitter": 0, "maxDelay": 0.05}


def lateness(due, actual):
    """Pair the k-th due time with the k-th actual run, per client; ms."""
    out = []
    for d_list, a_list in zip(due, actual):
        for d, a in zip(d_list, a_list):
            out.append((a - d) * 1e3)
    return out


def run_period(clients, duration):
    """Start the clients and let them retry for ``duration`` seconds; return
    the process CPU (% of one core) and the failed attempts counted."""
    c0 = time.process_time()
    w0 = time.perf_counter()
    for c in clients:
        c.start()
    time.sleep(duration)
    cpu = (time.process_time() - c0) / (time.perf_counter() - w0) * 100
    return cpu, sum(c.stats.connect_failures for c in clients)


def child_rcf_own(args):
    """The library's own factory and connector (no subclass, so no user code
    to isolate): due and run times recorded by a clock wrapping the
    backend's, handed to the client with ``clock=``."""
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory, TCPConnector
    from rcf_sync._backends import get_backend

    n = args.n
    backend = args.backend.split("-")[0]
    real = get_backend(backend).clock
    due = [[] for _ in range(n)]
    ran = [[] for _ in range(n)]

    class RecordingClock:
        def __init__(self, index):
            self._due = due[index]
            self._ran = ran[index]

        def seconds(self):
            return real.seconds()

        def callLater(self, delay, fn, *a, **kw):
            when = real.seconds() + delay
            ran_list = self._ran

            def timed():
                ran_list.append(time.monotonic())
                return fn(*a, **kw)

            self._due.append(when)
            return real.callLater(delay, timed)

        def getDelayedCalls(self):
            return real.getDelayedCalls()

    clients = []
    for i in range(n):
        clients.append(ReconnectingClient(TCPConnector(C.HOST, args.port, timeout=5),
                                          factory=ReconnectingClientFactory(**POLICY),
                                          backend=backend, clock=RecordingClock(i)))
    cpu, attempts = run_period(clients, args.duration)
    # What close() lets through afterwards is not part of the run.
    # (The recording clocks hold the inner lists, so these copies stay put.)
    due, ran = [list(x) for x in due], [list(x) for x in ran]
    t_close = time.perf_counter()
    for c in clients:
        c.close()
    close_s = time.perf_counter() - t_close
    # The clock also times the client's own calls (none on this path besides
    # the factory's retries: the attempt deadline is on the backend's clock).
    lat = lateness(due, ran)
    C.emit({"connect_ms": lat, "begin_ms": lat, "cpu_pct": cpu, "duration": args.duration,
            "attempts": attempts, "close_s": close_s})


def child_rcf(args):
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory, TCPConnector

    n = args.n
    due = [[] for _ in range(n)]
    ran = [[] for _ in range(n)]
    began = [[] for _ in range(n)]

    class Recording(ReconnectingClientFactory):
        index = 0
        noisy = False

        def retry(self, connector=None):
            super().retry(connector)
            call = self._callID
            if call is not None:
                due[self.index].append(call.getTime())

        def startedConnecting(self, connector):
            began[self.index].append(self.clock.seconds() if self.clock is not None
                                     else time.monotonic())
            super().startedConnecting(connector)

    class RecordingConnector(TCPConnector):
        index = 0

        def connect(self):
            ran[self.index].append(time.monotonic())
            super().connect()

    clients = []
    for i in range(n):
        f = Recording(**POLICY)
        f.index = i
        conn = RecordingConnector(C.HOST, args.port, timeout=5)
        conn.index = i
        clients.append(ReconnectingClient(conn, factory=f, backend=args.backend))
    cpu, attempts = run_period(clients, args.duration)
    # What close() lets through afterwards is not part of the run.
    # (New names: the recording methods above append through these names.)
    due_run, ran_run, began_run = ([list(x) for x in due], [list(x) for x in ran],
                                   [list(x) for x in began])
    t_close = time.perf_counter()
    for c in clients:
        c.close()
    close_s = time.perf_counter() - t_close
    # began[k][0] is the first attempt (start()); later ones follow retries.
    C.emit({"connect_ms": lateness(due_run, ran_run),
            "begin_ms": lateness(due_run, [b[1:] for b in began_run]),
            "cpu_pct": cpu, "duration": args.duration, "attempts": attempts,
            "close_s": close_s})


def child_twisted(args):
    from twisted.internet import protocol, reactor
    from twisted.internet.protocol import Protocol

    n = args.n
    due = [[] for _ in range(n)]
    ran = [[] for _ in range(n)]
    out = {}

    class Recording(protocol.ReconnectingClientFactory):
        index = 0
        noisy = False
        initialDelay = POLICY["initialDelay"]
        jitter = POLICY["jitter"]
        maxDelay = POLICY["maxDelay"]
        protocol = Protocol

        def retry(self, connector=None):
            super().retry(connector)
            call = self._callID
            if call is not None:
                due[self.index].append(call.getTime())

        def startedConnecting(self, connector):
            ran[self.index].append(reactor.seconds())

    factories = []
    for i in range(n):
        f = Recording()
        f.delay = f.initialDelay
        f.index = i
        factories.append(f)
    state = {}

    def go():
        state["c0"] = time.process_time()
        state["w0"] = time.perf_counter()
        for f in factories:
            reactor.connectTCP(C.HOST, args.port, f, timeout=5)
        reactor.callLater(args.duration, done)

    def done():
        out["cpu_pct"] = ((time.process_time() - state["c0"]) /
                          (time.perf_counter() - state["w0"]) * 100)
        for f in factories:
            f.stopTrying()
        reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    # ran[k][0] is the first connectTCP; later ones follow retries.
    lat = lateness(due, [r[1:] for r in ran])
    C.emit({"connect_ms": lat, "begin_ms": lat, "cpu_pct": out.get("cpu_pct"),
            "duration": args.duration})


def child_floor(args):
    """The machine's own floor: a bare epoll.poll() sleeping until each due
    time on the same schedule (0.02 s, then 0.05 s), no library at all."""
    import select

    ep = select.epoll()
    lat = []
    w0 = time.perf_counter()
    c0 = time.process_time()
    end = time.monotonic() + args.duration
    delay = POLICY["initialDelay"]
    for _ in range(int(args.duration / POLICY["initialDelay"]) + 2):
        due = time.monotonic() + delay
        if due > end:
            break
        for _ in range(1000):  # until due; normally a single poll
            left = due - time.monotonic()
            if left <= 0:
                break
            ep.poll(left)
        lat.append((time.monotonic() - due) * 1e3)
        delay = POLICY["maxDelay"]
    ep.close()
    cpu = (time.process_time() - c0) / (time.perf_counter() - w0) * 100
    C.emit({"connect_ms": lat, "begin_ms": lat, "cpu_pct": cpu, "duration": args.duration})


def summarize(res):
    c = res["connect_ms"]
    b = res["begin_ms"]
    return {
        "samples": len(c),
        "rate": len(c) / res["duration"],
        "c_p50": C.percentile(c, 50), "c_p99": C.percentile(c, 99), "c_max": max(c) if c else None,
        "b_p50": C.percentile(b, 50), "b_p99": C.percentile(b, 99),
        "early": sum(1 for x in c if x < -0.05),
        "cpu": res["cpu_pct"],
        "attempts_s": res.get("attempts", len(c)) / res["duration"],
        "close_s": res.get("close_s"),
        "cpu_per_attempt_us": (res["cpu_pct"] / 100.0 * res["duration"]
                               / max(1, res.get("attempts", len(c)))) * 1e6,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1.5 s per run, one round")
    p.add_argument("--sizes", default="1,1000")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        C.watchdog(args.duration + 120)
        C.raise_nofile()
        args.backend = args.child
        if args.child == "floor":
            return child_floor(args)
        if args.child.endswith("-own"):
            return child_rcf_own(args)
        return child_twisted(args) if args.child == "twisted" else child_rcf(args)

    sizes = [max(1, min(int(x), 5000)) for x in args.sizes.split(",")]
    rounds = max(1, min(args.rounds or (1 if args.quick else 3), 20))
    duration = max(0.5, min(args.duration or (1.5 if args.quick else 5.0), 120.0))
    contenders = [c for c in args.contenders.split(",") if c in CONTENDERS]
    C.watchdog(3600)
    C.print_header("Timers: lateness of scheduled retries")
    print(f"policy: initialDelay={POLICY['initialDelay']}, jitter=0, maxDelay={POLICY['maxDelay']}; "
          f"refused loopback port; {duration:g} s per run; {rounds} round(s)\n")
    sys.stdout.flush()
    holder, address = C.refused_address()
    results = {}
    failures = []
    try:
        for r in range(rounds):
            for n in sizes:
                order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
                for contender in order:
                    if contender == "floor" and n != 1:
                        continue
                    try:
                        res = C.run_child([__file__, "--child", contender, "-n", str(n), "--port",
                                           str(address[1]), "--duration", str(duration)],
                                          timeout=duration + 180)
                        results.setdefault((contender, n), []).append(summarize(res))
                    except RuntimeError as exc:
                        failures.append(f"{contender} N={n} round {r + 1}: {str(exc)[:400]}")
    finally:
        holder.close()

    rows = []
    verdicts = []
    for n in sizes:
        for contender in contenders:
            runs = results.get((contender, n), [])
            if contender == "floor" and n != 1:
                continue
            if not runs:
                rows.append([contender, n, "failed"] + [""] * 10)
                continue

            def med(key, runs=runs):
                return C.median([x[key] for x in runs])

            rows.append([contender, n, C.fmt(med("samples"), ".0f"), C.fmt(med("rate"), ".0f"),
                         C.fmt(med("c_p50"), ".2f"), C.fmt(med("c_p99"), ".2f"),
                         C.fmt(med("c_max"), ".1f"), C.fmt(med("b_p50"), ".2f"),
                         C.fmt(med("b_p99"), ".2f"), C.fmt(med("cpu"), ".0f"),
                         C.fmt(med("attempts_s"), ".0f"), C.fmt(med("cpu_per_attempt_us"), ".1f"),
                         C.fmt(C.median([x["close_s"] for x in runs]), ".2f")])
            if contender not in ("twisted", "floor"):
                p99 = med("c_p99")
                verdicts.append(f"- {contender}, {n} client(s): p99 lateness {p99:.2f} ms: "
                                + ("met" if p99 <= 5.0 else "NOT met") + " (target <= 5 ms)")
    print(C.table(["contender", "clients", "retries timed", "retries/s", "connect() late p50 (ms)",
                   "p99 (ms)", "max (ms)", "attempt begins late p50 (ms)", "p99 (ms)",
                   "process CPU %", "attempts/s", "CPU us/attempt", "close all (s)"], rows))
    for n in sizes:
        tw = results.get(("twisted", n), [])
        for contender in contenders:
            if contender in ("twisted", "floor") or not tw or not results.get((contender, n)):
                continue
            mine = C.median([x["c_p99"] for x in results[(contender, n)]])
            theirs = C.median([x["c_p99"] for x in tw])
            if theirs:
                verdicts.append(f"- {contender}, {n} client(s): p99 {mine:.2f} ms against Twisted's "
                                f"{theirs:.2f} ms in the same run = {mine / theirs:.2f}x ("
                                + ("met" if mine <= theirs else "NOT met")
                                + ": target no worse than Twisted)")
    print("\n## Target\n")
    print("\n".join(verdicts))
    if failures:
        print("\n## Failures\n")
        print("\n".join(f"- {f}" for f in failures))
    print("\nconnect() late: time connector.connect() ran minus the time the delayed call was due; "
          "attempt begins late: same for factory.startedConnecting() (rcf_sync runs it on the loop "
          "after connect() hands over; Twisted runs it inside connect()). thread/gevent: a factory "
          "subclass and a connector subclass record the times (so the factory's methods run as "
          "user code, off the loop); thread-own/gevent-own: the library's own factory and "
          "connector, times recorded by a wrapping clock passed as clock= (the attempt "
          "column repeats connect()). attempts/s and CPU us/attempt: failed attempts counted "
          "by the clients' stats (Twisted, floor: retries timed); close all: close() of every "
          "client after the run (not counted in the run). Medians over rounds of "
          "each run's percentile; process CPU: whole child process, % of one core. floor: no "
          "library, a bare epoll.poll() sleeping to each due time on the same schedule: the "
          "machine's own wake-up lateness.")


if __name__ == "__main__":
    main()
