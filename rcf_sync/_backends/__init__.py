"""Backends: where the background work of clients runs (see ``_base``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import socket_is_patched

if TYPE_CHECKING:
    from .._interfaces import IReactorTime
    from ._seam import Backend

__all__ = ["default_clock", "get_backend", "BACKENDS"]

BACKENDS = ("auto", "thread", "gevent")


def get_backend(name: object = "auto") -> Backend:
    """Return the backend object for ``"thread"``, ``"gevent"`` or
    ``"auto"`` (gevent when the socket module is monkey-patched).

    ``ValueError`` for another name; ``ImportError`` with an install hint
    when gevent is asked for but not installed."""
    if not isinstance(name, str):
        if hasattr(name, "start_attempt") and hasattr(name, "call_soon"):
            backend: Backend = name  # type: ignore[assignment]  # duck-typed: checked above
            return backend
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        name = "gevent" if socket_is_patched() else "thread"
    if name == "thread":
        return _made[0] if _made else _thread_backend()
    if name == "gevent":
        from ._gevent import shared_backend as gevent_backend

        return gevent_backend()
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


# The process's one thread backend, once made: it is never replaced (a
# forked child resets it in place), and an import per client is dear.
_made: list[Backend] = []


def _thread_backend() -> Backend:
    from ._thread import shared_backend

    _made.append(shared_backend())
    return _made[0]


def default_clock() -> IReactorTime[Any]:
    """The thread backend's real clock (what a factory with no clock uses)."""
    from ._thread import get_runtime

    return get_runtime().clock
