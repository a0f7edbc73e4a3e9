"""Unit tests of ``rcf_sync.Protocol``, the write buffer and the transport.

No sockets: the transport is driven by a fake sender that records what it is
asked to do, and a test drains the buffer the way a background sender will.
"""

import threading

import pytest

import rcf_sync
from rcf_sync import ConnectionDone, Failure, IPv4Address, Protocol
from rcf_sync._protocol import BaseProtocol, Transport, _WriteBuffer, connectionDone

PEER = IPv4Address("TCP", "127.0.0.1", 6379)
HOST = IPv4Address("TCP", "127.0.0.1", 50000)


class FakeSender:
    """Records wake() and abort() calls."""

    def __init__(self):
        self.calls = []

    def wake(self):
        self.calls.append("wake")

    def abort(self):
        self.calls.append("abort")


def drain(buffer, chunk=7):
    """Send everything like a sender would, ``chunk`` bytes at a time."""
    sent = []
    for _ in range(len(buffer) + 1):
        data = buffer.take(chunk)
        if not data:
            break
        sent.append(bytes(data))
        buffer.mark_sent(len(data))
    return b"".join(sent)


def make_transport():
    sender = FakeSender()
    return Transport(sender, peer=PEER, host=HOST), sender


# -- Protocol ------------------------------------------------------------------------


def test_make_connection_sets_transport_and_connected_then_calls_connection_made():
    """If makeConnection() is called, then transport and connected are set before connectionMade() runs, once."""
    seen = []

    class P(Protocol):
        def connectionMade(self):
            seen.append((self.connected, self.transport))

    p = P()
    assert (p.connected, p.transport, p.factory) == (0, None, None)
    transport = object()
    p.makeConnection(transport)
    assert seen == [(1, transport)]
    assert p.transport is transport and p.connected == 1


def test_default_callbacks_do_nothing_and_connected_stays_set():
    """If the default dataReceived() and connectionLost() run, then they return None and leave connected at 1, as Twisted's."""
    p = Protocol()
    p.makeConnection(object())
    assert p.dataReceived(b"data") is None
    assert p.connectionLost(Failure(ConnectionDone())) is None
    assert p.connectionLost() is None
    assert p.connected == 1


def test_connection_lost_defaults_to_a_clean_close():
    """If connectionLost() is called without a reason, then the reason is a Failure of ConnectionDone."""
    reasons = []

    class P(Protocol):
        def connectionLost(self, reason=connectionDone):
            reasons.append(reason)

    P().connectionLost()
    assert reasons == [connectionDone]
    assert isinstance(connectionDone, Failure) and connectionDone.check(ConnectionDone)
    assert connectionDone.getErrorMessage() == "Connection was closed cleanly."


def test_log_prefix_and_base_class():
    """If logPrefix() is called, then it returns the class name; Protocol is a BaseProtocol exported as rcf_sync.Protocol."""

    class Chat(Protocol):
        pass

    assert Chat().logPrefix() == "Chat"
    assert issubclass(Protocol, BaseProtocol)
    assert rcf_sync.Protocol is Protocol and Protocol.__module__ == "rcf_sync"


# -- _WriteBuffer ---------------------------------------------------------------------


def test_buffer_keeps_order_across_chunk_sizes():
    """If chunks of many sizes are appended, then taking in small steps returns exactly the bytes in order."""
    buf = _WriteBuffer()
    expected = b""
    for i in range(40):
        chunk = bytes([65 + i % 26]) * (i * 3 % 17 + 1)
        buf.append(chunk)
        expected += chunk
    assert len(buf) == len(expected)
    assert drain(buf, chunk=5) == expected
    assert buf.empty and len(buf) == 0


def test_append_reports_only_the_empty_to_non_empty_transition():
    """If bytes are appended, then append() is true only when the buffer was empty."""
    buf = _WriteBuffer()
    assert buf.append(b"a") is True
    assert buf.append(b"b") is False
    assert buf.mark_sent(2) == 0
    assert buf.append(b"c") is True
    assert buf.append(b"") is False


def test_take_returns_at_most_limit_without_removing():
    """If take(n) is called, then it returns at most n bytes from the front and repeating it returns the same bytes."""
    buf = _WriteBuffer()
    buf.append(b"hello world")
    assert buf.take(5) == b"hello"
    assert buf.take(5) == b"hello"
    assert buf.take(100) == b"hello world"
    assert len(buf) == 11


def test_take_coalesces_small_chunks_up_to_the_limit():
    """If many small chunks are queued, then one take() returns several of them joined, never more than the limit."""
    buf = _WriteBuffer()
    for c in (b"ab", b"cd", b"ef", b"gh"):
        buf.append(c)
    assert buf.take(6) == b"abcdef"
    assert buf.mark_sent(3) == 5
    assert buf.take(100) == b"defgh"


def test_take_does_not_split_a_big_chunk_to_fill_the_limit():
    """If a small chunk is followed by a big one, then take() returns the small one alone rather than copying part of the big one."""
    buf = _WriteBuffer()
    buf.append(b"head")
    buf.append(b"x" * 1000)
    assert buf.take(100) == b"head"
    buf.mark_sent(4)
    assert buf.take(100) == b"x" * 100


def test_mark_sent_partially_advances_within_a_chunk():
    """If only part of a chunk is marked sent, then the next take starts right after it."""
    buf = _WriteBuffer()
    buf.append(b"abcdef")
    assert buf.mark_sent(2) == 4
    assert buf.take(3) == b"cde"
    assert buf.mark_sent(4) == 0 and buf.take(3) == b""


def test_mark_sent_rejects_counts_out_of_range():
    """If mark_sent() gets a negative count or more than is buffered, then ValueError names the range."""
    buf = _WriteBuffer()
    buf.append(b"abc")
    with pytest.raises(ValueError, match=r"0\.\.3"):
        buf.mark_sent(4)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        buf.mark_sent(-1)
    assert len(buf) == 3


def test_take_rejects_a_limit_below_one():
    """If take() gets a limit below 1, then ValueError is raised."""
    with pytest.raises(ValueError, match="limit"):
        _WriteBuffer().take(0)


def test_bytes_like_data_is_copied():
    """If a bytearray is appended and then changed, then the buffer still holds what was appended."""
    buf = _WriteBuffer()
    data = bytearray(b"abc")
    buf.append(data)
    buf.append(memoryview(b"def"))
    data[:] = b"zzz"
    assert drain(buf) == b"abcdef"


def test_close_drops_everything_and_refuses_later_appends():
    """If the buffer is closed, then it reports what it dropped, is empty, and later appends are dropped."""
    buf = _WriteBuffer()
    buf.append(b"abc")
    buf.append(b"de")
    assert buf.close() == 5
    assert buf.closed and buf.empty and buf.take(10) == b""
    assert buf.append(b"more") is False and len(buf) == 0
    assert buf.mark_sent(0) == 0


def test_close_if_empty_closes_only_an_empty_buffer():
    """If close_if_empty() is called with data waiting, then it keeps the data; once drained, it closes."""
    buf = _WriteBuffer()
    buf.append(b"abc")
    assert buf.close_if_empty() is False and not buf.closed
    drain(buf)
    assert buf.close_if_empty() is True and buf.closed
    assert buf.append(b"late") is False


def test_concurrent_appenders_lose_and_reorder_nothing():
    """If 8 threads append while another drains, then every byte arrives once and each thread's bytes keep their order."""
    buf = _WriteBuffer()
    writers, per_writer = 8, 500
    done = threading.Event()
    received = []

    def writer(n):
        for i in range(per_writer):
            buf.append(f"<{n}:{i}>".encode())

    def drainer():
        # Drain while the writers run (waiting on `done` whenever the buffer
        # is empty), then take what is left.
        for _ in range(1_000_000):
            data = buf.take(4096)
            if data:
                received.append(bytes(data))
                buf.mark_sent(len(data))
            elif done.wait(0.001):
                break
        received.append(drain(buf, chunk=4096))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    reader = threading.Thread(target=drainer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    reader.join(30)
    assert not reader.is_alive() and not any(t.is_alive() for t in threads)
    text = b"".join(received).decode()
    items = text[1:-1].split("><")
    assert len(items) == writers * per_writer
    for n in range(writers):
        mine = [int(item.split(":")[1]) for item in items if item.startswith(f"{n}:")]
        assert mine == list(range(per_writer))


# -- Transport -----------------------------------------------------------------------


def test_write_buffers_and_wakes_the_sender_once_per_empty_buffer():
    """If several writes come in, then the bytes are buffered in order and the sender is woken only for the first."""
    t, sender = make_transport()
    t.write(b"one ")
    t.write(b"two ")
    t.write(b"")
    assert sender.calls == ["wake"]
    assert drain(t.buffer) == b"one two "
    t.write(b"three")
    assert sender.calls == ["wake", "wake"]


def test_write_returns_at_once_with_ten_megabytes_nobody_sends():
    """If 10 MB are written while the sender sends nothing, then write() returns and every byte is buffered."""
    t, sender = make_transport()
    payload = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    for i in range(0, len(payload), 65536):
        t.write(payload[i:i + 65536])
    assert len(t.buffer) == len(payload)
    assert sender.calls == ["wake"]
    assert drain(t.buffer, chunk=1 << 20) == payload


def test_write_rejects_anything_but_bytes():
    """If write() or writeSequence() gets str or bytearray, then TypeError says data must be bytes and nothing is buffered."""
    t, sender = make_transport()
    for bad in ("text", bytearray(b"x"), None):
        with pytest.raises(TypeError, match="Data must be bytes"):
            t.write(bad)
    with pytest.raises(TypeError, match="Data must be bytes"):
        t.writeSequence([b"ok", "bad"])
    assert len(t.buffer) == 0 and sender.calls == []


def test_write_sequence_queues_all_chunks_together():
    """If writeSequence() is given a generator of chunks, then all are buffered in order with one wake."""
    t, sender = make_transport()
    t.writeSequence(c for c in (b"a", b"b", b"", b"c"))
    t.writeSequence([])
    assert drain(t.buffer) == b"abc"
    assert sender.calls == ["wake"]


def test_lose_connection_sets_disconnecting_and_closes_after_the_flush():
    """If loseConnection() is called with data buffered, then disconnecting is set and close_if_flushed() is true only once all is sent."""
    t, sender = make_transport()
    t.write(b"bye")
    t.loseConnection()
    assert t.disconnecting and t.connected
    assert sender.calls == ["wake", "wake"]
    assert t.close_if_flushed() is False
    t.write(b"!")  # as Twisted: still sent after loseConnection, before the flush ends
    assert drain(t.buffer) == b"bye!"
    assert t.close_if_flushed() is True
    t.write(b"dropped")
    assert len(t.buffer) == 0


def test_lose_connection_twice_wakes_once():
    """If loseConnection() is called twice, then the second call does nothing."""
    t, sender = make_transport()
    t.loseConnection()
    t.loseConnection()
    assert sender.calls == ["wake"]
    assert t.close_if_flushed() is True


def test_close_if_flushed_is_false_without_lose_connection():
    """If nothing asked to close, then close_if_flushed() is false even with an empty buffer."""
    t, _ = make_transport()
    assert t.close_if_flushed() is False
    t.write(b"still open")
    assert len(t.buffer) == 10


def test_abort_drops_buffered_data_and_asks_the_sender_to_abort_once():
    """If abortConnection() is called, then buffered data is dropped, the sender is asked to abort once and later writes are dropped."""
    t, sender = make_transport()
    t.write(b"unsent")
    t.abortConnection()
    t.abortConnection()
    assert sender.calls == ["wake", "abort"]
    assert t.aborting and not t.disconnecting
    t.write(b"late")
    assert len(t.buffer) == 0 and sender.calls == ["wake", "abort"]


def test_connection_lost_drops_the_rest_and_later_calls_do_nothing():
    """If the sender reports the connection lost, then unsent bytes are dropped and counted, flags flip, and later calls are no-ops."""
    t, sender = make_transport()
    t.write(b"12345")
    assert t.connection_lost() == 5
    assert (t.connected, t.disconnected) == (False, True)
    t.write(b"x")
    t.writeSequence([b"y"])
    t.loseConnection()
    t.abortConnection()
    assert len(t.buffer) == 0 and sender.calls == ["wake"]
    assert not t.disconnecting and not t.aborting


def test_peer_and_host_are_what_was_given():
    """If getPeer() and getHost() are called, then they return the addresses the transport was made with."""
    t, _ = make_transport()
    assert t.getPeer() == PEER and t.getHost() == HOST
    assert "127.0.0.1" in repr(t) and "connected" in repr(t)


def test_writes_from_many_threads_all_arrive_in_each_writers_order():
    """If 8 threads write through one transport while a sender drains on every wake, then all bytes arrive, each writer's in order."""
    received = []
    woken = threading.Event()

    class DrainingSender(FakeSender):
        def wake(self):
            woken.set()

    sender = DrainingSender()
    t = Transport(sender, peer=PEER, host=HOST)
    stop = threading.Event()

    def background():
        for _ in range(10_000_000):
            woken.wait(5)
            woken.clear()
            while True:
                data = t.buffer.take(65536)
                if not data:
                    break
                received.append(bytes(data))
                t.buffer.mark_sent(len(data))
            if t.close_if_flushed():
                stop.set()
                return

    writers, per_writer = 8, 300

    def writer(n):
        for i in range(per_writer):
            t.write(f"<{n}:{i}>".encode())

    bg = threading.Thread(target=background)
    bg.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    t.loseConnection()
    assert stop.wait(30)
    bg.join(30)
    items = b"".join(received).decode()[1:-1].split("><")
    assert len(items) == writers * per_writer
    for n in range(writers):
        assert [int(x.split(":")[1]) for x in items if x.startswith(f"{n}:")] == list(range(per_writer))


GEVENT_WRITERS = r'''
from gevent import monkey
monkey.patch_all()
import gevent
from rcf_sync._protocol import Transport

class Sender:
    def wake(self):
        pass
    def abort(self):
        pass

t = Transport(Sender())

def write(tag, n):
    for i in range(n):
        t.write(b"<%s:%d>" % (tag, i))
        if tag.startswith(b"g"):
            gevent.sleep(0)

pool = gevent.get_hub().threadpool
jobs = [gevent.spawn(write, b"g%d" % k, 200) for k in range(4)]
jobs += [pool.spawn(write, b"t%d" % k, 200) for k in range(2)]
gevent.joinall(jobs, timeout=30, raise_error=True)
data = t.buffer.take(len(t.buffer)).decode()
items = data[1:-1].split("><")
for tag in ["g0", "g1", "g2", "g3", "t0", "t1"]:
    mine = [int(x.split(":")[1]) for x in items if x.split(":")[0] == tag]
    assert mine == list(range(200)), (tag, mine[:10])
print("ok", len(items))
'''


def test_greenlets_and_native_threads_write_safely_under_monkey_patching():
    """If greenlets and native threads write through one transport under gevent's monkey-patching, then every write arrives in each writer's order."""
    pytest.importorskip("gevent")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", GEVENT_WRITERS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "1200"]


def test_twisted_line_receiver_runs_over_our_transport():
    """If Twisted's LineReceiver is connected to our transport, then its lines are buffered for sending and loseConnection() stops it after the current line."""
    pytest.importorskip("twisted")
    from twisted.protocols.basic import LineReceiver

    class Lines(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self):
            self.got = []
            self.sendLine(b"HELLO")

        def lineReceived(self, line):
            self.got.append(line)
            self.sendLine(b"ECHO " + line)
            if line == b"QUIT":
                self.transport.loseConnection()

    t, sender = make_transport()
    p = Lines()
    p.makeConnection(t)
    p.dataReceived(b"one\ntw")
    p.dataReceived(b"o\nQUIT\nignored\n")
    assert p.got == [b"one", b"two", b"QUIT"]
    assert drain(t.buffer) == b"HELLO\nECHO one\nECHO two\nECHO QUIT\n"
    assert t.disconnecting and t.close_if_flushed()
    assert sender.calls == ["wake", "wake"]


def test_twisted_int32_string_receiver_runs_over_our_transport():
    """If Twisted's Int32StringReceiver is connected to our transport, then framed strings go both ways."""
    pytest.importorskip("twisted")
    import struct

    from twisted.protocols.basic import Int32StringReceiver

    class Frames(Int32StringReceiver):
        def connectionMade(self):
            self.got = []

        def stringReceived(self, string):
            self.got.append(string)
            self.sendString(string.upper())

    t, _ = make_transport()
    p = Frames()
    p.makeConnection(t)
    wire = struct.pack("!I", 3) + b"abc" + struct.pack("!I", 2) + b"de"
    for i in range(len(wire)):  # one byte at a time
        p.dataReceived(wire[i:i + 1])
    assert p.got == [b"abc", b"de"]
    assert drain(t.buffer) == struct.pack("!I", 3) + b"ABC" + struct.pack("!I", 2) + b"DE"
