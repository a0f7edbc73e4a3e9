"""examples/redis_subscribe.py: a push protocol (Redis-style pub/sub) run by
the client against a tiny loopback RESP server, on both backends, across
server restarts."""

import importlib.util
import socket
import threading
from pathlib import Path

from rcf_sync import ConnectionDone, ReconnectingClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "redis_subscribe.py"


def load_example():
    spec = importlib.util.spec_from_file_location("redis_subscribe_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


class FakeRedis:
    """A loopback server speaking the part of RESP a subscriber needs:
    ``SUBSCRIBE channel...`` (confirmed per channel), ``PUBLISH channel
    message`` (answered with the number of receivers) and ``PING``.
    :meth:`publish` pushes from the test. :meth:`stop` closes the listener
    and every connection (clients read end-of-file); :meth:`start` listens
    again on the same port. Threads are joined on stop."""

    def __init__(self):
        self.port = 0
        self._listener = None
        self._thread = None
        self._lock = threading.Lock()
        self._conns = {}     # socket -> set of channels
        self._handlers = []
        self.subscriptions = 0

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, listener):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns[conn] = set()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._handlers.append(t)
            t.start()

    def _serve(self, conn):
        parser = example.RespParser()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                for command in parser.feed(data):
                    self._command(conn, [w.upper() if i == 0 else w for i, w in enumerate(command)])
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    def _command(self, conn, command):
        name = command[0]
        if name == b"SUBSCRIBE":
            for channel in command[1:]:
                with self._lock:
                    channels = self._conns.get(conn, set())
                    channels.add(channel)
                    self.subscriptions += 1
                    count = len(channels)
                conn.sendall(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                             % (len(channel), channel, count))
        elif name == b"PUBLISH":
            conn.sendall(b":%d\r\n" % self.publish(command[1], command[2]))
        elif name == b"PING":
            conn.sendall(b"+PONG\r\n")
        else:
            conn.sendall(b"-ERR unknown command\r\n")

    def publish(self, channel, message):
        """Push ``message`` to every subscriber of ``channel``; return how many."""
        channel = channel.encode() if isinstance(channel, str) else channel
        message = message.encode() if isinstance(message, str) else message
        push = example.encode_command("message", channel, message)
        with self._lock:
            targets = [c for c, chans in self._conns.items() if channel in chans]
        sent = 0
        for conn in targets:
            try:
                conn.sendall(push)
                sent += 1
            except OSError:
                pass
        return sent

    def stop(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        handlers, self._handlers = self._handlers, []
        for t in handlers:
            t.join(10)
        return not any(t.is_alive() for t in handlers)


def collecting_factory(kit, **kw):
    """The example's factory, recording instead of printing: the k-th
    subscription or message sets event k-1 of its list."""

    class Collecting(example.SubscriberFactory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.subs, self.messages, self.losses = [], [], []
            self.sub_events = [kit.event() for _ in range(10)]
            self.message_events = [kit.event() for _ in range(20)]

        def subscribed(self, channel, protocol):
            self.subs.append((channel, protocol))
            self.sub_events[len(self.subs) - 1].set()

        def message_received(self, channel, data):
            self.messages.append((channel, data))
            self.message_events[len(self.messages) - 1].set()

        def unsubscribed(self, protocol, reason):
            self.losses.append(reason)

    return Collecting(**kw)


def test_the_parser_takes_replies_in_any_pieces():
    """If RESP replies arrive split at every byte, then the parser returns them whole and in order."""
    wire = (b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n+OK\r\n-ERR no\r\n$-1\r\n"
            + example.encode_command("message", "news", "hi\r\nthere"))
    parser = example.RespParser()
    replies = []
    for i in range(len(wire)):
        replies += parser.feed(wire[i:i + 1])
    assert replies[0] == [b"subscribe", b"news", 1]
    assert replies[1] == "OK" and str(replies[2]) == "ERR no" and replies[3] is None
    assert replies[4] == [b"message", b"news", b"hi\r\nthere"]


def test_the_subscriber_resubscribes_after_server_restarts(kit, no_leaks):
    """If the server pushes messages and restarts twice, then each new protocol subscribes again and every message published while subscribed arrives in order."""
    server = FakeRedis().start()
    factory = collecting_factory(kit, channels=["news", "sport"], initialDelay=0.02, maxDelay=0.1)
    expected = []
    try:
        with ReconnectingClient(server.address, factory=factory, backend=kit.name) as c:
            for round_ in range(3):
                assert factory.sub_events[2 * round_ + 1].wait(5), factory.subs
                for i in range(3):
                    for channel in ("news", "sport"):
                        message = f"{channel} {round_}.{i}"
                        assert kit.block(server.publish, channel, message) == 1
                        expected.append((channel.encode(), message.encode()))
                assert factory.message_events[len(expected) - 1].wait(5), factory.messages
                if round_ < 2:
                    assert kit.block(server.stop)
                    server.start()
            protocols = [p for _, p in factory.subs]
            assert c.protocol is protocols[-1]
    finally:
        assert kit.block(server.stop)
    assert factory.messages == expected
    assert [ch for ch, _ in factory.subs] == [b"news", b"sport"] * 3
    assert len(set(protocols)) == 3
    assert len(factory.losses) == 3  # two restarts, then close()
    assert all(r.check(ConnectionDone) for r in factory.losses[:2])
