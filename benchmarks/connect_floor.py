"""Connect-all against its floor: what the system calls of a connect cost
alone, and where the loop thread's time goes while N clients connect.

Against the select echo server of ``_common.py`` (another process), in one
process and one run:

* **floor**: N connects made by hand with no library, each with the system
  calls a thread-backend connect makes (``socket``, ``TCP_NODELAY``,
  ``connect_ex``, ``epoll`` register, wait, ``SO_ERROR``, the four keepalive
  options, ``setblocking(True)``, ``epoll`` modify for the idle watch);
  caller CPU per connect;
* **rcf_sync**: N thread-backend clients started, then waited on in start
  order (each wake-up hands the interpreter lock from the loop thread to
  the caller and back) or in reverse order (the caller sleeps until the last
  one is connected); wall time, and for the loop thread and the caller its
  time on a CPU and its time waiting for one (``/proc/self/task/*/schedstat``)
  and its context switches.

Rounds alternate; medians.

    python benchmarks/connect_floor.py            # N=1000, 5 rounds
    python benchmarks/connect_floor.py --quick    # N=1000, 2 rounds
"""

import argparse
import select
import socket
import threading
import time

import _common as C


def _sched(tid):
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        run_ns, wait_ns, _ = map(int, f.read().split())
    switches = 0
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                switches = int(line.split(":")[1])
    return run_ns, wait_ns, switches


def floor(address, n):
    """CPU per connect of the bare system calls (no library)."""
    ep = select.epoll()
    socks = {}
    c0 = time.thread_time()
    w0 = time.perf_counter()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex(address)
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLONESHOT)
        socks[s.fileno()] = s
    done = 0
    for _ in range(100 * n):
        if done >= n:
            break
        for fd, _ev in ep.poll(1):
            s = socks[fd]
            s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
            s.setblocking(True)
            ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT)
            done += 1
    out = {"wall_us": (time.perf_counter() - w0) / n * 1e6,
           "cpu_us": (time.thread_time() - c0) / n * 1e6, "done": done}
    for s in socks.values():
        s.close()
    ep.close()
    return out


def rcf(address, n, reverse):
    from rcf_sync import ReconnectingClient, ReconnectingClientFactory
    from rcf_sync._backends._thread import get_runtime

    warm = ReconnectingClient(address, backend="thread").start()
    warm.wait_connected(timeout=30)
    loop_tid = get_runtime()._thread.native_id
    me = threading.get_native_id()
    clients = [ReconnectingClient(address, factory=ReconnectingClientFactory(initialDelay=0.05),
                                  backend="thread") for _ in range(n)]
    l0, m0 = _sched(loop_tid), _sched(me)
    w0 = time.perf_counter()
    for c in clients:
        c.start()
    for c in (clients[::-1] if reverse else clients):
        c.wait_connected(timeout=60)
    wall = time.perf_counter() - w0
    l1, m1 = _sched(loop_tid), _sched(me)
    for c in clients:
        c.close()
    warm.close()
    return {"wall_us": wall / n * 1e6,
            "loop_cpu_us": (l1[0] - l0[0]) / n / 1e3, "loop_runq_us": (l1[1] - l0[1]) / n / 1e3,
            "loop_sleeps": (l1[2] - l0[2]) / n,
            "caller_cpu_us": (m1[0] - m0[0]) / n / 1e3, "caller_sleeps": (m1[2] - m0[2]) / n}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--rounds", type=int)
    args = p.parse_args()
    C.watchdog(600)
    C.raise_nofile()
    n = max(10, min(args.n, 5000))
    rounds = max(1, min(args.rounds or (2 if args.quick else 5), 20))
    C.print_header("Connect-all against its floor")
    results = {"floor": [], "start order": [], "reverse order": []}
    for r in range(rounds):
        order = ["floor", "start order", "reverse order"]
        order = order[r % 3:] + order[:r % 3]
        for name in order:
            # A fresh server each time: no port in TIME_WAIT, an empty backlog.
            with C.ServerProcess("select") as server:
                if name == "floor":
                    results[name].append(floor(server.address, n))
                else:
                    results[name].append(rcf(server.address, n, name == "reverse order"))
    med = {k: {f: C.median([x[f] for x in v]) for f in v[0]} for k, v in results.items()}
    fl = med["floor"]
    rows = [["system calls alone (no library)", f"{fl['wall_us']:.1f}", f"{fl['cpu_us']:.1f}",
             "", "", "", ""]]
    for name in ("start order", "reverse order"):
        m = med[name]
        rows.append([f"rcf_sync, waited on in {name}", f"{m['wall_us']:.1f}", f"{m['loop_cpu_us']:.1f}",
                     f"{m['loop_runq_us']:.1f}", f"{m['loop_sleeps']:.2f}", f"{m['caller_cpu_us']:.1f}",
                     f"{m['caller_sleeps']:.2f}"])
    print(f"N = {n} connects per run, {rounds} rounds, medians; us per connect\n")
    print(C.table(["variant", "wall", "loop thread CPU (floor: caller CPU)", "loop waiting for a CPU",
                   "loop sleeps", "caller CPU", "caller sleeps"], rows))
    rev = med["reverse order"]
    print(f"\n- the loop's CPU per connect is {rev['loop_cpu_us'] / fl['cpu_us']:.2f}x the system "
          f"calls alone in reverse order ({med['start order']['loop_cpu_us'] / fl['cpu_us']:.2f}x in "
          "start order, where the caller's wake-ups cost the loop too)")
    print("- wall minus the loop's CPU and runqueue wait is time neither thread ran: the server "
          "process taking the CPU, or the hypervisor's (steal)")


if __name__ == "__main__":
    main()
