"""Twisted's documented reconnecting client (``examples/twisted_protocol.py``)
under Twisted's reactor and under rcf_sync's protocol mode: the same code
must print the same sequence of events."""

import pytest
from documented_client_events import GreetServer, load_example, run_client

#: What the documented client prints against a GreetServer that greets twice
#: and then stops listening (reasons as the kind ``reason.check()`` finds).
EXPECTED = [
    "Started to connect.",
    "Connected.",
    "Resetting reconnection delay",
    "hello 1",
    "Lost connection.  Reason: <ConnectionDone>",
    "Started to connect.",
    "Connected.",
    "Resetting reconnection delay",
    "hello 2",
    "Lost connection.  Reason: <ConnectionDone>",
    "Started to connect.",
    "Connection failed. Reason: <ConnectionRefused>",
]


def events_of(side):
    server = GreetServer(connections=2).start()
    try:
        lines = run_client(side, server.port)
    finally:
        assert server.stop(), "the greet server did not stop"
    assert server.error is None, server.error
    assert server.served == 2
    return lines


def test_twisted_runs_the_documented_client_through_two_connections_and_a_refusal():
    """If the documented client runs under Twisted's reactor against a server that greets twice then goes away, then it prints the expected events."""
    pytest.importorskip("twisted")
    assert events_of("twisted") == EXPECTED


def test_rcf_sync_prints_the_same_events_as_twisted():
    """If the documented client runs under rcf_sync and under Twisted against the same kind of server, then both print the same events."""
    pytest.importorskip("twisted")
    assert events_of("rcf_sync") == events_of("twisted") == EXPECTED


def test_the_twisted_side_runs_the_example_with_only_the_import_swapped():
    """If the example is loaded for Twisted, then its classes derive from Twisted's and otherwise are the example's own."""
    pytest.importorskip("twisted")
    from twisted.internet import protocol

    import rcf_sync

    theirs = load_example("twisted")
    ours = load_example("rcf_sync")
    assert issubclass(theirs.EchoClientFactory, protocol.ReconnectingClientFactory)
    assert issubclass(theirs.Echo, protocol.Protocol)
    assert issubclass(ours.EchoClientFactory, rcf_sync.ReconnectingClientFactory)
    assert issubclass(ours.Echo, rcf_sync.Protocol)
    assert ours.ReconnectingClient is rcf_sync.ReconnectingClient
