"""Module-level clients for the fork tests: what a prefork server or a
``multiprocessing`` pool inherits from the process that imported it."""

import os

from rcf_sync import ReconnectingClient, ReconnectingClientFactory
from rcf_sync.testing import echo_round_trip

CLIENT = None


def setup(address, backend="thread"):
    """Create and start the module-level client (before any fork)."""
    global CLIENT
    CLIENT = ReconnectingClient(
        address, backend=backend,
        factory=ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.05, jitter=0)).start()
    return CLIENT


def _ask(sock, payload):
    return sock.getsockname()[1], echo_round_trip(sock, payload)


def ask(payload):
    """One request on the module-level client: (pid, local port, reply)."""
    port, reply = CLIENT.call(_ask, payload, timeout=10)
    return os.getpid(), port, reply
