"""Connect-all in CPU instructions: rcf_sync beside Twisted, free of noise.

Wall times of connect-all drift by a third between runs on a shared VM; the
instructions a process executes to connect N clients do not. Each contender
runs in a child process under ``valgrind --tool=callgrind`` (which counts
every thread of the process, the loop thread included), twice: with 0 and
with N clients after the same start-up and 10 warm-up connections. The
difference over N is what one more client costs, from building its factory
and client to its connection being made:

* ``thread``: a ``ReconnectingClient`` with the library's own factory on the
  thread backend, all started, then waited on in reverse order (the caller
  is woken about once);
* ``gevent``: the same on the gevent backend, monkey-patched;
* ``twisted``: Twisted's ``ReconnectingClientFactory`` with ``connectTCP``
  in one reactor, until the N-th ``connectionMade``;
* ``floor``: no library, the system calls a thread-backend connect makes
  (``connect_floor.floor``: socket, options, ``connect_ex``, ``epoll``), in
  one loop of Python; it also closes its sockets at the end.

Each child ends with ``os._exit`` once all are connected, so closing is not
counted. The select echo server of ``_common.py`` runs in its own process,
not under valgrind. System calls count only their user-space side. Needs
valgrind (``apt-get install valgrind``).

    python benchmarks/connect_instructions.py            # N = 300, about 4 min
    python benchmarks/connect_instructions.py --quick    # N = 100, about 3 min
"""

import argparse
import os
import shutil
import sys

import _common as C

CONTENDERS = ("thread", "gevent", "twisted", "floor")
WARM = 10

CHILD = r'''
import sys
contender, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if contender == "gevent":
    from gevent import monkey
    monkey.patch_all()
import os
sys.path.insert(0, {root!r})
HOST, WARM = "127.0.0.1", {warm}

if contender == "floor":
    sys.path.insert(0, os.path.join({root!r}, "benchmarks"))
    from connect_floor import floor
    if n:
        floor((HOST, port), n)
    os._exit(0)
elif contender == "twisted":
    from twisted.internet import protocol, reactor

    state = {{"made": 0, "warm": 0}}

    class Idle(protocol.Protocol):
        def connectionMade(self):
            state["made"] += 1
            if state["made"] == n:
                os._exit(0)

    class Warm(protocol.Protocol):
        def connectionMade(self):
            state["warm"] += 1
            if state["warm"] == WARM:
                reactor.callLater(0, go)

    class Factory(protocol.ReconnectingClientFactory):
        protocol = Idle
        initialDelay = 0.05
        noisy = False

    keep = []

    def warm_up():
        for _ in range(WARM):
            f = protocol.ReconnectingClientFactory()
            f.protocol, f.noisy = Warm, False
            keep.append(reactor.connectTCP(HOST, port, f, timeout=30))

    def go():
        if n == 0:
            os._exit(0)
        for _ in range(n):
            keep.append(reactor.connectTCP(HOST, port, Factory(), timeout=30))

    reactor.callWhenRunning(warm_up)
    reactor.callLater(600, os._exit, 3)
    reactor.run(installSignalHandlers=False)
else:
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory

    warm = [ReconnectingClient((HOST, port), backend=contender).start() for _ in range(WARM)]
    for c in warm:
        c.wait_connected(timeout=120)
    clients = [ReconnectingClient((HOST, port), factory=ReconnectingClientFactory(initialDelay=0.05),
                                  backend=contender) for _ in range(n)]
    for c in clients:
        c.start()
    for c in reversed(clients):
        c.wait_connected(timeout=600)
    os._exit(0)
'''


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed (apt-get install valgrind)")
    C.watchdog(3600)
    n = 100 if args.quick else 300
    contenders = [c for c in args.contenders.split(",") if c]
    for c in contenders:
        if c not in CONTENDERS:
            sys.exit(f"unknown contender {c!r} (choose from {', '.join(CONTENDERS)})")
    C.print_header("Connect instructions: one more client, built and connected, under callgrind")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"connect_instructions_{os.getpid()}.py")
    with open(script, "w") as f:
        f.write(CHILD.format(root=root, warm=WARM))
    per = {}
    try:
        with C.ServerProcess("select") as server:
            for c in contenders:
                per[c] = (C.instructions(script, c, n, server.port)
                          - C.instructions(script, c, 0, server.port)) / n
    finally:
        os.unlink(script)
    base = per.get("twisted")
    rows = [[c, f"{per[c]:,.0f}", "-" if base is None else f"{per[c] / base:.2f}x"]
            for c in contenders]
    print(f"## Instructions per client ({n} clients, minus a run of 0; every thread counted)\n")
    print(C.table(["contender", "instructions per client", "/ Twisted"], rows))
    print("\nFrom building the client (or factory) to its connection made; closing not counted. "
          "System calls count their user-space side only.")


if __name__ == "__main__":
    main()
