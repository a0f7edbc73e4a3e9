"""What the lease-time connection check costs.

A lease checks the connection it hands out (one non-blocking ``poll()`` on
the socket) so that a caller never gets a stream with bytes nobody asked
for, or one the peer closed, except when the same caller gave it back less
than ``RECHECK_AFTER`` (20 us) ago. This measures, in the same process and
run, in rotating blocks:

* the check as shipped (skipped in these tight loops: the same caller comes
  straight back);
* the check on every lease (``RECHECK_AFTER = 0``);
* the check replaced by a no-op and never skipped (the lease's own cost);

for ``with client.connection(): pass`` (no I/O: the lease alone) and
``client.call(echo)``, a 64-byte round trip to the select echo server of
``_common.py`` in another process. Medians over blocks of ns per operation.
Then, untimed, how many leases of each loop the check ran on as shipped
(the gate lets a lease through unchecked only when the same caller gave the
connection back less than ``RECHECK_AFTER`` earlier).

    python benchmarks/lease_check.py            # about 30 s
    python benchmarks/lease_check.py --quick    # about 10 s
"""

import argparse
import time

import _common as C

from rcf_sync import ReconnectingClient, ReconnectingClientFactory, _leasing
from rcf_sync.testing import echo_round_trip

MSG = b"x" * 64


def lease_loop(client, n):
    start = time.perf_counter()
    for _ in range(n):
        with client.connection():
            pass
    return (time.perf_counter() - start) / n * 1e9


def call_loop(client, n):
    start = time.perf_counter()
    for _ in range(n):
        client.call(echo_round_trip, MSG)
    return (time.perf_counter() - start) / n * 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    blocks = 6 if args.quick else 16
    n_lease, n_call = (20000, 2000) if args.quick else (50000, 5000)
    C.print_header("Lease-time connection check: cost per lease")
    real_check, real_window = _leasing.lease_check, _leasing.RECHECK_AFTER
    variants = {
        "as shipped": (real_check, real_window),
        "on every lease": (real_check, 0.0),
        "a no-op": (lambda conn: None, 0.0),
    }
    names = list(variants)
    results = {(what, v): [] for what in ("lease", "call") for v in names}
    with C.ServerProcess("select") as server:
        factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)
        with ReconnectingClient(server.address, factory=factory, backend="thread") as client:
            client.wait_connected(timeout=10)
            for block in range(blocks):
                for i in range(len(names)):
                    name = names[(block + i) % len(names)]
                    _leasing.lease_check, _leasing.RECHECK_AFTER = variants[name]
                    try:
                        results["lease", name].append(lease_loop(client, n_lease))
                        results["call", name].append(call_loop(client, n_call))
                    finally:
                        _leasing.lease_check, _leasing.RECHECK_AFTER = real_check, real_window
            checked = []
            for what, loop, n in (("lease", lease_loop, n_lease), ("call", call_loop, n_call)):
                ran = [0]

                def counting(conn, ran=ran):
                    ran[0] += 1
                    return real_check(conn)

                _leasing.lease_check = counting
                try:
                    loop(client, n)
                finally:
                    _leasing.lease_check = real_check
                checked.append((what, ran[0], n))
    rows = []
    for what in ("lease", "call"):
        off = C.median(results[what, "a no-op"])
        every = C.median(results[what, "on every lease"])
        shipped = C.median(results[what, "as shipped"])
        rows.append([what, f"{off:.0f}", f"{shipped:.0f}", f"{shipped - off:+.0f}",
                     f"{every:.0f}", f"{every - off:+.0f}", f"{every / off:.3f}"])
    print(C.table(["operation", "check a no-op (ns)", "as shipped (ns)", "its cost (ns)",
                   "on every lease (ns)", "its cost (ns)", "every lease / no-op"], rows))
    print(f"\n{blocks} rotating blocks; {n_lease} leases and {n_call} round trips per block.")
    print("\nleases the check ran on, as shipped (untimed; RECHECK_AFTER = "
          f"{real_window * 1e6:.0f} us): "
          + ", ".join(f"{what} {ran} of {n}" for what, ran, n in checked))


if __name__ == "__main__":
    main()
