"""Tools for testing code that uses rcf_sync: a fake clock and a fault proxy."""

from ._clock import FakeClock
from ._proxy import FaultProxy

__all__ = ["FakeClock", "FaultProxy"]

FakeClock.__module__ = __name__
FaultProxy.__module__ = __name__
