"""Check the herd simulation (``schedule --clients``) against a real
loopback run: N clients lose the server at the same instant, it stays down
for a while, then returns; compare the peak connects it sees per 100 ms
after its return, and the time until all are back, for each jitter mode.

    python benchmarks/herd.py [--quick] [--clients 1000] [--down 1.0]

Policy: initialDelay 0.05 s, Twisted's factor and jitter, maxDelay 2 s (a
fast version of the defaults, so that a run takes seconds). The server runs
in its own process and logs every accept; the clients use the thread
backend in this process.
"""

import argparse
import multiprocessing
import random
import resource
import selectors
import socket
import sys
import time

from rcf_sync import ReconnectingClient, ReconnectingClientFactory, State
from rcf_sync._policy import JITTER_MODES
from rcf_sync._simulate import simulate_herd

POLICY = {"initialDelay": 0.05, "maxDelay": 2.0}


def _server(conn):
    """Commands on ``conn``: ("up", port) -> port; ("down",) -> None;
    ("log",) -> accept times (monotonic) since the last "up"; ("quit",)."""
    sel = selectors.DefaultSelector()
    listener, accepted, log = None, [], []
    while True:
        if conn.poll(0 if listener else None):
            cmd = conn.recv()
            if cmd[0] == "up":
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", cmd[1]))
                listener.listen(4096)
                listener.setblocking(False)
                sel.register(listener, selectors.EVENT_READ)
                log = []
                conn.send(listener.getsockname()[1])
            elif cmd[0] == "down":
                sel.unregister(listener)
                listener.close()
                listener = None
                for c in accepted:
                    c.close()
                accepted = []
                conn.send(None)
            elif cmd[0] == "log":
                conn.send(log)
            else:
                return
            continue
        for _key, _ in sel.select(0.005):
            while True:
                try:
                    c, _ = listener.accept()
                except BlockingIOError:
                    break
                log.append(time.monotonic())
                accepted.append(c)


def peak(times, window=0.1):
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def real_run(n, down, mode, seed, ctl):
    port = ctl_call(ctl, ("up", 0))
    clients = []
    for i in range(n):
        f = ReconnectingClientFactory(jitterMode=mode, rng=random.Random(f"{seed}:{i}"), **POLICY)
        f.noisy = False
        clients.append(ReconnectingClient(("127.0.0.1", port), factory=f, backend="thread"))
    for c in clients:
        c.start()
    for c in clients:
        c.wait_connected(timeout=60)
    ctl_call(ctl, ("down",))
    time.sleep(down)  # the outage itself
    ctl_call(ctl, ("up", port))
    up_at = time.monotonic()
    for c in clients:
        c.wait_state(State.CONNECTED, timeout=120)
    all_back = time.monotonic() - up_at
    times = ctl_call(ctl, ("log",))
    for c in clients:
        c.close()
    ctl_call(ctl, ("down",))
    return {"peak_after_return": peak(times), "all_back_after": all_back, "accepts": len(times)}


def ctl_call(ctl, cmd):
    ctl.send(cmd)
    return ctl.recv()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--down", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = 200 if args.quick else args.clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctl, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_server, args=(child,), daemon=True)
    proc.start()
    print("command:", " ".join([sys.executable] + sys.argv))
    print(f"{n} clients, server down {args.down:g}s; policy {POLICY} + Twisted's factor and jitter\n")
    print(f"{'jitter mode':<14}{'peak/100ms sim':>15}{'peak/100ms real':>16}"
          f"{'all back sim':>14}{'all back real':>15}")
    try:
        for mode in JITTER_MODES:
            sim = simulate_herd(n, down=args.down, policy=POLICY, jitter_mode=mode, seed=args.seed)
            real = real_run(n, args.down, mode, args.seed, ctl)
            print(f"{mode:<14}{sim['peak_after_return']:>15}{real['peak_after_return']:>16}"
                  f"{sim['all_back_after']:>13.3f}s{real['all_back_after']:>14.3f}s")
    finally:
        ctl.send(("quit",))
        proc.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
