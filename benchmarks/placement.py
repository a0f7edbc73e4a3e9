"""Connect-all of a small burst, and where the scheduler put each task.

``scale.py``'s connect-all of 100 thread-backend clients moves between
rounds by more than its own differences from Twisted. This script repeats
that burst (after 10 warm-up connections, in a fresh child process and
against a fresh select echo server each time, the contenders alternating)
and, per round, says what else happened:

* wall time, the child's CPU time (all its threads), and the involuntary
  context switches of its threads during the burst (the CPU taken from a
  runnable thread of ours);
* with ``--trace`` (needs write access to ``/sys/kernel/tracing``: root),
  the kernel's ``sched_switch`` events of the burst, bracketed by markers
  the child writes: who took the CPU from the child's threads, on which CPU
  the echo server ran during the burst, and on which CPU the server and the
  child's threads had last run before it.

Contenders: ``thread`` (``start()`` of each client, then ``wait_connected()``
in start order), ``thread-once`` (waited on in reverse order), ``twisted``
(N ``connectTCP`` until the N-th ``connectionMade``). The summary gives the
medians over all rounds, and over the rounds where the child was preempted
fewer than 5 times, with the ratios to Twisted taken within each round.

    python benchmarks/placement.py                  # N = 100, 9 rounds
    python benchmarks/placement.py --trace          # and the scheduler's events (root)
    python benchmarks/placement.py --one-cpu        # server on one CPU, each child on another
    python benchmarks/placement.py --quick          # 3 rounds
"""

import argparse
import collections
import gc
import os
import re
import sys
import time

import _common as C

CONTENDERS = ("thread", "thread-once", "twisted")
WARM = 10
TRACING = "/sys/kernel/tracing"
CALM = 5  # preemptions below which a round counts as undisturbed


# -- children -----------------------------------------------------------------------

def _marker():
    if os.environ.get("RCF_PLACEMENT_TRACE"):
        return open(os.path.join(TRACING, "trace_marker"), "w", buffering=1)
    return None


def _tids():
    return [int(t) for t in os.listdir("/proc/self/task")]


def child_rcf(port, n, once):
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    address = (C.HOST, port)
    warm = [ReconnectingClient(address, backend="thread").start() for _ in range(WARM)]
    for c in warm:
        c.wait_connected(timeout=30)
    clients = [ReconnectingClient(address, factory=ReconnectingClientFactory(initialDelay=0.05),
                                  backend="thread") for _ in range(n)]
    gc.collect()
    mark = _marker()
    if mark:
        mark.write("BURST_START\n")
    pre0, c0, t0 = C.preemptions(), time.process_time(), time.perf_counter()
    for c in clients:
        c.start()
    for c in (clients[::-1] if once else clients):
        c.wait_connected(timeout=30)
    out = {"wall_ms": (time.perf_counter() - t0) * 1e3, "cpu_ms": (time.process_time() - c0) * 1e3,
           "preempted": C.preemptions() - pre0, "tids": _tids()}
    if mark:
        mark.write("BURST_END\n")
    for c in clients + warm:
        c.close()
    C.emit(out)


def child_twisted(port, n):
    from twisted.internet import protocol, reactor

    state = {"connected": 0, "warm": 0}
    out = {}
    keep = []

    class Idle(protocol.Protocol):
        def connectionMade(self):
            state["connected"] += 1
            if state["connected"] == n:
                out.update(wall_ms=(time.perf_counter() - state["t0"]) * 1e3,
                           cpu_ms=(time.process_time() - state["c0"]) * 1e3,
                           preempted=C.preemptions() - state["pre0"], tids=_tids())
                if state["mark"]:
                    state["mark"].write("BURST_END\n")
                reactor.stop()

    Factory = C.twisted_factory(Idle)

    class Warm(protocol.Protocol):
        def connectionMade(self):
            state["warm"] += 1
            if state["warm"] == WARM:
                reactor.callLater(0, burst)

    def burst():
        factories = [Factory() for _ in range(n)]
        keep.extend(factories)
        gc.collect()
        state["mark"] = _marker()
        if state["mark"]:
            state["mark"].write("BURST_START\n")
        state["pre0"], state["c0"] = C.preemptions(), time.process_time()
        state["t0"] = time.perf_counter()
        for f in factories:
            reactor.connectTCP(C.HOST, port, f, timeout=30)

    def warm_up():
        for _ in range(WARM):
            f = protocol.ReconnectingClientFactory()
            f.protocol, f.noisy = Warm, False
            keep.append(f)
            reactor.connectTCP(C.HOST, port, f, timeout=30)

    reactor.callWhenRunning(warm_up)
    reactor.callLater(60, reactor.stop)
    reactor.run(installSignalHandlers=False)
    C.emit(out if out else {"error": f"{state['connected']} of {n} connected"})


# -- the kernel's trace -------------------------------------------------------------

_EVENT = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$")


def _tracing(on):
    with open(os.path.join(TRACING, "tracing_on"), "w") as f:
        f.write("1" if on else "0")


def trace_start():
    _tracing(False)
    with open(os.path.join(TRACING, "trace"), "w") as f:
        f.write("")
    with open(os.path.join(TRACING, "buffer_size_kb"), "w") as f:
        f.write("8192")
    with open(os.path.join(TRACING, "set_event"), "w") as f:
        f.write("sched:sched_switch\n")
    _tracing(True)


def trace_stop():
    """Stop tracing, disable the events :func:`trace_start` enabled (they
    stay armed otherwise) and return the trace's lines."""
    _tracing(False)
    with open(os.path.join(TRACING, "trace")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(TRACING, "set_event"), "w") as f:
        f.write("")
    return lines


def trace_read(lines, tids, server_pid):
    """What the trace's ``lines`` say about the burst of the child whose
    threads are ``tids``."""
    last_cpu = {}  # task id -> the CPU it last ran on
    mine = set(tids)
    result = None
    for line in lines:
        m = _EVENT.match(line)
        if not m:
            continue
        _comm, pid, cpu, _ts, event, rest = m.groups()
        if event == "tracing_mark_write" and "BURST_START" in rest:
            result = {"before": dict(last_cpu), "by": collections.Counter(),
                      "server_cpus": collections.Counter(), "our_cpus": collections.Counter()}
            continue
        if event == "tracing_mark_write" and "BURST_END" in rest:
            break
        if event != "sched_switch":
            continue
        fields = dict(kv.split("=", 1) for kv in rest.replace(" ==> ", " ").split() if "=" in kv)
        nxt, prev = int(fields["next_pid"]), int(fields["prev_pid"])
        last_cpu[nxt] = int(cpu)
        if result is None:
            continue
        if nxt == server_pid:
            result["server_cpus"][int(cpu)] += 1
        if nxt in mine:
            result["our_cpus"][int(cpu)] += 1
        if fields["prev_state"].startswith("R") and prev in mine:
            who = "echo server" if nxt == server_pid else fields["next_comm"]
            result["by"][who] += 1
    if result is None:
        return None
    tasks = sorted(t for t in mine)
    before = result["before"]
    return {
        "preempted_by": dict(result["by"]),
        "server_ran_on": sorted(result["server_cpus"]),
        "ours_ran_on": sorted(result["our_cpus"]),
        "server_before": before.get(server_pid),
        "ours_before": [before.get(t) for t in tasks],
    }


# -- parent -------------------------------------------------------------------------

def run_round(contender, n, cpus, trace):
    import json
    import subprocess

    with C.ServerProcess("select") as server:
        if cpus:
            os.sched_setaffinity(server.proc.pid, {cpus[0]})
        env = C.child_env({"RCF_PLACEMENT_TRACE": "1"} if trace else None)
        cmd = [sys.executable, __file__, "--child", contender, "-n", str(n),
               "--port", str(server.port)] + (["--cpu", str(cpus[1])] if cpus else [])
        events = []
        if trace:
            trace_start()  # before the child: its markers fail while tracing is off
        try:
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=C.REPO)
            try:
                out, err = child.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
        finally:
            if trace:
                events = trace_stop()  # also when the child failed
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if child.returncode != 0 or not lines:
            return {"error": (err or out)[-500:]}
        res = json.loads(lines[-1])
        traced = (trace_read(events, res.get("tids", [child.pid]), server.proc.pid)
                  if trace else None)
        if traced:
            res.update(traced)
        return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--rounds", type=int)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trace", action="store_true", help="record the scheduler's events (root)")
    p.add_argument("--one-cpu", action="store_true",
                   help="pin the server to one CPU and each contender's process to another")
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    n = max(1, min(args.n, 5000))
    if args.child:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        C.watchdog(90)
        C.raise_nofile()
        if args.child == "twisted":
            child_twisted(args.port, n)
        else:
            child_rcf(args.port, n, args.child == "thread-once")
        return

    rounds = max(1, min(args.rounds or (3 if args.quick else 9), 50))
    cpus = C.cpu_pair(p) if args.one_cpu else None
    if args.trace and not os.access(os.path.join(TRACING, "trace_marker"), os.W_OK):
        p.error(f"--trace needs write access to {TRACING} (root, tracefs mounted)")
    C.watchdog(3600)
    C.raise_nofile()
    C.print_header("Connect-all of a small burst, and where the scheduler put each task")
    print(f"N = {n}, {rounds} rounds" + (f"; server on CPU {cpus[0]}, each child on CPU {cpus[1]}"
                                         if cpus else "") + "\n")
    results = collections.defaultdict(list)
    rows = []
    for r in range(rounds):
        order = CONTENDERS[r % 3:] + CONTENDERS[:r % 3]
        for contender in order:
            res = run_round(contender, n, cpus, args.trace)
            res["round"] = r + 1
            results[contender].append(res)
            if "error" in res:
                rows.append([str(r + 1), contender, "failed: " + res["error"].splitlines()[-1][:60]]
                            + [""] * (7 if args.trace else 3))
                continue
            row = [str(r + 1), contender, f"{res['wall_ms']:.2f}", f"{res['cpu_ms']:.2f}",
                   str(res["preempted"])]
            if args.trace:
                by = ", ".join(f"{k} {v}" for k, v in sorted(res.get("preempted_by", {}).items()))
                row += [by or "-", str(res.get("server_before")),
                        " ".join(str(c) for c in res.get("ours_before", [])),
                        " ".join(map(str, res.get("server_ran_on", []))),
                        " ".join(map(str, res.get("ours_ran_on", [])))]
            rows.append(row)
    headers = ["round", "contender", "wall (ms)", "CPU (ms)", "preempted"]
    if args.trace:
        headers += ["taken by", "server's CPU before", "our threads' CPUs before",
                    "server ran on", "ours ran on"]
    print(C.table(headers, rows))

    tw = {x["round"]: x for x in results["twisted"] if "error" not in x}
    summary = []
    for contender in CONTENDERS:
        runs = [x for x in results[contender] if "error" not in x]
        calm = [x for x in runs if x["preempted"] < CALM]

        def ratio(subset, key):
            return C.median([x[key] / tw[x["round"]][key] for x in subset
                             if x["round"] in tw and tw[x["round"]][key]])

        summary.append([contender, f"{len(runs)}", C.fmt(C.median([x['wall_ms'] for x in runs])),
                        C.fmt(ratio(runs, "wall_ms")), C.fmt(ratio(runs, "cpu_ms")),
                        f"{len(runs) - len(calm)}",
                        C.fmt(C.median([x['wall_ms'] for x in calm])), C.fmt(ratio(calm, "wall_ms"))])
    print()
    print(C.table(["contender", "rounds", "wall, median (ms)", "/ Twisted", "CPU / Twisted",
                   f"rounds preempted >= {CALM} times", "wall, other rounds (ms)",
                   "/ Twisted, other rounds"], summary))
    print("\nwall: first start() (Twisted: connectTCP) to the last connection seen; CPU: the "
          "child's process time over the same span, all its threads; preempted: involuntary "
          "context switches of the child's threads over the span. Ratios to Twisted are taken "
          "within each round, medians shown.")


if __name__ == "__main__":
    main()
