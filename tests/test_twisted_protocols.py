"""Twisted's own framing protocols, unchanged, over rcf_sync's transport:
subclasses of LineReceiver, Int32StringReceiver and NetstringReceiver driven
by a ReconnectingClient across server restarts (skipped without Twisted)."""

import struct

import pytest

from rcf_sync import ConnectionDone, ReconnectingClient, ReconnectingClientFactory

basic = pytest.importorskip("twisted.protocols.basic")

FAST = {"initialDelay": 0.02, "maxDelay": 0.1, "jitter": 0}


def framing(kind):
    """(base class, name of its message callback, name of its send method,
    how a message looks on the wire)."""
    if kind == "line":
        return basic.LineReceiver, "lineReceived", "sendLine", lambda m: m + b"\r\n"
    if kind == "int32":
        return (basic.Int32StringReceiver, "stringReceived", "sendString",
                lambda m: struct.pack("!I", len(m)) + m)
    return basic.NetstringReceiver, "stringReceived", "sendString", lambda m: b"%d:%s," % (len(m), m)


def client_for(kit, address, kind):
    base, on_message, send, _ = framing(kind)

    class Framed(base):
        def connectionMade(self):
            self.messages = []
            self.waits = []
            self.gone = kit.event()
            self.lost_with = None

        def send(self, message):
            getattr(self, send)(message)

        def expect(self, count):
            event = kit.event()
            self.waits.append((count, event))
            if len(self.messages) >= count:
                event.set()
            return event

        def connectionLost(self, reason):
            self.lost_with = reason
            self.gone.set()

    def received(self, message):
        self.messages.append(message)
        for count, event in self.waits:
            if len(self.messages) >= count:
                event.set()

    setattr(Framed, on_message, received)
    factory = ReconnectingClientFactory.forProtocol(Framed, **FAST)
    return ReconnectingClient(address, factory=factory, backend=kit.name)


@pytest.mark.parametrize("kind", ["line", "int32", "netstring"])
def test_twisted_framing_protocols_run_across_server_restarts(kit, server, no_leaks, kind):
    """If a Twisted framing protocol is driven by the client, then its messages come back whole (also when pushed in pieces) on every connection across two server restarts."""
    wire = framing(kind)[3]
    seen = []
    with client_for(kit, server.address, kind) as c:
        for round_ in range(3):
            p = c.wait_protocol(timeout=5)
            assert p not in seen
            seen.append(p)
            sent = [b"round %d message %d" % (round_, i) for i in range(20)]
            for message in sent:
                c.call_protocol(lambda p, m=message: p.send(m))
            assert c.call_protocol(lambda p: p.expect(20)).wait(5)
            pushed = wire(b"pushed in two pieces")
            kit.block(server.push, pushed[:5])
            kit.block(server.push, pushed[5:])
            assert c.call_protocol(lambda p: p.expect(21)).wait(5)
            assert c.call_protocol(lambda p: list(p.messages)) == sent + [b"pushed in two pieces"]
            if round_ < 2:
                kit.block(server.stop)
                assert p.gone.wait(5)
                assert p.lost_with.check(ConnectionDone)
                server.start()
    assert len(seen) == 3


def test_a_line_too_long_makes_line_receiver_close_the_connection(kit, server, no_leaks):
    """If a line longer than MAX_LENGTH arrives, then LineReceiver's own loseConnection() ends that connection and a new protocol follows."""
    with client_for(kit, server.address, "line") as c:
        p = c.wait_protocol(timeout=5)
        c.call_protocol(lambda p: p.transport.write(b"x" * (p.MAX_LENGTH + 10)))
        assert p.gone.wait(5)
        assert p.transport.disconnecting
        assert c.wait_protocol(timeout=5) is not p
