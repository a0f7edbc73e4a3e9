"""rcf_sync: Twisted's ReconnectingClientFactory for synchronous Python.

A client connection that re-establishes itself with Twisted's exponential
back-off and jitter, run by a background thread or gevent greenlet, handed to
blocking code as a plain socket.
"""

from ._address import IPv4Address, IPv6Address
from ._client import ReconnectingClient, Stats
from ._connectors import (
    Connector,
    SocketFactoryConnector,
    TCPAddress,
    TCPConnector,
    UNIXAddress,
    UNIXConnector,
)
from ._errors import (
    AlreadyCalled,
    AlreadyCancelled,
    ClientClosed,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectTimeout,
    GaveUp,
    NotConnectingError,
    ProtocolModeError,
    RCFError,
)
from ._factory import ReconnectingClientFactory
from ._failure import Failure
from ._interfaces import IConnector, IDelayedCall, IReactorTime
from ._pool import ReconnectingPool
from ._protocol import Protocol
from ._state import State
from ._version import __version__

__all__ = [
    "ReconnectingClient",
    "ReconnectingClientFactory",
    "ReconnectingPool",
    "Stats",
    "Connector",
    "TCPConnector",
    "UNIXConnector",
    "SocketFactoryConnector",
    "TCPAddress",
    "UNIXAddress",
    "IPv4Address",
    "IPv6Address",
    "Protocol",
    "Failure",
    "IReactorTime",
    "IDelayedCall",
    "IConnector",
    "State",
    "RCFError",
    "ConnectionLost",
    "ConnectionDone",
    "ConnectionAborted",
    "ConnectTimeout",
    "GaveUp",
    "ClientClosed",
    "NotConnectingError",
    "ProtocolModeError",
    "AlreadyCalled",
    "AlreadyCancelled",
    "__version__",
]

from . import _factory
from ._backends import default_clock as _default_clock

_factory.default_clock_provider = _default_clock

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
