"""Twisted's documented reconnecting client, run by rcf_sync.

The classes below are the reconnecting client from Twisted's "Writing
Clients" guide in its Python 3 form, changed in two places only: the import
takes ``Protocol`` and ``ReconnectingClientFactory`` from rcf_sync, and
``reactor.connectTCP(host, port, factory)`` / ``reactor.run()`` become
``ReconnectingClient((host, port), factory=factory).start()`` (see
:func:`main`). Everything else runs as under Twisted: ``startedConnecting``
before each attempt, ``buildProtocol(addr)`` once connected (it resets the
back-off and returns the protocol the client then drives),
``clientConnectionLost`` / ``clientConnectionFailed`` with a
``Failure`` as ``reason``, and the base class's back-off in between.

Run it with ``python examples/twisted_protocol.py HOST PORT`` against any
server that talks (every byte it sends is printed); stop it with Ctrl-C.
"""

import sys
import threading

# The first import below is the line the tests swap for Twisted's own.
# isort: off
from rcf_sync import Protocol, ReconnectingClientFactory
from rcf_sync import ReconnectingClient
# isort: on

__all__ = ["Echo", "EchoClientFactory", "main"]


# -- Twisted's documented client (Python 3 form) --------------------------------


class Echo(Protocol):
    def dataReceived(self, data):
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()


class EchoClientFactory(ReconnectingClientFactory):
    def startedConnecting(self, connector):
        print("Started to connect.")

    def buildProtocol(self, addr):
        print("Connected.")
        print("Resetting reconnection delay")
        self.resetDelay()
        return Echo()

    def clientConnectionLost(self, connector, reason):
        print("Lost connection.  Reason:", reason.getErrorMessage())
        ReconnectingClientFactory.clientConnectionLost(self, connector, reason)

    def clientConnectionFailed(self, connector, reason):
        print("Connection failed. Reason:", reason.getErrorMessage())
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)


# -- what replaces reactor.connectTCP() and reactor.run() ---------------------------


def main(argv=None):
    """Connect to ``HOST PORT`` (default 127.0.0.1 8000) until Ctrl-C."""
    args = sys.argv[1:] if argv is None else argv
    host, port = (args[0], int(args[1])) if len(args) == 2 else ("127.0.0.1", 8000)
    client = ReconnectingClient((host, port), factory=EchoClientFactory()).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
