"""What the lease-time connection check costs.

Every lease checks the connection it hands out (one non-blocking ``poll()``
on the socket) so that a caller never gets a stream with bytes nobody asked
for, or one the peer closed. This measures that check in the same process
and run, in alternating blocks with the check on and replaced by a no-op:

* ``with client.connection(): pass`` (no I/O: the lease alone);
* ``client.call(echo)``, a 64-byte round trip to the select echo server of
  ``_common.py`` in another process.

Medians over blocks of ns per operation, and the difference.

    python benchmarks/lease_check.py            # about 20 s
    python benchmarks/lease_check.py --quick    # about 6 s
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
    real_check = _leasing.lease_check
    results = {(what, on): [] for what in ("lease", "call") for on in (True, False)}
    with C.ServerProcess("select") as server:
        factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)
        with ReconnectingClient(server.address, factory=factory, backend="thread") as client:
            client.wait_connected(timeout=10)
            for block in range(blocks):
                for on in ((True, False) if block % 2 == 0 else (False, True)):
                    _leasing.lease_check = real_check if on else (lambda conn: None)
                    try:
                        results["lease", on].append(lease_loop(client, n_lease))
                        results["call", on].append(call_loop(client, n_call))
                    finally:
                        _leasing.lease_check = real_check
    rows = []
    for what in ("lease", "call"):
        on, off = C.median(results[what, True]), C.median(results[what, False])
        rows.append([what, f"{off:.0f}", f"{on:.0f}", f"{on - off:+.0f}", f"{on / off:.3f}"])
    print(C.table(["operation", "check off (ns)", "check on (ns)", "cost (ns)", "ratio"], rows))
    print(f"\n{blocks} alternating blocks; {n_lease} leases and {n_call} round trips per block.")


if __name__ == "__main__":
    main()
