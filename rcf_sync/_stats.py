"""``Stats``: the snapshot of a client's or pool's counters."""

from __future__ import annotations

from typing import Any

__all__ = ["Stats"]


class Stats:
    """A snapshot of a client's counters (read-only).

    ``connects``: connections made; ``connect_failures``: attempts that
    failed; ``losses``: established connections lost; ``retries``: attempts
    started after the first; ``last_error``: the latest failure or loss
    reason, or ``None``; ``last_change``: clock time of the latest state
    change; ``waiting``: callers blocked now, waiting for a connection or a
    state."""

    __slots__ = ("connects", "connect_failures", "losses", "retries", "last_error",
                 "last_change", "waiting")

    connects: int
    connect_failures: int
    losses: int
    retries: int
    last_error: BaseException | None
    last_change: float | None
    waiting: int

    def __init__(self, connects: int = 0, connect_failures: int = 0, losses: int = 0,
                 retries: int = 0, last_error: BaseException | None = None,
                 last_change: float | None = None, waiting: int = 0) -> None:
        self.connects = connects
        self.connect_failures = connect_failures
        self.losses = losses
        self.retries = retries
        self.last_error = last_error
        self.last_change = last_change
        self.waiting = waiting

    def _copy(self, waiting: int) -> Stats:
        values: list[Any] = [getattr(self, k) for k in self.__slots__]
        copy = Stats(*values)
        copy.waiting = waiting
        return copy

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Stats({fields})"
