"""Backends: where the background work of clients runs."""

__all__ = ["default_clock"]


def default_clock():
    """The thread backend's real clock (what a factory with no clock uses)."""
    from ._thread import get_runtime

    return get_runtime().clock
