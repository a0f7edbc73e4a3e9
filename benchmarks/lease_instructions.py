"""The lease in CPU instructions: a count that machine noise cannot move.

Timings on a shared VM drift by a third from one run to the next; the
number of instructions the interpreter executes for one operation does not.
Each case runs twice in a child process under ``valgrind --tool=callgrind``
(0 and N operations, the same start-up), and the difference over N is the
cost of one operation:

* the floor: a minimal class-based context manager taking and releasing one
  lock (built per use), its ``call`` form (calling a function inside), and a
  bare ``with lock:``;
* ``with client.connection(): pass`` and ``client.call(noop)`` (thread
  backend, a connected client of a loopback ``EchoServer``), on the hot path
  (the same caller coming straight back: no kernel check), with the kernel
  check on every lease (``RECHECK_AFTER = 0``), and on the usual path only
  (``_acquire``/``_release``: the hot path turned off);
* the skeletons of ``_skeletons.py`` (the hot path written out inline, step
  by step up to the cheapest lease that keeps every guarantee of the
  library's, then made by a method and layered as the library is).

Under valgrind every gap between two leases is far longer than the 20 us of
``RECHECK_AFTER``, so the hot-path cases set it to 10 s in the child, to
count what a native tight loop executes. System calls are counted only on
their user-space side: ``poll()`` costs far more time than its instructions
say. Needs valgrind (``apt-get install valgrind``).

    python benchmarks/lease_instructions.py            # about 4 min
    python benchmarks/lease_instructions.py --quick    # about 3 min (valgrind start-up)
"""

import argparse
import os
import shutil
import sys

import _common as C
from _skeletons import SKELETONS

CHILD = r'''
import os, sys, threading
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "benchmarks"))
from lease_floor import Minimal  # the floor, as lease_floor.py times it
from _skeletons import SKELETONS, skeleton_handle

case, n = sys.argv[1], int(sys.argv[2])

lock = threading.Lock()
value = object()


def noop(v):
    return v


if case in ("bare lock", "floor", "floor of call"):
    if case == "bare lock":
        for _ in range(n):
            with lock:
                pass
    elif case == "floor":
        for _ in range(n):
            with Minimal(lock, value):
                pass
    else:
        for _ in range(n):
            with Minimal(lock, value) as v:
                noop(v)
elif case.startswith("skeleton"):
    SKELETONS[case][1](skeleton_handle(), n)
else:
    from rcf_sync import ReconnectingClient, _leasing
    from rcf_sync.testing import EchoServer
    what, _, variant = case.partition(" ")
    _leasing.RECHECK_AFTER = 0.0 if variant == "check" else 10.0
    if variant == "usual":
        _leasing.Leasing._take_now = lambda self: None
        _leasing.Leasing._give_now = lambda self, conn: False
    with EchoServer() as server:
        with ReconnectingClient(server.address, backend="thread") as client:
            client.wait_connected(timeout=60)
            for _ in range(10):
                with client.connection():
                    pass
            if what == "lease":
                for _ in range(n):
                    with client.connection():
                        pass
            else:
                for _ in range(n):
                    client.call(noop)
'''

CASES = [
    ("bare lock", "with lock: (bare threading.Lock)"),
    ("floor", "with Minimal(lock): (the floor)"),
    ("floor of call", "with Minimal(lock) as v: noop(v) (floor of a call)"),
    ("lease", "with client.connection(): pass (hot path)"),
    ("call", "client.call(noop) (hot path)"),
    ("lease check", "lease, kernel check on every lease"),
    ("call check", "call, kernel check on every lease"),
    ("lease usual", "lease, usual path only"),
    ("call usual", "call, usual path only"),
] + [(case, label) for case, (label, _) in SKELETONS.items()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed (apt-get install valgrind)")
    C.watchdog(1800)
    n = 5000 if args.quick else 20000
    C.print_header("Lease instructions: the lease and its floor, counted by callgrind")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lease_instructions_{os.getpid()}.py")
    with open(script, "w") as f:
        f.write(CHILD.format(root=root))
    try:
        per = {}
        for case, _ in CASES:
            per[case] = (C.instructions(script, case, n, timeout=600)
                         - C.instructions(script, case, 0, timeout=600)) / n
    finally:
        os.unlink(script)
    floor, floor_call = per["floor"], per["floor of call"]
    rows = []
    for case, label in CASES:
        ratio = f"{per[case] / floor:.2f}x"
        if case.startswith("call"):
            ratio += f" / {per[case] / floor_call:.2f}x"
        rows.append([label, f"{per[case]:.0f}", ratio])
    print(f"## Instructions per operation ({n} operations, minus a run of 0)\n")
    print(C.table(["operation", "instructions", "/ floor (call: / floor, / floor of a call)"],
                  rows))
    lease, call = per["lease"] / floor, per["call"] / floor_call
    print(f"\n- lease {lease:.2f}x the floor, call(noop) {call:.2f}x the floor of a call "
          f"(target <= 1.5x: {'met' if max(lease, call) <= 1.5 else 'NOT met'})")
    print("- skeletons: " + ", ".join(f"{case} {per[case] / floor:.2f}x" for case in SKELETONS))


if __name__ == "__main__":
    main()
