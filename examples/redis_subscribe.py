"""A Redis-style subscriber: a push protocol kept alive across server restarts.

The server speaks unasked here: once subscribed, every ``PUBLISH`` to a
channel reaches us as a ``message`` push. That is what the handle's
``connection()`` cannot serve (bytes nobody asked for discard an idle
connection) and what protocol mode is for:

* :class:`Subscriber` is a protocol in Twisted's shape. ``connectionMade``
  sends ``SUBSCRIBE``; ``dataReceived`` parses the RESP replies and pushes,
  in whatever pieces they arrive, and hands each message to the factory;
* :class:`SubscriberFactory` is a ``ReconnectingClientFactory`` whose
  ``protocol`` is ``Subscriber``: the client builds a new one on every
  connection, so after the server restarts the new protocol subscribes
  again, and the back-off between attempts is Twisted's;
* ``ReconnectingClient(address, factory=factory)`` does the rest: reading,
  writing, the back-off, and running the protocol's callbacks in order in
  the background (they may block without delaying other clients).

Run ``python examples/redis_subscribe.py [HOST PORT [CHANNEL ...]]``
(default ``127.0.0.1 6379 news``) against a Redis server (or the loopback
fake of the test suite), publish with ``redis-cli publish news hello``, and
stop it with Ctrl-C.
"""

import sys
import threading

from rcf_sync import Protocol, ReconnectingClient, ReconnectingClientFactory

__all__ = ["Subscriber", "SubscriberFactory", "encode_command", "RespParser", "main"]


def encode_command(*words):
    """A command as a RESP array of bulk strings (``bytes`` or ``str``)."""
    words = [w.encode() if isinstance(w, str) else bytes(w) for w in words]
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


class RespParser:
    """Incremental parser of RESP replies: :meth:`feed` bytes, get back the
    complete replies so far (bulk strings as ``bytes``, integers as ``int``,
    simple strings as ``str``, errors as ``Exception``, arrays as lists)."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data):
        self._buffer += data
        replies = []
        while True:
            parsed = self._parse(0)
            if parsed is None:
                return replies
            reply, end = parsed
            self._buffer = self._buffer[end:]
            replies.append(reply)

    def _parse(self, start):
        # (reply, end) for the reply starting at ``start``, or None if incomplete.
        line_end = self._buffer.find(b"\r\n", start)
        if line_end < 0:
            return None
        kind, rest, after = self._buffer[start:start + 1], self._buffer[start + 1:line_end], line_end + 2
        if kind == b"+":
            return rest.decode(), after
        if kind == b"-":
            return Exception(rest.decode()), after
        if kind == b":":
            return int(rest), after
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None, after
            if len(self._buffer) < after + size + 2:
                return None
            return self._buffer[after:after + size], after + size + 2
        if kind == b"*":
            items = []
            for _ in range(int(rest)):
                parsed = self._parse(after)
                if parsed is None:
                    return None
                item, after = parsed
                items.append(item)
            return items, after
        raise ValueError(f"not a RESP reply: {self._buffer[start:line_end]!r}")


class Subscriber(Protocol):
    """Subscribes to ``factory.channels`` when connected and hands every
    message pushed on them to ``factory.message_received(channel, data)``."""

    def connectionMade(self):
        self._parser = RespParser()
        self.subscribed = set()
        self.transport.write(encode_command("SUBSCRIBE", *self.factory.channels))

    def dataReceived(self, data):
        for reply in self._parser.feed(data):
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"subscribe":
                self.subscribed.add(reply[1])
                self.factory.subscribed(reply[1], self)
            elif kind == b"message":
                self.factory.message_received(reply[1], reply[2])

    def connectionLost(self, reason):
        self.factory.unsubscribed(self, reason)


class SubscriberFactory(ReconnectingClientFactory):
    """Builds a :class:`Subscriber` per connection; override the three
    hooks (they run in the client's background, in order)."""

    protocol = Subscriber

    def __init__(self, channels=("news",), **kwargs):
        super().__init__(**kwargs)
        self.channels = [c.encode() if isinstance(c, str) else c for c in channels]

    def subscribed(self, channel, protocol):
        """The server confirmed a subscription (on every new connection)."""
        print(f"subscribed to {channel.decode()}", flush=True)

    def message_received(self, channel, data):
        print(f"{channel.decode()}: {data.decode('utf-8', 'replace')}", flush=True)

    def unsubscribed(self, protocol, reason):
        print(f"connection lost ({reason.getErrorMessage()}); resubscribing once it is back",
              flush=True)


def main(argv=None):
    """Subscribe to HOST PORT CHANNEL... and print messages until Ctrl-C."""
    args = sys.argv[1:] if argv is None else argv
    host, port = (args[0], int(args[1])) if len(args) >= 2 else ("127.0.0.1", 6379)
    factory = SubscriberFactory(args[2:] or ["news"], initialDelay=0.1, maxDelay=5)
    client = ReconnectingClient((host, port), factory=factory).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
