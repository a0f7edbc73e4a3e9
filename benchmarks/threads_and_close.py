"""How many threads the thread backend uses for N clients, and how long
close() takes in each state.

    python benchmarks/threads_and_close.py [--quick]

Clients connect to an echo server in another process (so its threads do not
count). "Threads" is the number of threads of ours alive with all N clients
connected; close() is timed for one client in each state.
"""

import argparse
import multiprocessing
import resource
import socket
import statistics
import sys
import time

import rcf_sync
from rcf_sync import ReconnectingClient, ReconnectingClientFactory, State
from rcf_sync._backends._thread import get_runtime


def _serve(port_q, stop):
    import selectors

    sel = selectors.DefaultSelector()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    lst.setblocking(False)
    sel.register(lst, selectors.EVENT_READ)
    port_q.put(lst.getsockname()[1])
    conns = []
    while not stop.is_set():
        for _key, _ in sel.select(0.1):
            try:
                c, _ = lst.accept()
                conns.append(c)
            except BlockingIOError:
                pass


def _raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def threads_for(n, address):
    clients = [ReconnectingClient(address, backend="thread") for _ in range(n)]
    start = time.perf_counter()
    for c in clients:
        c.start()
    for c in clients:
        c.wait_connected(timeout=60)
    took = time.perf_counter() - start
    ours = len(get_runtime().threads())
    for c in clients:
        c.close()
    return ours, took


def close_time(state, address, refused):
    hang = None
    fillers = []
    if state == "CONNECTING":
        hang = socket.socket()
        hang.bind(("127.0.0.1", 0))
        hang.listen(0)
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(hang.getsockname())
            fillers.append(f)
        target = rcf_sync.TCPConnector(*hang.getsockname(), timeout=30)
    elif state in ("WAITING", "STOPPED"):
        target = refused
    else:
        target = address
    c = ReconnectingClient(target, backend="thread",
                           factory=ReconnectingClientFactory(initialDelay=60))
    if state != "IDLE":
        c.start()
        if state == "CONNECTED":
            c.wait_connected(timeout=10)
        elif state == "WAITING":
            c.wait_state(State.WAITING, timeout=10)
        elif state == "STOPPED":
            c.wait_state(State.WAITING, timeout=10)
            c.stop_trying()
        elif state == "CONNECTING":
            c.wait_state(State.CONNECTING, timeout=10)
    t = time.perf_counter()
    c.close()
    took = time.perf_counter() - t
    assert not get_runtime().threads(), "threads left after close()"
    for f in fillers:
        f.close()
    if hang is not None:
        hang.close()
    return took


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    _raise_fd_limit()
    q = multiprocessing.Queue()
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=_serve, args=(q, stop), daemon=True)
    proc.start()
    address = ("127.0.0.1", q.get(timeout=10))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    refused = ("127.0.0.1", s.getsockname()[1])
    s.close()
    try:
        print("command:", " ".join([sys.executable] + sys.argv))
        print(f"{'clients':>8} {'threads of ours':>16} {'connect all (s)':>16}")
        for n in (1, 100, 1000):
            ours, took = threads_for(n, address)
            print(f"{n:>8} {ours:>16} {took:>16.3f}")
        repeats = 3 if args.quick else 10
        print(f"\n{'state':>11} {'close() median (ms)':>20} {'max (ms)':>10}   ({repeats} runs)")
        for state in ("IDLE", "CONNECTING", "CONNECTED", "WAITING", "STOPPED"):
            times = [close_time(state, address, refused) for _ in range(repeats)]
            print(f"{state:>11} {statistics.median(times) * 1000:>20.2f} {max(times) * 1000:>10.2f}")
    finally:
        stop.set()
        proc.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
