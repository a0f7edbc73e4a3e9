"""Tools for testing code that uses rcf_sync: a fake clock and a fault proxy."""

from ._clock import FakeClock

__all__ = ["FakeClock"]

FakeClock.__module__ = __name__
