"""What a reconnection policy does over time, computed by running the factory.

Both functions here drive real :class:`ReconnectingClientFactory` instances
on a :class:`~rcf_sync.testing.FakeClock` with recording connectors, so the
numbers they report are the factory's own, not a re-derivation of its
arithmetic. They do no I/O and read no real clock; randomness comes from
``random.Random`` instances seeded from the ``seed`` argument, so a result is
reproducible. The command line (``rcf-sync schedule``) and the benchmarks
use them; tests may too.

Theory of operation: time jumps from one scheduled call to the next
(:func:`_advance_to`) instead of ticking, so simulating a thousand clients
costs about one factory call per connection attempt.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Mapping
from typing import Any

from ._errors import NotConnectingError
from ._factory import ReconnectingClientFactory
from ._policy import JITTER_MODES
from ._timeouts import is_integer, is_real
from .testing._clock import FakeClock

__all__ = ["POLICY_ATTRIBUTES", "policy_of", "sample_schedule", "simulate_herd"]

# The factory attributes that make up a policy, in display order.
POLICY_ATTRIBUTES = (
    "initialDelay", "factor", "maxDelay", "jitter", "maxRetries", "jitterMode", "maxElapsed",
)

# A herd simulation stops with ValueError past this many connection attempts
# (a tiny delay against a long outage would otherwise run for hours).
MAX_HERD_ATTEMPTS = 1_000_000

_REFUSED = ConnectionRefusedError("simulated: server down")


def policy_of(factory: ReconnectingClientFactory) -> dict[str, Any]:
    """The policy attributes of ``factory`` as a plain dict (JSON-ready)."""
    return {name: getattr(factory, name) for name in POLICY_ATTRIBUTES}


def _advance_to(clock: FakeClock, when: float) -> None:
    """Advance ``clock`` so that its time is at least ``when``, running what
    falls due. Subtracting and adding back floats can land one ulp short of
    ``when``, which would leave the call due at ``when`` unrun."""
    now = clock.seconds()
    if when <= now:
        clock.advance(0)
        return
    amount = when - now
    while now + amount < when:
        amount = math.nextafter(amount, math.inf)
    clock.advance(amount)


def _percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of a sorted, non-empty list, by
    linear interpolation between closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    if frac == 0:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def _check_count(name: str, value: object) -> int:
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    seconds = float(value)
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return seconds


def _factory_kwargs(policy: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(policy or {})
    for reserved in ("clock", "rng", "noisy"):
        if reserved in kwargs:
            raise ValueError(f"policy must not set {reserved!r}; the simulation provides it")
    return kwargs


class _RecordingConnector:
    """An ``IConnector`` that only counts ``connect()`` calls."""

    def __init__(self) -> None:
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1

    def stopConnecting(self) -> None:
        raise NotConnectingError("no attempt in progress", destination="simulated")

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> str:
        return "simulated"


def _stop_reason(factory: ReconnectingClientFactory) -> str:
    if factory.maxRetries is not None and factory.retries > factory.maxRetries:
        return "maxRetries"
    return "maxElapsed"


def sample_schedule(
    policy: Mapping[str, Any] | None = None, *, attempts: int = 10, samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Run the factory ``samples`` times and summarize its delays.

    ``policy`` is a dict of factory keyword arguments (``initialDelay``,
    ``factor``, ...; ``ValueError`` naming the attribute when one is bad).
    Sample ``k`` uses ``random.Random(seed + k)`` and a fresh ``FakeClock``;
    the factory is told ``attempts`` times in a row that the connection
    failed, and each delay is read off the call it schedules
    (``getTime() - seconds()``) before the clock is advanced to run it.

    Returns a dict with ``policy`` (the factory's attributes), ``samples``,
    ``seed``, ``attempts`` (as requested), ``schedule`` — one dict per retry
    with ``attempt`` (1-based), ``median``, ``p5``, ``p95`` (of that retry's
    delay), ``cumulative_median`` (median time from the first failure to that
    attempt) and ``samples`` (how many samples got that far) — and
    ``stopped``: ``None`` when every sample made every attempt, otherwise a
    dict with ``reason`` (``"maxRetries"`` or ``"maxElapsed"``),
    ``samples`` (how many gave up early) and ``first``/``last`` (the fewest
    and most retries any of those made).

    A delay is reported as the factory produced it: Twisted's jitter can make
    one negative (real clocks then wait zero, and so does the cumulative time
    here).
    """
    attempts = _check_count("attempts", attempts)
    samples = _check_count("samples", samples)
    if not is_integer(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    kwargs = _factory_kwargs(policy)

    delays: list[list[float]] = [[] for _ in range(attempts)]
    cumulative: list[list[float]] = [[] for _ in range(attempts)]
    stopped_at: list[int] = []
    reasons: set[str] = set()
    described: dict[str, Any] | None = None
    for k in range(samples):
        clock = FakeClock()
        factory = ReconnectingClientFactory(
            clock=clock, rng=random.Random(seed + k), noisy=False, **kwargs
        )
        if described is None:
            described = policy_of(factory)
        connector = _RecordingConnector()
        for i in range(attempts):
            factory.clientConnectionFailed(connector, _REFUSED)
            pending = clock.getDelayedCalls()
            if not pending:
                stopped_at.append(i)
                reasons.add(_stop_reason(factory))
                break
            (call,) = pending
            delays[i].append(call.getTime() - clock.seconds())
            _advance_to(clock, call.getTime())
            if connector.connects != i + 1:  # pragma: no cover - a factory bug
                raise RuntimeError("the scheduled retry did not call connector.connect()")
            cumulative[i].append(clock.seconds())

    schedule: list[dict[str, Any]] = []
    for i in range(attempts):
        if not delays[i]:
            break
        ordered = sorted(delays[i])
        schedule.append({
            "attempt": i + 1,
            "median": _percentile(ordered, 50),
            "p5": _percentile(ordered, 5),
            "p95": _percentile(ordered, 95),
            "cumulative_median": _percentile(sorted(cumulative[i]), 50),
            "samples": len(ordered),
        })
    stopped: dict[str, Any] | None = None
    if stopped_at:
        stopped = {
            "reason": " and ".join(sorted(reasons)),
            "samples": len(stopped_at),
            "first": min(stopped_at),
            "last": max(stopped_at),
        }
    return {
        "policy": described,
        "samples": samples,
        "seed": seed,
        "attempts": attempts,
        "schedule": schedule,
        "stopped": stopped,
    }


def _peak(times: list[float], window: float) -> int:
    """The most entries of the sorted list ``times`` in any half-open
    interval ``[t, t + window)``."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        if end - start + 1 > best:
            best = end - start + 1
    return best


class _Herd:
    """The shared state of one herd simulation; see :func:`simulate_herd`."""

    def __init__(
        self, n: int, down: float, kwargs: dict[str, Any], seed: int | str, clock: FakeClock
    ) -> None:
        self.down = down
        self.clock = clock
        self.times: list[float] = []
        self.back: list[float | None] = [None] * n
        self.gave_up = 0
        self.due: list[float] = []  # heap of the times at which retries are scheduled
        self.max_attempts = MAX_HERD_ATTEMPTS  # run() sets it
        self.clients = [
            _HerdClient(self, i, ReconnectingClientFactory(
                clock=clock, rng=random.Random(f"rcf_sync-herd:{seed}:{i}"),
                noisy=False, **kwargs,
            ))
            for i in range(n)
        ]

    def scheduled(self, factory: ReconnectingClientFactory) -> None:
        call = factory._callID
        if call is None:
            self.gave_up += 1
        else:
            heapq.heappush(self.due, call.getTime())

    def run(self, max_attempts: int) -> None:
        for client in self.clients:
            client.factory.clientConnectionLost(client, _REFUSED)
            self.scheduled(client.factory)
        self.max_attempts = max_attempts
        while self.due:
            _advance_to(self.clock, heapq.heappop(self.due))

    def attempt(self, now: float) -> None:
        self.times.append(now)
        # Checked here rather than between clock advances: delays that shrink
        # towards zero (Twisted's jitter with factor 1) keep one advance
        # running forever.
        if len(self.times) > self.max_attempts:
            raise ValueError(
                f"the simulation passed {self.max_attempts} connection attempts; "
                "use fewer clients, a shorter outage or longer delays"
            )


class _HerdClient:
    """One client's connector: an attempt fails while the server is down
    and succeeds once it is up."""

    __slots__ = ("herd", "index", "factory")

    def __init__(self, herd: _Herd, index: int, factory: ReconnectingClientFactory) -> None:
        self.herd = herd
        self.index = index
        self.factory = factory

    def connect(self) -> None:
        herd = self.herd
        now = herd.clock.seconds()
        herd.attempt(now)
        if now < herd.down:
            self.factory.clientConnectionFailed(self, _REFUSED)
            herd.scheduled(self.factory)
        else:
            self.factory.resetDelay()
            herd.back[self.index] = now

    def stopConnecting(self) -> None:
        raise NotConnectingError("no attempt in progress", destination=self.getDestination())

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> str:
        return f"simulated client {self.index}"


def simulate_herd(
    n: int,
    *,
    down: float,
    policy: Mapping[str, Any] | None = None,
    jitter_mode: str = "twisted",
    seed: int | str = 0,
    window: float = 0.1,
    keep_times: bool = False,
    max_attempts: int = MAX_HERD_ATTEMPTS,
) -> dict[str, Any]:
    """Simulate ``n`` clients that lose their server at the same instant.

    Every client has its own factory built from ``policy`` (a dict of factory
    keyword arguments; its ``jitterMode``, if any, is replaced by
    ``jitter_mode``) and its own ``random.Random`` seeded from ``seed`` and
    its index; all share one ``FakeClock``. At time 0 each is told its
    connection was lost; the server is down until ``down`` seconds, so every
    attempt before then fails (``clientConnectionFailed``) and every attempt
    from then on succeeds (``resetDelay``). Deterministic for given
    arguments.

    Returns a dict with:

    ``attempts``
        connection attempts in total; ``attempts_after_return`` those made
        once the server was back.
    ``peak_per_window``
        the most attempts the server saw in any ``window`` seconds (a sliding
        window), over the whole run; ``peak_after_return`` the same counting
        only attempts made once it was back.
    ``all_back_after``
        seconds from the server's return until the last client reconnected,
        or ``None`` if some client gave up (``maxRetries``/``maxElapsed``).
    ``gave_up``
        how many clients gave up.
    ``attempts_times``
        (only with ``keep_times=True``) the time of every attempt, in order.

    plus ``clients``, ``down``, ``window``, ``jitter_mode`` and ``seed`` as
    given. ``ValueError`` for a bad argument or policy value, or when the
    run passes ``max_attempts`` connection attempts.
    """
    n = _check_count("n", n)
    down = _check_seconds("down", down)
    window = _check_seconds("window", window, positive=True)
    if jitter_mode not in JITTER_MODES:
        raise ValueError(
            f"jitter_mode must be one of {', '.join(map(repr, JITTER_MODES))}, got {jitter_mode!r}"
        )
    if not isinstance(seed, (int, str)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or a string, got {seed!r}")
    kwargs = _factory_kwargs(policy)
    kwargs["jitterMode"] = jitter_mode

    herd = _Herd(n, down, kwargs, seed, FakeClock())
    herd.run(max_attempts)

    times = herd.times
    after = times[bisect.bisect_left(times, down):]
    back = [t for t in herd.back if t is not None]  # all of them, when nobody gave up
    result: dict[str, Any] = {
        "clients": n,
        "down": down,
        "window": window,
        "jitter_mode": jitter_mode,
        "seed": seed,
        "attempts": len(times),
        "attempts_after_return": len(after),
        "peak_per_window": _peak(times, window),
        "peak_after_return": _peak(after, window),
        "all_back_after": None if herd.gave_up else max(back) - down,
        "gave_up": herd.gave_up,
    }
    if keep_times:
        result["attempts_times"] = list(times)
    return result
