"""A short soak (benchmarks/soak.py) on each backend, and what it showed
about callers sharing one client."""

import importlib.util
import os
import time

import pytest
from test_faults import echo

from rcf_sync import ConnectTimeout, ReconnectingClient, ReconnectingClientFactory

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "soak.py")


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("rcf_sync_soak", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_invariants(result, restarts):
    assert result["failures"] == [], result
    assert result["other_count"] == 0 and result["mismatched"] == 0
    assert set(result["raised"]) <= {"ConnectionLost", "ConnectTimeout"}
    assert result["threads_left"] == [] and result["sockets_left"] == 0
    assert result["greenlets_left"] == 0 and result["hung_callers"] == 0
    assert result["restarts_done"] >= restarts
    assert result["requests_ok"] > 0 and result["losses"] >= 1


def test_soak_threads(soak, no_leaks):
    """If 4 threads share a client while the server is killed and restarted 20 times, then only ConnectionLost/ConnectTimeout are raised, no reply is mismatched and nothing leaks."""
    start = time.monotonic()
    result = soak.run_soak(workers=4, restarts=20, mode="thread", duration=2.5)
    assert time.monotonic() - start < 10
    assert result["backend"] == "thread"
    _assert_invariants(result, 20)


def test_soak_gevent_monkey_patched(soak):
    """If greenlets in a monkey-patched process share a client while the server is killed and restarted 20 times, then the same invariants hold."""
    pytest.importorskip("gevent")
    start = time.monotonic()
    result = soak.run_soak(workers=20, restarts=20, mode="gevent", duration=2.5)
    assert time.monotonic() - start < 15
    assert result["backend"] == "gevent"
    _assert_invariants(result, 20)


def test_callers_sharing_a_client_are_all_served(kit, server, no_leaks):
    """If several callers loop on one healthy client, then each is served within its timeout; none starves while another leases again and again."""
    factory = ReconnectingClientFactory(initialDelay=0.01, maxDelay=0.1, jitter=0)
    served, starved = [0, 0, 0], []
    deadline = time.monotonic() + 1.0

    def worker(n):
        for i in range(10**6):  # bounded by the deadline first
            if time.monotonic() >= deadline:
                return
            payload = b"%d:%d" % (n, i)
            try:
                assert c.call(echo, payload, timeout=0.5) == payload
            except ConnectTimeout as exc:
                starved.append((n, str(exc)))
                return
            served[n] += 1

    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        c.wait_connected(timeout=5)
        workers = [kit.spawn(worker, n) for n in range(3)]
        kit.join_all(workers, 10)
        assert c.stats.losses == 0
    assert starved == [], f"served per caller: {served}"
    assert all(served)
