"""Tools for testing code that uses rcf_sync: a fake clock, a fault proxy
and a loopback echo server."""

from ._clock import FakeClock
from ._echo import EchoServer, echo_round_trip
from ._proxy import FaultProxy

__all__ = ["FakeClock", "FaultProxy", "EchoServer", "echo_round_trip"]

for _cls in (FakeClock, FaultProxy, EchoServer):
    _cls.__module__ = __name__
del _cls
