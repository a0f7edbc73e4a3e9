"""How many connection attempts a dead server sees from a pool of workers,
compared with one client per worker, under the same policy.

    python benchmarks/pool_probes.py [--quick] [--workers 8] [--seconds 3]

Each connection attempt goes to a loopback port with nothing listening (so
it is refused at once) through a socket factory that counts it. The pool's
workers all wait for a connection for the whole run; the independent clients
each wait for their own.
"""

import argparse
import socket
import sys
import threading

from rcf_sync import ReconnectingClient, ReconnectingClientFactory, ReconnectingPool


class Counter:
    def __init__(self, address):
        self.address = address
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.n += 1
        return socket.create_connection(self.address, 1)


def policy():
    return ReconnectingClientFactory(initialDelay=0.05, factor=2.0, maxDelay=0.5, jitter=0)


def run(kind, workers, seconds, address):
    counter = Counter(address)
    if kind == "pool":
        handles = [ReconnectingPool(counter, workers, factory=policy(), backend="thread").start()]
        targets = handles * workers
    else:
        handles = [ReconnectingClient(counter, factory=policy(), backend="thread").start()
                   for _ in range(workers)]
        targets = handles

    def worker(h):
        try:
            with h.connection(timeout=seconds):
                pass
        except Exception:
            pass

    threads = [threading.Thread(target=worker, args=(h,)) for h in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)
    for h in handles:
        h.close()
    return counter.n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = s.getsockname()
    s.close()
    f = policy()
    expected, t, d = 1, 0.0, f.initialDelay
    while t + d <= seconds:
        t += d
        expected += 1
        d = min(d * f.factor, f.maxDelay)
    print("command:", " ".join([sys.executable] + sys.argv))
    print(f"policy: initialDelay=0.05 factor=2 maxDelay=0.5 jitter=0; {args.workers} workers "
          f"waiting {seconds:g}s for a dead server\n")
    print(f"{'':<28}{'attempts seen':>14}")
    pool = run("pool", args.workers, seconds, address)
    clients = run("clients", args.workers, seconds, address)
    print(f"{'one pool of ' + str(args.workers):<28}{pool:>14}")
    print(f"{str(args.workers) + ' independent clients':<28}{clients:>14}")
    print(f"{'one client, by the schedule':<28}{expected:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
