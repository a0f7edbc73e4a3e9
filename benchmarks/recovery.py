"""Recovery: the server drops every connection at once; how fast do N
clients notice and come back, and how hard do they hit it on return?

For N = 100 and 1000 and each contender (rcf_sync thread backend, rcf_sync
gevent backend in a monkey-patched process, Twisted's
ReconnectingClientFactory in one reactor), a fresh child process connects N
clients (policy: ``initialDelay=0.05``, Twisted's default factor and jitter)
to an echo server in its own process (selectors/epoll), then has the server
close all N accepted sockets (it keeps listening) and records:

* per client, when the loss is noticed: ``on_disconnect`` (Twisted:
  ``clientConnectionLost``), stamped with ``time.monotonic()``; and, for
  rcf_sync, when its factory's ``clientConnectionLost`` ran. Reported as
  the time since the server closed *that* connection (matched by port) and
  since the drop began, p50 and max;
* when each client is connected again: the factory's ``resetDelay()``,
  which the client calls once a new connection is up (Twisted:
  ``connectionMade``, where a Twisted user calls ``resetDelay()``); "all
  back" is the last of them, from the start of the drop, and is confirmed
  by ``wait_connected()`` on every client;
* the server's accept times: the most reconnects it saw in any 10 ms.

Clock: ``time.monotonic()`` (CLOCK_MONOTONIC on Linux) in every process.
Both rcf_sync's factory and Twisted's draw their Gaussian jitter from the
module-level ``random``; every child of a round seeds it with the same value,
so the contenders of a round draw the same set of N delays and differ only
in how fast they act on them.
The contenders run in rotation; the table gives medians over rounds.

    python benchmarks/recovery.py            # N = 100, 1000; 5 rounds
    python benchmarks/recovery.py --quick    # N = 100, 1000; 1 round
"""

import sys

if "--child" in sys.argv and "gevent" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import argparse
import time

import _common as C

CONTENDERS = ("thread", "gevent", "twisted")
INITIAL_DELAY = 0.05


def child_rcf(args):
    import random
    import threading

    random.seed(args.seed)
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    if args.backend == "gevent":
        import gevent.event

        all_lost = gevent.event.Event()
    else:
        all_lost = threading.Event()
    n = args.n
    armed = [False]
    lost = [None] * n
    told = [None] * n
    back = [None] * n
    lost_count = [0]

    class Timed(ReconnectingClientFactory):
        index = 0
        noisy = False

        def resetDelay(self):
            if armed[0] and back[self.index] is None:
                back[self.index] = time.monotonic()
            super().resetDelay()

        def clientConnectionLost(self, connector, reason):
            if armed[0] and told[self.index] is None:
                told[self.index] = time.monotonic()
            super().clientConnectionLost(connector, reason)

    def on_disconnect_for(i):
        def on_disconnect(reason):
            if armed[0] and lost[i] is None:
                lost[i] = time.monotonic()
                lost_count[0] += 1
                if lost_count[0] == n:
                    all_lost.set()
        return on_disconnect

    address = (C.HOST, args.port)
    clients = []
    for i in range(n):
        f = Timed(initialDelay=INITIAL_DELAY)
        f.index = i
        clients.append(ReconnectingClient(address, factory=f, backend=args.backend,
                                          on_disconnect=on_disconnect_for(i)))
    for c in clients:
        c.start()
    ports = []
    for c in clients:
        ports.append(c.wait_connected(timeout=60).getsockname()[1])
    C.control(args.ctrl_port, "clear")
    time.sleep(0.2)  # settle
    armed[0] = True
    drop = C.control(args.ctrl_port, "drop")
    all_lost.wait(30)
    for c in clients:
        c.wait_connected(timeout=30)
    confirmed = time.monotonic()
    log = C.control(args.ctrl_port, "log")
    for c in clients:
        c.close()
    C.emit({"drop": drop, "lost": lost, "told": told, "back": back, "ports": ports, "confirmed": confirmed,
            "accepts": log["accepts"], "closes": log["closes"]})


def child_twisted(args):
    import random

    from twisted.internet import protocol, reactor, threads

    random.seed(args.seed)
    n = args.n
    lost = [None] * n
    back = [None] * n
    ports = [None] * n
    state = {"armed": False, "connected": 0, "back": 0, "lost": 0}
    out = {}

    class Proto(protocol.Protocol):
        def connectionMade(self):
            f = self.factory
            f.resetDelay()
            if ports[f.index] is None:
                ports[f.index] = self.transport.getHost().port
                state["connected"] += 1
                if state["connected"] == n:
                    reactor.callLater(0.2, start_drop)
            elif state["armed"] and back[f.index] is None:
                back[f.index] = time.monotonic()
                state["back"] += 1
                if state["back"] == n:
                    out["confirmed"] = time.monotonic()
                    d = threads.deferToThread(C.control, args.ctrl_port, "log")
                    d.addCallback(finish)
                    d.addErrback(fail)

    class Factory(protocol.ReconnectingClientFactory):
        protocol = Proto
        initialDelay = INITIAL_DELAY
        noisy = False
        index = 0

        def clientConnectionLost(self, connector, reason):
            if state["armed"] and lost[self.index] is None:
                lost[self.index] = time.monotonic()
            super().clientConnectionLost(connector, reason)

    factories = []
    for i in range(n):
        f = Factory()
        f.delay = INITIAL_DELAY
        f.index = i
        factories.append(f)

    def go():
        for f in factories:
            reactor.connectTCP(C.HOST, args.port, f, timeout=30)

    def start_drop():
        C.control(args.ctrl_port, "clear")
        state["armed"] = True
        # From a thread, so the reactor keeps noticing losses while the
        # server is closing.
        d = threads.deferToThread(C.control, args.ctrl_port, "drop")
        d.addCallback(lambda drop: out.__setitem__("drop", drop))
        d.addErrback(fail)

    def finish(log):
        out.update({"lost": lost, "back": back, "ports": ports, "accepts": log["accepts"],
                    "closes": log["closes"]})
        for f in factories:
            f.stopTrying()
        reactor.stop()

    def fail(failure):
        out["error"] = str(failure.value)
        reactor.stop()

    def give_up():
        out.setdefault("error", f"timed out: connected {state['connected']}, back {state['back']}")
        reactor.stop()

    reactor.callWhenRunning(go)
    reactor.callLater(90, give_up)
    reactor.run(installSignalHandlers=False)
    if "error" in out:
        sys.exit(f"twisted child: {out['error']}")
    C.emit(out)


def analyse(res):
    """Numbers in milliseconds from one child's raw result."""
    drop_t0 = res["drop"]["t0"]
    closes = {int(k): v for k, v in res["closes"].items()}
    lost = res["lost"]
    told = res.get("told", lost)  # Twisted: clientConnectionLost is both
    back = res["back"]
    notice_own = [(t - closes[p]) * 1e3 for t, p in zip(lost, res["ports"])
                  if t is not None and p in closes]
    told_own = [(t - closes[p]) * 1e3 for t, p in zip(told, res["ports"])
                if t is not None and p in closes]
    notice_drop = [(t - drop_t0) * 1e3 for t in lost if t is not None]
    back_ms = [(b - drop_t0) * 1e3 for b in back if b is not None]
    accepts = [a for a in res["accepts"] if a >= drop_t0]
    n = len(lost)
    return {
        "n": n,
        "drop_ms": (res["drop"]["t1"] - drop_t0) * 1e3,
        "noticed": len(notice_drop),
        "notice_own_p50": C.percentile(notice_own, 50),
        "notice_own_max": max(notice_own) if notice_own else None,
        "told_own_p50": C.percentile(told_own, 50),
        "told_own_max": max(told_own) if told_own else None,
        "notice_drop_p50": C.percentile(notice_drop, 50),
        "notice_drop_max": max(notice_drop) if notice_drop else None,
        "back_count": len(back_ms),
        "back_p50": C.percentile(back_ms, 50),
        "all_back": max(back_ms) if len(back_ms) == n else None,
        "confirmed": (res["confirmed"] - drop_t0) * 1e3 if res.get("confirmed") else None,
        "server_last_accept": (max(accepts) - drop_t0) * 1e3 if accepts else None,
        "accepts": len(accepts),
        "peak_10ms": C.max_in_window(accepts, 0.010),
    }


def run_one(contender, n, seed):
    with C.ServerProcess("select") as server:
        res = C.run_child([__file__, "--child", contender, "-n", str(n), "--port", str(server.port),
                           "--ctrl-port", str(server.ctrl_port), "--seed", str(seed)], timeout=240)
    return analyse(res)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--rounds", type=int)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ctrl-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        C.watchdog(200)
        C.raise_nofile()
        args.backend = args.child
        return child_twisted(args) if args.child == "twisted" else child_rcf(args)

    sizes = [max(1, min(int(x), 10000)) for x in args.sizes.split(",")]
    rounds = max(1, min(args.rounds or (1 if args.quick else 5), 20))
    contenders = [c for c in args.contenders.split(",") if c in CONTENDERS]
    C.watchdog(3600)
    C.raise_nofile()
    C.print_header("Recovery: the server drops all N connections at once")
    print(f"policy: initialDelay={INITIAL_DELAY}, factor and jitter Twisted's defaults; "
          f"{rounds} round(s)\n")
    sys.stdout.flush()
    results = {}
    failures = []
    for n in sizes:
        for r in range(rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for contender in order:
                try:
                    res = run_one(contender, n, seed=1000 * n + r)
                    res["round"] = r
                    results.setdefault((contender, n), []).append(res)
                except (RuntimeError, KeyError, ValueError) as exc:
                    failures.append(f"{contender} N={n} round {r + 1}: {str(exc)[:400]}")

    verdicts = []
    for n in sizes:
        rows = []
        tw = results.get(("twisted", n), [])
        for contender in contenders:
            runs = results.get((contender, n), [])
            if not runs:
                rows.append([contender, "failed"] + [""] * 10)
                continue

            def med(key, runs=runs):
                return C.median([x[key] for x in runs])

            ratios = []
            for x in runs:
                t = next((y for y in tw if y["round"] == x["round"]), None)
                if t and t["all_back"] and x["all_back"] is not None:
                    ratios.append(x["all_back"] / t["all_back"])
            ratio = C.median(ratios)
            rows.append([
                contender, C.fmt(med("drop_ms"), ".1f"),
                f"{C.fmt(med('notice_own_p50'), '.2f')} / {C.fmt(med('notice_own_max'), '.2f')}",
                f"{C.fmt(med('told_own_p50'), '.2f')} / {C.fmt(med('told_own_max'), '.2f')}",
                f"{C.fmt(med('notice_drop_p50'), '.2f')} / {C.fmt(med('notice_drop_max'), '.2f')}",
                C.fmt(med("back_p50"), ".1f"), C.fmt(med("all_back"), ".1f"),
                C.fmt(ratio, ".2f"), C.fmt(med("server_last_accept"), ".1f"),
                C.fmt(med("confirmed"), ".1f"), C.fmt(med("peak_10ms"), ".0f"),
                C.fmt(med("accepts"), ".0f"),
            ])
            if contender != "twisted":
                twm = C.median([y["all_back"] for y in tw])
                diffs = []
                for x in runs:
                    t = next((y for y in tw if y["round"] == x["round"]), None)
                    if t and t["all_back"] and x["all_back"] is not None:
                        diffs.append(x["all_back"] - t["all_back"])
                diff = C.median(diffs)
                verdicts.append(
                    f"- {contender} N={n}: all back in {C.fmt(med('all_back'), '.1f')} ms vs Twisted "
                    f"{C.fmt(twm, '.1f')} ms (per-round ratio {C.fmt(ratio)}, difference "
                    f"{C.fmt(diff, '+.1f')} ms): "
                    + ("met" if ratio is not None and ratio <= 1.0 else "NOT met")
                    + " (target: no later than Twisted)")
        print(f"## N = {n}\n")
        print(C.table(["contender", "drop took (ms)", "notice p50 / max (ms, own close)",
                       "factory told p50 / max (ms, own close)",
                       "notice p50 / max (ms, drop start)", "back p50 (ms)", "all back (ms)",
                       "/ Twisted", "server last accept (ms)", "wait_connected all (ms)",
                       "peak accepts / 10 ms", "accepts"], rows))
        print()
        sys.stdout.flush()
    print("## Target\n")
    print("\n".join(verdicts))
    if failures:
        print("\n## Failures\n")
        print("\n".join(f"- {f}" for f in failures))
    print("\nAll times from the start of the drop (the server closing its first socket) unless "
          "said otherwise; 'own close': since the server closed that client's connection. "
          "'notice': on_disconnect ran (Twisted: clientConnectionLost); 'factory told': "
          "clientConnectionLost ran on the loop (on the gevent backend on_disconnect runs later, in "
          "a greenlet of its own). 'all back': the last client's new connection "
          "(resetDelay() / connectionMade). "
          "'wait_connected all': when wait_connected() had returned on every client, checked after "
          "all losses were seen (Twisted: when the last connectionMade ran). Medians over rounds; "
          "ratio to Twisted per round.")


if __name__ == "__main__":
    main()
