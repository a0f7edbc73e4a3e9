"""Soak: many callers share one ReconnectingClient while its server dies.

Worker threads (``--workers``) or, in a child process under
``gevent.monkey.patch_all()``, greenlets (``--greenlets``) make echo round
trips with unique payloads through one ``ReconnectingClient``
(``call(echo, payload, attempts=3, timeout=5)``), while an echo server in the
same process is killed (listener closed, every connection closed) and
restarted on the same port at least ``--restarts`` times.

Checked, for each mode:

* every request that raised raised ``rcf_sync.ConnectionLost`` or
  ``rcf_sync.ConnectTimeout`` (anything else is a failure);
* no caller ever got a reply that was not the echo of its own payload;
* after ``close()``: no rcf_sync thread alive, no socket left open, no
  greenlet left running;
* every restart happened, and the client saw the losses.

Usage::

    python benchmarks/soak.py            # both modes, about a minute
    python benchmarks/soak.py --quick    # both modes, under 10 s
    python benchmarks/soak.py --mode thread --workers 16 --restarts 500 --duration 100

It prints a table and the command line that produced it, and exits 1 when a
check fails. ``run_soak()`` is the same run as a function (the test suite
calls it with a short configuration).
"""

import sys

_CHILD_FLAG = "--gevent-child"
if __name__ == "__main__" and _CHILD_FLAG in sys.argv:
    # Before anything imports socket or threading.
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # measure the checkout this script lives in
    sys.path.insert(0, REPO)

import rcf_sync  # noqa: E402
from rcf_sync import ConnectionLost, ConnectTimeout  # noqa: E402
from rcf_sync.testing import EchoServer  # noqa: E402

__all__ = ["run_soak", "main"]

ALLOWED = (ConnectionLost, ConnectTimeout)
IO_TIMEOUT = 5.0
JOIN_TIMEOUT = 30.0
FULL = {"workers": 8, "greenlets": 200, "restarts": 200, "duration": 55.0}
QUICK = {"workers": 4, "greenlets": 50, "restarts": 40, "duration": 4.0}


def _echo(sock, payload):
    sock.settimeout(IO_TIMEOUT)
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(min(65536, len(payload) - len(got)))
        if not chunk:
            raise ConnectionResetError(f"peer closed after {len(got)} of {len(payload)} bytes")
        got += chunk
    return bytes(got)


def _open_sockets():
    """Descriptors of this process that are sockets (Linux /proc)."""
    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except FileNotFoundError:  # pragma: no cover - not Linux
        return found
    for fd in names:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
        except OSError:
            pass
    return found


def _our_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("rcf_sync") and t.is_alive()]


def _live_greenlets():
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return []
    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]


def _soak_here(callers, restarts, duration, green):
    """The soak in this process: ``callers`` threads, or greenlets when
    ``green`` (the process must then be monkey-patched)."""
    if green:
        import gevent

        gevent.get_hub()  # its descriptors belong to the baseline
    baseline = _open_sockets()
    rng = random.Random(20261127)
    server = EchoServer().start()
    factory = rcf_sync.ReconnectingClientFactory(initialDelay=0.005, maxDelay=0.05)
    client = rcf_sync.ReconnectingClient(server.address, factory=factory, backend="auto",
                                         name="soak")
    backend = repr(client).rsplit("backend=", 1)[1].rstrip(">")
    stop = threading.Event()
    tallies = [{"ok": 0, "mismatched": 0, "raised": {}, "other": []} for _ in range(callers)]

    def worker(n):
        mine = tallies[n]
        wrng = random.Random(n)
        i = 0
        while not stop.is_set():
            i += 1
            payload = b"<%d:%d:" % (n, i) + wrng.randbytes(wrng.randrange(8, 4096)) + b">"
            try:
                got = client.call(_echo, payload, attempts=3, timeout=5)
            except ALLOWED as exc:
                name = type(exc).__name__
                mine["raised"][name] = mine["raised"].get(name, 0) + 1
                continue
            except Exception as exc:  # a failure of the soak: recorded, reported
                mine["other"].append(f"{type(exc).__name__}: {exc}")
                continue
            if got != payload:
                mine["mismatched"] += 1
            mine["ok"] += 1

    started = time.monotonic()
    deadline = started + duration
    client.start()
    if green:
        import gevent

        runners = [gevent.spawn(worker, n) for n in range(callers)]
    else:
        runners = [threading.Thread(target=worker, args=(n,), name=f"soak-caller-{n}", daemon=True)
                   for n in range(callers)]
        for r in runners:
            r.start()

    # The kill/restart schedule: sleeping *is* the schedule here (server up
    # for a while, then down for a while), not a wait for something.
    cycle = max(0.01, min(0.25, 0.85 * duration / max(1, restarts)))
    done = 0
    for _ in range(restarts):
        if time.monotonic() >= deadline:
            break
        time.sleep(rng.uniform(0.5, 0.85) * cycle)
        server.stop()
        time.sleep(rng.uniform(0.0, 0.15) * cycle)
        server.start()
        done += 1
    time.sleep(min(0.2, cycle))  # a last stretch of service after the final restart
    stop.set()
    join_deadline = time.monotonic() + JOIN_TIMEOUT
    for r in runners:
        r.join(max(0.0, join_deadline - time.monotonic()))
    hung_callers = sum(1 for r in runners if (not r.dead if green else r.is_alive()))
    stats = client.stats
    client.close()
    server.stop()
    elapsed = time.monotonic() - started

    wait_until = time.monotonic() + 5.0  # the background joins its threads on close
    while _our_threads() and time.monotonic() < wait_until:
        time.sleep(0.05)
    threads_left = _our_threads()
    greenlets_left = len(_live_greenlets()) if green else 0
    gc.collect()
    sockets_left = len(_open_sockets() - baseline)

    raised = {}
    other = []
    for t in tallies:
        for k, v in t["raised"].items():
            raised[k] = raised.get(k, 0) + v
        other += t["other"]
    result = {
        "mode": "gevent" if green else "thread",
        "backend": backend,
        "callers": callers,
        "restarts_asked": restarts,
        "restarts_done": done,
        "seconds": round(elapsed, 2),
        "requests_ok": sum(t["ok"] for t in tallies),
        "raised": raised,
        "raised_total": sum(raised.values()),
        "other_errors": other[:10],
        "other_count": len(other),
        "mismatched": sum(t["mismatched"] for t in tallies),
        "hung_callers": hung_callers,
        "threads_left": threads_left,
        "sockets_left": sockets_left,
        "greenlets_left": greenlets_left,
        "connects": stats.connects,
        "losses": stats.losses,
        "connect_failures": stats.connect_failures,
    }
    result["failures"] = _checks(result)
    result["ok"] = not result["failures"]
    return result


def _checks(r):
    failures = []
    if r["other_count"]:
        failures.append(f"{r['other_count']} requests raised something other than "
                        f"ConnectionLost/ConnectTimeout, e.g. {r['other_errors'][:3]}")
    if r["mismatched"]:
        failures.append(f"{r['mismatched']} replies did not match their request")
    if r["hung_callers"]:
        failures.append(f"{r['hung_callers']} callers still running {JOIN_TIMEOUT:g}s after the end")
    if r["threads_left"]:
        failures.append(f"rcf_sync threads alive after close: {r['threads_left']}")
    if r["sockets_left"]:
        failures.append(f"{r['sockets_left']} sockets left open")
    if r["greenlets_left"]:
        failures.append(f"{r['greenlets_left']} greenlets left running")
    if r["restarts_done"] < r["restarts_asked"]:
        failures.append(f"only {r['restarts_done']} of {r['restarts_asked']} restarts "
                        "within the duration cap")
    if r["requests_ok"] == 0:
        failures.append("no request succeeded")
    if r["restarts_done"] and r["losses"] == 0:
        failures.append("the client never saw a loss: the restarts did not reach it")
    if r["mode"] == "gevent" and r["backend"] != "gevent":
        failures.append(f"backend='auto' chose {r['backend']!r} under monkey-patching")
    return failures


def run_soak(workers=8, restarts=200, mode="thread", duration=55.0):
    """Run one soak and return its result (a dict; ``result["ok"]`` and
    ``result["failures"]`` say whether every check passed).

    ``mode="thread"`` runs ``workers`` threads in this process;
    ``mode="gevent"`` runs ``workers`` greenlets in a child process under
    ``gevent.monkey.patch_all()``. ``duration`` caps the restart schedule
    (seconds); the whole run ends within about ``duration + 35`` seconds."""
    if mode == "thread":
        return _soak_here(workers, restarts, duration, green=False)
    if mode != "gevent":
        raise ValueError(f"mode must be 'thread' or 'gevent', got {mode!r}")
    cmd = [sys.executable, os.path.abspath(__file__), _CHILD_FLAG, "--greenlets", str(workers),
           "--restarts", str(restarts), "--duration", str(duration)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        return _child_failure(workers, restarts, f"child did not end: {exc}")
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        return _child_failure(workers, restarts, f"child exited {proc.returncode} without a "
                              f"result; stderr: {proc.stderr.strip()[-2000:]}")
    if proc.stderr.strip():
        result["failures"].append(f"child wrote to stderr: {proc.stderr.strip()[-2000:]}")
        result["ok"] = False
    return result


def _child_failure(callers, restarts, message):
    return {"mode": "gevent", "backend": "?", "callers": callers, "restarts_asked": restarts,
            "restarts_done": 0, "failures": [message], "ok": False}


ROWS = [
    ("backend", lambda r: r["backend"]),
    ("callers", lambda r: f"{r['callers']} {'greenlets' if r['mode'] == 'gevent' else 'threads'}"),
    ("restarts done/asked", lambda r: f"{r['restarts_done']}/{r['restarts_asked']}"),
    ("seconds", lambda r: f"{r['seconds']:.1f}"),
    ("requests ok", lambda r: r["requests_ok"]),
    ("requests/s", lambda r: f"{r['requests_ok'] / max(r['seconds'], 1e-9):.0f}"),
    ("raised ConnectionLost", lambda r: r["raised"].get("ConnectionLost", 0)),
    ("raised ConnectTimeout", lambda r: r["raised"].get("ConnectTimeout", 0)),
    ("raised anything else", lambda r: r["other_count"]),
    ("mismatched replies", lambda r: r["mismatched"]),
    ("client connects", lambda r: r["connects"]),
    ("client losses", lambda r: r["losses"]),
    ("failed attempts", lambda r: r["connect_failures"]),
    ("callers hung", lambda r: r["hung_callers"]),
    ("rcf_sync threads left", lambda r: len(r["threads_left"])),
    ("sockets left", lambda r: r["sockets_left"]),
    ("greenlets left", lambda r: r["greenlets_left"]),
    ("result", lambda r: "PASS" if r["ok"] else "FAIL"),
]


def format_table(results):
    cells = [[label] + [_cell(fn, r) for r in results] for label, fn in ROWS]
    head = ["mode"] + [r["mode"] for r in results]
    widths = [max(len(str(row[i])) for row in cells + [head]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths)))
             for row in [head] + cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(fn, r):
    try:
        return fn(r)
    except (KeyError, TypeError):
        return "-"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under 10 s)")
    parser.add_argument("--mode", choices=("both", "thread", "gevent"), default="both")
    parser.add_argument("--workers", type=int, help=f"caller threads (default {FULL['workers']})")
    parser.add_argument("--greenlets", type=int,
                        help=f"caller greenlets in the gevent mode (default {FULL['greenlets']})")
    parser.add_argument("--restarts", type=int, help=f"server restarts (default {FULL['restarts']})")
    parser.add_argument("--duration", type=float,
                        help=f"cap in seconds on each mode's restart schedule "
                             f"(default {FULL['duration']:g}; the whole run stays under 2 minutes)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(_CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    workers = args.workers or preset["workers"]
    greenlets = args.greenlets or preset["greenlets"]
    restarts = args.restarts if args.restarts is not None else preset["restarts"]
    duration = args.duration or preset["duration"]
    for name, value in (("workers", workers), ("greenlets", greenlets), ("duration", duration)):
        if value <= 0:
            parser.error(f"--{name} must be > 0")
    if restarts < 0:
        parser.error("--restarts must be >= 0")

    if args.gevent_child:
        import signal

        signal.alarm(int(duration) + 50)  # a hard stop if something hangs
        result = _soak_here(greenlets, restarts, duration, green=True)
        print(json.dumps(result))
        return 0

    results = []
    if args.mode in ("both", "thread"):
        results.append(run_soak(workers, restarts, "thread", duration))
    if args.mode in ("both", "gevent"):
        results.append(run_soak(greenlets, restarts, "gevent", duration))
    print("rcf_sync soak: callers share one ReconnectingClient while the echo server is "
          "killed and restarted")
    print("command:", shlex.join([sys.executable] + sys.argv))
    print()
    print(format_table(results))
    print()
    failures = [f"{r['mode']}: {f}" for r in results for f in r["failures"]]
    for f in failures:
        print("FAILED", f)
    if not failures:
        print("all checks passed")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
