"""Protocol mode: a ReconnectingClient whose factory builds protocols drives
them over its own transport, on both backends."""

import hashlib
import os
import socket
import threading
import time

import pytest

from rcf_sync import (
    ClientClosed,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectTimeout,
    Failure,
    GaveUp,
    IPv4Address,
    Protocol,
    ProtocolModeError,
    ReconnectingClient,
    ReconnectingClientFactory,
    ReconnectingPool,
    State,
    TCPConnector,
)
from rcf_sync.testing import FaultProxy

FAST = {"initialDelay": 0.02, "maxDelay": 0.1, "jitter": 0}


class Recording(Protocol):
    """Records its callbacks in ``record``; :meth:`expect` gives an event set
    once the bytes received contain ``want`` (call it in the protocol's order,
    through ``call_protocol``)."""

    def __init__(self, kit, record):
        self.kit = kit
        self.record = record
        self.received = b""
        self.waits = []
        self.gone = kit.event()
        self.inside = 0
        self.overlaps = 0

    def _enter(self):
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1

    def connectionMade(self):
        self._enter()
        self.record.append(("made", self))
        self.inside -= 1

    def dataReceived(self, data):
        self._enter()
        self.received += data
        for want, event in self.waits:
            if want in self.received:
                event.set()
        self.inside -= 1

    def connectionLost(self, reason):
        self._enter()
        self.record.append(("lost", self, reason))
        self.gone.set()
        self.inside -= 1

    def expect(self, want):
        event = self.kit.event()
        self.waits.append((want, event))
        if want in self.received:
            event.set()
        return event


def recording_client(kit, address, record, factory_class=ReconnectingClientFactory, **kw):
    factory = factory_class.forProtocol(lambda: Recording(kit, record), **FAST)
    return ReconnectingClient(address, factory=factory, backend=kit.name, **kw)


def round_trip(client, payload, timeout=5):
    """Write ``payload`` through the live protocol and wait for the echo."""
    def send(p):
        p.transport.write(payload)
        return p.expect(payload)

    assert client.call_protocol(send, timeout=timeout).wait(timeout), payload


def lost_reasons(record, protocol):
    return [e[2] for e in record if e[0] == "lost" and e[1] is protocol]


def test_protocols_are_rebuilt_across_server_restarts(kit, server, no_leaks):
    """If the server restarts twice, then each connection gets a new protocol, made once, fed the echoed bytes in order and lost once with ConnectionDone."""
    record = []
    protocols = []
    with recording_client(kit, server.address, record) as c:
        for n in range(3):
            p = c.wait_protocol(timeout=5)
            assert p not in protocols
            protocols.append(p)
            for i in range(5):
                round_trip(c, b"<%d:%d>" % (n, i))
            assert p.received == b"".join(b"<%d:%d>" % (n, i) for i in range(5))
            if n < 2:
                kit.block(server.stop)
                assert p.gone.wait(5)
                server.start()
    for p in protocols:
        assert [e[0] for e in record if e[1] is p] == ["made", "lost"]
        assert p.overlaps == 0
    for p in protocols[:2]:
        (reason,) = lost_reasons(record, p)
        assert isinstance(reason, Failure) and reason.check(ConnectionDone)
    assert c.stats.connects == 3 and c.stats.losses >= 2


def test_build_protocol_gets_the_peer_address_and_the_transport_both_ends(kit, server, no_leaks):
    """If a connection is made, then buildProtocol gets the peer's IPv4Address and the transport's getPeer()/getHost() name both ends."""
    seen = []

    class Factory(ReconnectingClientFactory):
        def buildProtocol(self, addr):
            seen.append(addr)
            return Protocol()

    with ReconnectingClient(server.address, factory=Factory(), backend=kit.name) as c:
        p = c.wait_protocol(timeout=5)
        peer, host = c.call_protocol(lambda p: (p.transport.getPeer(), p.transport.getHost()))
    assert seen == [IPv4Address("TCP", "127.0.0.1", server.port)] == [peer]
    assert host.type == "TCP" and host.host == "127.0.0.1" and host.port != server.port
    assert p.connected == 1


def test_a_blocked_data_received_delays_no_other_client(kit, server, no_leaks):
    """If one client's dataReceived blocks, then three other clients keep exchanging data meanwhile."""
    entered, release = kit.event(), kit.event()

    class Stuck(Recording):
        def dataReceived(self, data):
            entered.set()
            release.wait(10)

    stuck = ReconnectingClient(server.address, backend=kit.name,
                               factory=ReconnectingClientFactory.forProtocol(lambda: Stuck(kit, []), **FAST))
    others = [recording_client(kit, server.address, []) for _ in range(3)]
    with stuck:
        for c in others:
            c.start()
        try:
            stuck.call_protocol(lambda p: p.transport.write(b"block"), timeout=5)
            assert entered.wait(5)
            started = time.monotonic()
            for i in range(10):
                for c in others:
                    round_trip(c, b"free %d" % i)
            assert not release.is_set()
            assert time.monotonic() - started < 5
        finally:
            release.set()
            for c in others:
                c.close()


class HoldingServer:
    """Accepts one connection and reads nothing until :meth:`go`; then reads
    to end-of-file and records the length and SHA-256 of what came."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(20)
        self.address = self._listener.getsockname()
        self._go = threading.Event()
        self.accepted = threading.Event()
        self.length = None
        self.digest = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            self.accepted.set()
            self._go.wait(20)
            conn.settimeout(20)
            digest, length = hashlib.sha256(), 0
            try:
                while True:
                    data = conn.recv(1 << 16)
                    if not data:
                        break
                    digest.update(data)
                    length += len(data)
            except OSError:
                return
            self.length, self.digest = length, digest.hexdigest()

    def go(self):
        self._go.set()

    def stop(self):
        self._go.set()
        self._listener.close()
        self._thread.join(20)
        return not self._thread.is_alive()


def test_ten_megabytes_reach_a_slow_reader_whole_and_in_order(kit, no_leaks):
    """If 10 MB are written to a peer that is not reading, then write() returns at once, and once the peer reads, loseConnection() closes after every byte arrived in order."""
    payload = os.urandom(10 * 1024 * 1024)
    chunks = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
    record = []
    srv = HoldingServer()
    try:
        with recording_client(kit, srv.address, record) as c:
            p = c.wait_protocol(timeout=5)

            def write_all(p):
                started = time.monotonic()
                for chunk in chunks:
                    p.transport.write(chunk)
                return time.monotonic() - started, len(p.transport.buffer)

            took, buffered = c.call_protocol(write_all, timeout=5)
            assert took < 1.0  # only buffered: the peer reads nothing yet
            assert buffered > 0
            c.call_protocol(lambda p: p.transport.loseConnection())
            srv.go()
            assert p.gone.wait(20)
        (reason,) = lost_reasons(record, p)
        assert reason.check(ConnectionDone)
    finally:
        assert kit.block(srv.stop)
    assert srv.length == len(payload)
    assert srv.digest == hashlib.sha256(payload).hexdigest()


def test_close_is_prompt_with_data_buffered_for_a_peer_that_does_not_read(kit, no_leaks):
    """If 10 MB wait for a peer that never reads, then close() returns promptly and connectionLost runs once, with ConnectionAborted for the dropped bytes."""
    record = []
    srv = HoldingServer()
    try:
        c = recording_client(kit, srv.address, record).start()
        p = c.wait_protocol(timeout=5)
        c.call_protocol(lambda p: p.transport.write(b"x" * (10 * 1024 * 1024)))
        started = time.monotonic()
        c.close()
        assert time.monotonic() - started < 2.0
        (reason,) = lost_reasons(record, p)
        assert reason.check(ConnectionAborted)
        assert len(p.transport.buffer) == 0 and p.transport.disconnected
    finally:
        assert kit.block(srv.stop)


def test_writes_from_several_callers_at_once_each_arrive_in_order(kit, server, no_leaks):
    """If four callers write lines through the transport at the same time, then every line comes back whole and each caller's lines in its order."""
    with recording_client(kit, server.address, []) as c:
        p = c.wait_protocol(timeout=5)

        def writer(n):
            for i in range(200):
                p.transport.write(b"%d:%d\n" % (n, i))

        workers = [kit.spawn(writer, n) for n in range(4)]
        kit.join_all(workers, 10)
        for n in range(4):
            assert c.call_protocol(lambda p, n=n: p.expect(b"%d:199\n" % n)).wait(5)
        lines = c.call_protocol(lambda p: p.received).split(b"\n")[:-1]
    assert len(lines) == 800
    for n in range(4):
        mine = [line for line in lines if line.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(200)]


def test_abort_connection_reports_connection_aborted(kit, server, no_leaks):
    """If the protocol calls abortConnection(), then it and the factory hear ConnectionAborted, and a new protocol follows."""
    record, told = [], []

    class Factory(ReconnectingClientFactory):
        def clientConnectionLost(self, connector, reason):
            told.append(reason)
            super().clientConnectionLost(connector, reason)

    with recording_client(kit, server.address, record, Factory) as c:
        p = c.wait_protocol(timeout=5)
        c.call_protocol(lambda p: p.transport.abortConnection())
        assert p.gone.wait(5)
        assert c.wait_protocol(timeout=5) is not p
    (reason,) = lost_reasons(record, p)
    assert reason.check(ConnectionAborted) and told[0].check(ConnectionAborted)
    assert not told[0].check(ConnectionDone)


def test_a_reset_is_connection_lost_not_done(kit, server, no_leaks):
    """If the server resets the connection, then connectionLost gets ConnectionLost, never ConnectionDone."""
    record = []
    with FaultProxy(server.address) as proxy, recording_client(kit, proxy.address, record) as c:
        p = c.wait_protocol(timeout=5)
        kit.block(proxy.reset_all)
        assert p.gone.wait(5)
    (reason,) = lost_reasons(record, p)
    assert reason.check(ConnectionLost) and not reason.check(ConnectionDone, ConnectionAborted)


def test_connector_disconnect_closes_in_order(kit, server, no_leaks):
    """If connector.disconnect() is called, then the transport closes after its writes and the protocol hears ConnectionDone."""
    record = []
    with recording_client(kit, server.address, record) as c:
        p = c.wait_protocol(timeout=5)
        round_trip(c, b"before")
        c.connector.disconnect()
        assert p.gone.wait(5)
    (reason,) = lost_reasons(record, p)
    assert reason.check(ConnectionDone)


def test_handle_methods_say_the_socket_belongs_to_the_protocol(kit, server, no_leaks):
    """If the factory builds protocols, then connection(), call(), sendall(), recv() and wait_connected() raise ProtocolModeError naming client.protocol."""
    with recording_client(kit, server.address, []) as c:
        c.wait_protocol(timeout=5)
        attempts = [lambda: c.connection(), lambda: c.call(lambda s: None),
                    lambda: c.sendall(b"x"), lambda: c.recv(10), lambda: c.wait_connected(1)]
        for attempt in attempts:
            with pytest.raises(ProtocolModeError, match=r"client\.protocol"):
                attempt()
    assert issubclass(ProtocolModeError, RuntimeError)


def test_call_protocol_returns_raises_and_keeps_the_protocol_order(kit, server, no_leaks):
    """If call_protocol runs functions, then it returns their results, raises their exceptions and never runs them during a callback."""
    with recording_client(kit, server.address, []) as c:
        p = c.wait_protocol(timeout=5)
        assert c.call_protocol(lambda p, a, b=0: (p, a + b), 1, b=2) == (p, 3)
        with pytest.raises(KeyError):
            c.call_protocol(lambda p: {}["nope"])
        def poke(p, i):
            p._enter()
            p.transport.write(b"%d," % i)
            p.inside -= 1

        for i in range(20):
            c.call_protocol(poke, i)
        assert c.call_protocol(lambda p: p.expect(b"19,")).wait(5)
        assert p.overlaps == 0
        assert c.protocol is p


def test_wait_protocol_times_out_and_gives_up_like_wait_connected(kit, free_port, no_leaks):
    """If nothing listens, then wait_protocol raises ConnectTimeout after its timeout and GaveUp after fail_after_failures."""
    with recording_client(kit, ("127.0.0.1", free_port), []) as c:
        with pytest.raises(ConnectTimeout):
            c.wait_protocol(timeout=0.1)
        with pytest.raises(GaveUp):
            c.wait_protocol(timeout=5, fail_after_failures=2)
        assert c.protocol is None
        with pytest.raises(ConnectTimeout):
            c.call_protocol(lambda p: None, timeout=0.1)


def test_none_from_build_protocol_closes_in_order_and_retries(kit, no_leaks):
    """If buildProtocol returns None, then the server reads end-of-file, the factory hears ConnectionDone, nothing is read, and the client retries."""
    from test_none_protocol_twisted import ReadingServer

    told, done = [], kit.event()
    srv = ReadingServer(2)

    class Factory(ReconnectingClientFactory):
        def buildProtocol(self, addr):
            return None

        def clientConnectionLost(self, connector, reason):
            told.append(reason)
            if len(told) == 2:
                self.stopTrying()
                done.set()
            else:
                super().clientConnectionLost(connector, reason)

    try:
        with ReconnectingClient(("127.0.0.1", srv.port), factory=Factory(**FAST),
                                backend=kit.name) as c:
            assert done.wait(10)
            assert c.protocol is None
            assert c.stats.connects == 2 and c.stats.losses == 2
        assert kit.block(srv.join)
    finally:
        assert kit.block(srv.stop)
    assert all(r.check(ConnectionDone) for r in told)
    assert srv.endings == ["eof", "eof"]


def test_connection_made_raising_ends_that_connection_with_the_exception(kit, server, no_leaks):
    """If connectionMade raises, then the protocol and the factory get that exception as the reason, and the client connects again."""
    record, told = [], []

    class Boom(Recording):
        def connectionMade(self):
            super().connectionMade()
            if len([e for e in record if e[0] == "made"]) == 1:
                raise RuntimeError("made boom")

    class Factory(ReconnectingClientFactory):
        def clientConnectionLost(self, connector, reason):
            told.append(reason)
            super().clientConnectionLost(connector, reason)

    factory = Factory.forProtocol(lambda: Boom(kit, record), **FAST)
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        second = c.wait_protocol(timeout=5)
        first = record[0][1]
        assert second is not first and first.gone.wait(5)
        round_trip(c, b"still works")
    (reason,) = lost_reasons(record, first)
    assert reason.check(RuntimeError) and told[0].check(RuntimeError)
    assert str(reason.value) == "made boom"


def test_data_received_raising_stops_the_client(kit, server, no_leaks):
    """If dataReceived raises, then the client stops (last_error that exception), the protocol hears it once and waiters get GaveUp."""
    record = []

    class Broken(Recording):
        def dataReceived(self, data):
            raise ValueError("bad bytes")

    factory = ReconnectingClientFactory.forProtocol(lambda: Broken(kit, record), **FAST)
    with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
        p = c.wait_protocol(timeout=5)
        c.call_protocol(lambda p: p.transport.write(b"x"))
        assert c.wait_state(State.STOPPED, timeout=5) is State.STOPPED
        assert p.gone.wait(5)
        assert isinstance(c.stats.last_error, ValueError)
        with pytest.raises(GaveUp):
            c.wait_protocol(timeout=5)
    (reason,) = lost_reasons(record, p)
    assert reason.check(ValueError)


def test_a_pool_refuses_a_factory_with_a_protocol():
    """If a pool is given a factory that builds protocols, then it raises ValueError."""
    with pytest.raises(ValueError, match="ReconnectingClient"):
        ReconnectingPool(("127.0.0.1", 1), 2, factory=ReconnectingClientFactory.forProtocol(Protocol))


def test_a_heartbeat_is_refused_in_protocol_mode():
    """If a client with a protocol factory is given a heartbeat, then it raises ValueError."""
    with pytest.raises(ValueError, match="heartbeat"):
        ReconnectingClient(("127.0.0.1", 1), factory=ReconnectingClientFactory.forProtocol(Protocol),
                           backend="thread", heartbeat=lambda s: None, heartbeat_interval=1)


def test_wait_protocol_without_a_protocol_is_an_error(kit, server, no_leaks):
    """If the factory builds no protocol, then wait_protocol raises ProtocolModeError and the handle works as before."""
    with ReconnectingClient(server.address, backend=kit.name) as c:
        with pytest.raises(ProtocolModeError, match="wait_connected"):
            c.wait_protocol(timeout=1)
        assert c.protocol is None
        assert c.wait_connected(timeout=5) is not None


def test_write_from_another_os_thread_is_sent(kit, server, no_leaks):
    """If a plain OS thread (not the client's caller) writes to the transport, then the bytes are sent, on the gevent backend too."""
    with recording_client(kit, server.address, []) as c:
        p = c.wait_protocol(timeout=5)
        arrived = c.call_protocol(lambda p: p.expect(b"from a thread"))
        writer = threading.Thread(target=p.transport.write, args=(b"from a thread",))
        writer.start()
        kit.block(writer.join, 5)
        assert arrived.wait(5)


def test_call_protocol_after_close_raises_client_closed(kit, server, no_leaks):
    """If the client is closed, then call_protocol and wait_protocol raise ClientClosed and protocol is None."""
    c = recording_client(kit, server.address, []).start()
    c.wait_protocol(timeout=5)
    c.close()
    assert c.protocol is None
    with pytest.raises(ClientClosed):
        c.call_protocol(lambda p: None, timeout=1)
    with pytest.raises(ClientClosed):
        c.wait_protocol(timeout=1)


def test_call_protocol_times_out_behind_a_busy_callback(kit, server, no_leaks):
    """If the protocol's callback is still running when the timeout ends, then call_protocol raises ConnectTimeout and its function never runs."""
    entered, release = kit.event(), kit.event()
    ran = []
    with recording_client(kit, server.address, []) as c:
        c.wait_protocol(timeout=5)
        busy = kit.spawn(c.call_protocol, lambda p: (entered.set(), release.wait(10)))
        assert entered.wait(5)
        with pytest.raises(ConnectTimeout, match="did not finish"):
            c.call_protocol(lambda p: ran.append(p), timeout=0.2)
        release.set()
        kit.join_all([busy], 5)
        assert c.call_protocol(lambda p: "after") == "after"
    assert ran == []


def test_reading_pauses_while_the_protocol_is_behind(kit, server, no_leaks):
    """If dataReceived is stuck while the server pushes 32 MB, then the client stops reading (the server's send cannot finish), and once unstuck every byte arrives in order."""
    payload = os.urandom(1024) * (32 * 1024)
    release = kit.event()
    everything = kit.event()

    class Slow(Protocol):
        def connectionMade(self):
            self.chunks, self.length = [], 0

        def dataReceived(self, data):
            release.wait(20)
            self.chunks.append(data)
            self.length += len(data)
            if self.length >= len(payload):
                everything.set()

    factory = ReconnectingClientFactory.forProtocol(Slow, **FAST)
    # A fixed receive buffer: the kernel may otherwise grow it (tcp_rmem) to
    # hold the whole push without the client reading at all.
    small = TCPConnector(*server.address,
                         socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    with ReconnectingClient(small, factory=factory, backend=kit.name) as c:
        p = c.wait_protocol(timeout=5)
        assert kit.block(server.wait_accepted, 1, 5)  # the server knows the connection
        pushed, reached = threading.Event(), []
        pusher = threading.Thread(target=lambda: (reached.append(server.push(payload)),
                                                  pushed.set()), daemon=True)
        pusher.start()
        # Bounded check that something does not happen: the kernel buffers
        # hold far less than 32 MB, so the push can only finish if we read on.
        assert not kit.block(pushed.wait, 1.0)
        release.set()
        assert everything.wait(20)
        assert kit.block(pushed.wait, 10)
        kit.block(pusher.join, 5)
        assert reached == [1]
        assert b"".join(p.chunks) == payload


def test_close_returns_after_connection_lost_ran_while_other_clients_run(kit, server, no_leaks):
    """If one of two clients is closed, then by the time close() returns its protocol has heard connectionLost, and the other client still works."""
    class SlowLoss(Recording):
        def connectionLost(self, reason):
            kit.sleep(0.05)  # a little work in connectionLost
            super().connectionLost(reason)

    record = []
    factory = ReconnectingClientFactory.forProtocol(lambda: SlowLoss(kit, record), **FAST)
    other = recording_client(kit, server.address, [])
    with other:
        for _ in range(5):
            c = ReconnectingClient(server.address, factory=factory, backend=kit.name).start()
            p = c.wait_protocol(timeout=5)
            c.close()
            assert lost_reasons(record, p) and lost_reasons(record, p)[0].check(ConnectionDone)
        round_trip(other, b"still here")
