"""Thread-pool workers sharing one reconnecting connection.

A ``concurrent.futures.ThreadPoolExecutor`` runs 200 jobs on 8 threads; every
job sends a payload no other job sends through one shared
:class:`rcf_sync.ReconnectingClient` and checks that the echo it reads back
is its own. Halfway through (after the first half of the jobs), the echo
server is stopped (every connection closed) and started again on the same
port.

What it shows:

* ``client.call(fn, ...)`` leases the socket to one thread at a time, so
  requests never interleave and no thread ever reads another's reply;
* a job whose connection dies mid-request gets ``ConnectionLost`` inside
  ``call()``, which waits for the next connection and runs the job again (the
  echo is idempotent), so every job still succeeds;
* the back-off runs on the thread backend's shared background thread: the
  pool's threads only ever block on their own requests.

Run it with ``python examples/thread_pool.py``; it prints a summary and
exits 0 when every job got its own reply.
"""

import concurrent.futures
import sys
import threading

from rcf_sync import ReconnectingClient, ReconnectingClientFactory
from rcf_sync.testing import EchoServer

JOBS = 200
WORKERS = 8


def echo(sock, payload):
    """One request: send ``payload``, read back as many bytes."""
    sock.settimeout(5)
    sock.sendall(payload)
    received = b""
    for _ in range(len(payload)):
        chunk = sock.recv(len(payload) - len(received))
        if not chunk:
            raise ConnectionResetError("the server closed the connection mid-reply")
        received += chunk
        if len(received) == len(payload):
            break
    return received


def job(client, n):
    """Echo a payload only job ``n`` sends; return whether the reply was ours."""
    payload = f"job {n:03d} from {threading.current_thread().name};".encode() * (1 + n % 16)
    return client.call(echo, payload, attempts=5, timeout=10) == payload


def main():
    server = EchoServer().start()
    factory = ReconnectingClientFactory(initialDelay=0.02, maxDelay=0.5)
    ok = mismatched = failed = 0
    restarts = 0
    try:
        with ReconnectingClient((server.host, server.port), factory=factory,
                                backend="thread") as client:
            with concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="worker") as pool:
                # Half the jobs, then the restart, then the other half: so the
                # restart falls between requests however the threads are
                # scheduled (counting completions would let the jobs finish
                # before the restart on a loaded machine).
                for half in (range(JOBS // 2), range(JOBS // 2, JOBS)):
                    if half.start:
                        server.stop()
                        server.start()
                        restarts += 1
                    futures = [pool.submit(job, client, n) for n in half]
                    for future in concurrent.futures.as_completed(futures, 60):
                        try:
                            if future.result():
                                ok += 1
                            else:
                                mismatched += 1
                        except Exception as exc:
                            failed += 1
                            print(f"job failed: {exc}")
            stats = client.stats
    finally:
        server.stop()
    print(f"jobs: {JOBS} on {WORKERS} threads")
    print(f"ok: {ok}")
    print(f"mismatched: {mismatched}")
    print(f"failed: {failed}")
    print(f"server restarts: {restarts}")
    print(f"connections: {stats.connects}, losses: {stats.losses}")
    return 0 if ok == JOBS else 1


if __name__ == "__main__":
    sys.exit(main())
