"""Shared pieces of the benchmarks: loopback servers in their own process,
child-process plumbing, machine description, statistics and tables.

Run as a script it is the server process::

    python benchmarks/_common.py server --mode select|threaded [--lifetime S]

It prints ``READY <data_port> <control_port>`` and serves until its standard
input closes, ``quit`` arrives on the control port, or ``--lifetime``
seconds pass. ``select`` is a single-threaded epoll echo server that can hold
tens of thousands of connections and logs the time of every accept;
``threaded`` is a blocking thread-per-connection echo server (lowest latency
for a single caller). Timestamps are ``time.monotonic()``, which on Linux is
CLOCK_MONOTONIC and so comparable between processes on one machine.

Control commands (one line in, one JSON line out, on the control port):
``count``, ``clear`` (forget the accept and close logs), ``drop`` (close
every accepted data connection at once, keep listening), ``log`` (accept
times, and per peer port the time its connection was closed by ``drop``),
``quit``.
"""

import datetime
import json
import os
import platform
import re
import resource
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOST = "127.0.0.1"

#: The 64-byte message of the round-trip benchmarks, and its length.
MSG = b"x" * 64
SIZE = len(MSG)

# Measure the checkout these scripts live in, installed or not.
if REPO not in sys.path:
    sys.path.insert(1 if sys.path and sys.path[0] == HERE else 0, REPO)


def roundtrip(sock):
    """One echo round trip of :data:`MSG` on a blocking socket."""
    sock.sendall(MSG)
    got = sock.recv(SIZE)
    for _ in range(SIZE):
        if len(got) >= SIZE:
            return got
        chunk = sock.recv(SIZE - len(got))
        if not chunk:
            raise ConnectionResetError("echo server closed the connection")
        got += chunk
    return got


def instructions(script, *args, timeout=1200):
    """The instructions ``python script *args`` executes, every thread of
    the process counted, under ``valgrind --tool=callgrind``."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         script, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise RuntimeError(f"no instruction count from valgrind for {args!r}:\n{out[-2000:]}")
    return int(m.group(1))


def watchdog(seconds):
    """Have the kernel end this process (SIGALRM) if it is still running
    after ``seconds``: no thread or greenlet needed, so it works the same
    under gevent's monkey-patching and Twisted's reactor."""
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(seconds)))


def twisted_factory(protocol_class):
    """Twisted's ``ReconnectingClientFactory`` as the comparisons use it: quiet,
    a 50 ms first delay (the clients' own), and ``resetDelay()`` at each
    connection (where a Twisted user calls it; rcf_sync's client does the
    same after ``on_connect``). Imports Twisted: call it in Twisted's child."""
    from twisted.internet import protocol

    class Factory(protocol.ReconnectingClientFactory):
        initialDelay = 0.05
        noisy = False

        def buildProtocol(self, addr):
            self.resetDelay()
            return super().buildProtocol(addr)

    Factory.protocol = protocol_class
    return Factory


# -- process and machine facts ---------------------------------------------------

def raise_nofile(want=None):
    """Raise the soft RLIMIT_NOFILE up to ``want`` (default: the hard
    limit); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(hard, max(soft, want))
    if hard == resource.RLIM_INFINITY and want is None:
        target = max(soft, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib():
    """Resident set size of this process in KiB (/proc/self/status VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds():
    """Number of open file descriptors of this process."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def cpu_pair(parser):
    """``--one-cpu``'s CPUs: the first two this process may run on (the
    server's, then every contender's); ``parser.error`` with fewer."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        parser.error("--one-cpu needs two CPUs")
    return mine[:2]


def preemptions():
    """Involuntary context switches of this process's threads so far (the
    kernel took the CPU from a runnable thread): /proc's
    ``nonvoluntary_ctxt_switches``, summed over /proc/self/task."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("nonvoluntary_ctxt_switches"):
                        total += int(line.split(":")[1])
        except OSError:
            pass
    return total


def os_threads():
    """Kernel threads of this process (counts real threads even when gevent
    has patched ``threading``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nofile": f"soft {nofile[0]}, hard {nofile[1]}",
    }


def versions():
    out = {}
    for name in ("rcf_sync", "twisted", "gevent", "crochet"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            out[name] = "not installed"
    return out


def command_line():
    """The command that is running, as one can paste it from the repo root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return shlex.join([sys.executable, script] + sys.argv[1:])


def git_state():
    """The commit measured, and whether rcf_sync/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rcf_sync"], cwd=REPO,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" + uncommitted changes in rcf_sync/" if dirty else "")


def print_header(title):
    info = machine_info()
    print(f"# {title}")
    print(f"command: cd {shlex.quote(REPO)} && {command_line()}")
    print(f"code: {git_state()}")
    print("machine: {nproc} CPUs, {cpu}; Python {python}; {platform}; {date}; "
          "RLIMIT_NOFILE {nofile}".format(**info))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + " (the machine is shared: other processes may run beside the benchmark)")
    print()
    sys.stdout.flush()
    return info


# -- statistics and tables -----------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q):
    """The ``q``-th percentile (0..100), nearest rank on sorted values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def fmt(value, spec=".2f", none="-"):
    if value is None:
        return none
    if isinstance(value, str):
        return value
    return format(value, spec)


def table(headers, rows):
    """A GitHub-flavoured markdown table as a string."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    def line(items):
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(items, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def max_in_window(times, window):
    """Largest number of ``times`` falling in any interval of ``window``
    seconds (sliding)."""
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


# -- child processes -------------------------------------------------------------

def child_env(extra=None):
    """The environment of a benchmark's child process: this one's, with the
    benchmarks directory on the path, a fixed hash seed unless one is set,
    and ``extra`` on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def run_child(args, timeout, env=None):
    """Run ``python <args>`` with the benchmarks directory on the path; return
    the JSON object printed on the last line of its standard output."""
    cmd = [sys.executable] + list(args)
    full_env = child_env(env)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"child {shlex.join(cmd)} timed out after {timeout}s; "
                           f"stderr: {(exc.stderr or '')[-2000:]}") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {shlex.join(cmd)} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def emit(result):
    """A child's last act: print its result as one JSON line."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


class ServerProcess:
    """An echo server (see the module docstring) in a child process."""

    def __init__(self, mode="select", lifetime=900.0):
        cmd = [sys.executable, os.path.join(HERE, "_common.py"), "server",
               "--mode", mode, "--lifetime", str(lifetime)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO)
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line[1])
        self.ctrl_port = int(line[2])
        self.address = (HOST, self.port)

    def command(self, cmd, timeout=30.0):
        return control(self.ctrl_port, cmd, timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout=2.0)
            except OSError:
                pass
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def control(ctrl_port, cmd, timeout=30.0):
    """Send one control command to a server; return its JSON answer."""
    with socket.create_connection((HOST, ctrl_port), timeout=timeout) as s:
        s.sendall(cmd.encode() + b"\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n") and time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def refused_address():
    """A loopback address where connections are refused: a socket bound to a
    port without listening (kept open so that nothing else takes the port).
    Returns ``(sock, (host, port))``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s, (HOST, s.getsockname()[1])


# -- the server process ------------------------------------------------------------

def _serve_select(listener, ctrl, lifetime):
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(ctrl, selectors.EVENT_READ, "ctrl-accept")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    conns = {}          # sock -> pending output (bytes)
    accepts = []        # monotonic time of each accept
    closes = {}         # peer port -> monotonic time closed by "drop"
    total = 0
    deadline = time.monotonic() + lifetime
    running = True

    def close_conn(sock):
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        conns.pop(sock, None)
        sock.close()

    def handle_ctrl(sock):
        nonlocal running
        try:
            line = sock.recv(4096).decode().strip()
        except OSError:
            line = ""
        if line == "count":
            answer = {"open": len(conns), "accepted": total}
        elif line == "clear":
            accepts.clear()
            closes.clear()
            answer = {"ok": True}
        elif line == "drop":
            t0 = time.monotonic()
            victims = list(conns)
            for s in victims:
                try:
                    port = s.getpeername()[1]
                except OSError:
                    port = None
                close_conn(s)
                if port is not None:
                    closes[port] = time.monotonic()
            answer = {"t0": t0, "t1": time.monotonic(), "n": len(victims)}
        elif line == "log":
            answer = {"accepts": accepts, "closes": closes}
        elif line == "quit":
            answer = {"ok": True}
            running = False
        else:
            answer = {"error": f"unknown command {line!r}"}
        try:
            sock.setblocking(True)
            sock.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        sock.close()

    for _ in range(1 << 62):  # bounded by the deadline below
        if not running or time.monotonic() > deadline:
            break
        events = sel.select(min(1.0, max(0.0, deadline - time.monotonic())))
        for key, mask in events:
            tag = key.data
            if tag == "accept":
                for _ in range(100000):
                    try:
                        s, _addr = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # out of descriptors: leave it in the backlog
                        break
                    accepts.append(time.monotonic())
                    total += 1
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[s] = b""
                    sel.register(s, selectors.EVENT_READ, "conn")
            elif tag == "ctrl-accept":
                try:
                    s, _addr = ctrl.accept()
                except OSError:
                    continue
                s.setblocking(True)
                s.settimeout(5.0)
                handle_ctrl(s)
            elif tag == "stdin":
                if not sys.stdin.readline():
                    running = False
            else:
                s = key.fileobj
                if s not in conns:
                    continue
                if mask & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        close_conn(s)
                        continue
                    if data:
                        conns[s] += data
                pending = conns.get(s)
                if pending:
                    try:
                        n = s.send(pending)
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError:
                        close_conn(s)
                        continue
                    conns[s] = pending[n:]
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conns[s] else 0)
                    if want != key.events:
                        sel.modify(s, want, "conn")
                elif key.events & selectors.EVENT_WRITE:
                    sel.modify(s, selectors.EVENT_READ, "conn")
    for s in list(conns):
        close_conn(s)


def _serve_threaded(listener, ctrl, lifetime):
    stop = threading.Event()

    def echo(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            for _ in range(1 << 62):  # ends when the peer closes or we stop
                if stop.is_set():
                    return
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def acceptor():
        listener.setblocking(True)
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def ctrl_loop():
        ctrl.setblocking(True)
        ctrl.settimeout(0.5)
        while not stop.is_set():
            try:
                s, _ = ctrl.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with s:
                s.settimeout(5.0)
                try:
                    line = s.recv(4096).decode().strip()
                    s.sendall(json.dumps({"ok": True}).encode() + b"\n")
                except OSError:
                    continue
                if line == "quit":
                    stop.set()

    threading.Thread(target=acceptor, daemon=True).start()
    threading.Thread(target=ctrl_loop, daemon=True).start()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait(lifetime)
    stop.set()


def _server_main(argv):
    import argparse

    p = argparse.ArgumentParser(prog="_common.py server")
    p.add_argument("--mode", choices=("select", "threaded"), default="select")
    p.add_argument("--lifetime", type=float, default=900.0)
    args = p.parse_args(argv)
    raise_nofile()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(65535)  # capped by net.core.somaxconn
    listener.setblocking(False)
    ctrl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ctrl.bind((HOST, 0))
    ctrl.listen(64)
    ctrl.setblocking(False)
    sys.stdout.write(f"READY {listener.getsockname()[1]} {ctrl.getsockname()[1]}\n")
    sys.stdout.flush()
    if args.mode == "select":
        _serve_select(listener, ctrl, args.lifetime)
    else:
        _serve_threaded(listener, ctrl, args.lifetime)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        _server_main(sys.argv[2:])
    else:
        sys.exit("usage: python benchmarks/_common.py server [--mode select|threaded]")
