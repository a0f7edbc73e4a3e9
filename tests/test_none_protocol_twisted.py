"""What Twisted does when ``buildProtocol`` returns ``None`` or raises, and
when ``connectionMade`` raises: recorded under Twisted's reactor (in a
subprocess: the reactor cannot be restarted) against a loopback server, and
rcf_sync's protocol mode held to the same behaviour."""

import json
import socket
import subprocess
import sys
import threading

import pytest

TWISTED_SIDE = r'''
import json, sys
from twisted.internet import reactor, protocol

port, mode = int(sys.argv[1]), sys.argv[2]
events = []

class Boom(protocol.Protocol):
    def connectionMade(self):
        raise RuntimeError("made boom")

    def connectionLost(self, reason):
        events.append(["protocol lost", reason.type.__name__])

class F(protocol.ReconnectingClientFactory):
    initialDelay = delay = 0.05
    noisy = False
    built = 0

    def buildProtocol(self, addr):
        self.built += 1
        events.append(["buildProtocol", type(addr).__name__, addr.host, addr.port == port])
        if mode == "none":
            return None
        if mode == "raise":
            raise RuntimeError("build boom")
        p = Boom()
        p.factory = self
        return p

    def clientConnectionLost(self, connector, reason):
        events.append(["lost", reason.type.__name__, self.numPorts])
        self.next(connector, reason, protocol.ReconnectingClientFactory.clientConnectionLost)

    def clientConnectionFailed(self, connector, reason):
        events.append(["failed", reason.type.__name__, self.numPorts])
        self.next(connector, reason, protocol.ReconnectingClientFactory.clientConnectionFailed)

    def next(self, connector, reason, base):
        if self.built < 2:
            base(self, connector, reason)
        else:
            reactor.callLater(0, reactor.stop)

reactor.connectTCP("127.0.0.1", port, F())
reactor.callLater(20, reactor.stop)
reactor.run()
print(json.dumps(events))
'''


class ReadingServer:
    """Accepts ``n`` connections on loopback, sends 5 bytes on each and
    records how the client's side ended ("eof" or "reset")."""

    def __init__(self, n=2):
        self.n = n
        self.endings = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self._listener.settimeout(20)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            for _ in range(self.n):
                conn, _ = self._listener.accept()
                with conn:
                    conn.settimeout(10)
                    conn.sendall(b"hello")
                    try:
                        data = conn.recv(10)
                        self.endings.append("eof" if data == b"" else data.decode())
                    except ConnectionResetError:
                        self.endings.append("reset")
        except OSError as exc:  # pragma: no cover - reported by the test
            self.endings.append(repr(exc))
        finally:
            self._listener.close()

    def join(self, timeout=20):
        """Wait until all ``n`` connections were served (the client's side
        of the last one may be closed before the server thread accepted it)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self):
        self._listener.close()
        self._thread.join(20)
        return not self._thread.is_alive()


def twisted_events(mode):
    pytest.importorskip("twisted")
    server = ReadingServer(2)
    try:
        proc = subprocess.run([sys.executable, "-c", TWISTED_SIDE, str(server.port), mode],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            assert server.join()
    finally:
        assert server.stop()
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), server.endings


def test_twisted_closes_cleanly_and_reports_connection_done_when_build_protocol_returns_none():
    """If buildProtocol returns None, then Twisted closes the connection cleanly and calls clientConnectionLost with ConnectionDone, then retries."""
    events, endings = twisted_events("none")
    assert events == [
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["lost", "ConnectionDone", 1],
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["lost", "ConnectionDone", 1],
    ]
    assert endings == ["eof", "eof"]


def test_twisted_reports_a_failed_attempt_when_build_protocol_raises():
    """If buildProtocol raises, then Twisted closes the connection and calls clientConnectionFailed with a ConnectError, not clientConnectionLost."""
    events, endings = twisted_events("raise")
    assert events == [
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["failed", "ConnectError", 1],
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["failed", "ConnectError", 1],
    ]
    assert endings == ["eof", "eof"]


def test_twisted_reports_the_exception_as_the_loss_when_connection_made_raises():
    """If connectionMade raises, then Twisted closes the connection and both connectionLost and clientConnectionLost get that exception."""
    events, endings = twisted_events("made")
    assert events == [
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["protocol lost", "RuntimeError"],
        ["lost", "RuntimeError", 1],
        ["buildProtocol", "IPv4Address", "127.0.0.1", True],
        ["protocol lost", "RuntimeError"],
        ["lost", "RuntimeError", 1],
    ]
    assert endings == ["eof", "eof"]


def rcf_sync_events(mode):
    """The same factory as TWISTED_SIDE's, run by a ReconnectingClient."""
    import rcf_sync

    events = []
    done = threading.Event()
    server = ReadingServer(2)

    class Boom(rcf_sync.Protocol):
        def connectionMade(self):
            raise RuntimeError("made boom")

        def connectionLost(self, reason):
            events.append(["protocol lost", reason.type.__name__])

    class F(rcf_sync.ReconnectingClientFactory):
        initialDelay = delay = 0.05
        noisy = False
        built = 0

        def buildProtocol(self, addr):
            self.built += 1
            events.append(["buildProtocol", type(addr).__name__, addr.host, addr.port == server.port])
            if mode == "none":
                return None
            if mode == "raise":
                raise RuntimeError("build boom")
            p = Boom()
            p.factory = self
            return p

        def clientConnectionLost(self, connector, reason):
            events.append(["lost", reason.type.__name__, self.numPorts])
            self.next(connector, reason, rcf_sync.ReconnectingClientFactory.clientConnectionLost)

        def clientConnectionFailed(self, connector, reason):
            events.append(["failed", reason.type.__name__, self.numPorts])
            self.next(connector, reason, rcf_sync.ReconnectingClientFactory.clientConnectionFailed)

        def next(self, connector, reason, base):
            if self.built < 2:
                base(self, connector, reason)
            else:
                self.stopTrying()
                done.set()

    try:
        with rcf_sync.ReconnectingClient(("127.0.0.1", server.port), factory=F()):
            assert done.wait(20), events
        assert server.join()
    finally:
        assert server.stop()
    return events, server.endings


@pytest.mark.parametrize("mode", ["none", "raise", "made"])
def test_rcf_sync_does_what_twisted_does(mode):
    """If buildProtocol returns None or raises, or connectionMade raises, under rcf_sync, then the events and the server's view match Twisted's."""
    ours = rcf_sync_events(mode)
    theirs = twisted_events(mode)
    if mode == "raise":
        # Twisted wraps the exception in its ConnectError, which rcf_sync
        # has no counterpart for: compare everything but that type name.
        ours = ([e[:1] + e[2:] if e[0] == "failed" else e for e in ours[0]], ours[1])
        theirs = ([e[:1] + e[2:] if e[0] == "failed" else e for e in theirs[0]], theirs[1])
    assert ours == theirs
