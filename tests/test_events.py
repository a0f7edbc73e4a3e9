"""The thread backend's one-shot event (what callers wait on)."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rcf_sync._backends._thread import OneShotEvent


def test_wait_times_out_until_set_then_returns_at_once():
    """If the event is not set, then wait(timeout) returns False; once set, wait() returns True at once, any number of times."""
    event = OneShotEvent()
    assert not event.is_set()
    assert event.wait(0) is False
    assert event.wait(0.01) is False
    event.set()
    event.set()  # a second set() is harmless
    assert event.is_set()
    assert all(event.wait(0) for _ in range(3))
    assert event.wait() is True


def test_one_set_wakes_every_waiter():
    """If 8 threads wait on one event, then a single set() wakes all of them."""
    event = OneShotEvent()
    woken = []
    ready = threading.Barrier(9)

    def waiter():
        ready.wait(5)
        woken.append(event.wait(10))

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    ready.wait(5)
    event.set()
    for t in threads:
        t.join(10)
    assert woken == [True] * 8
    assert not any(t.is_alive() for t in threads)


def test_concurrent_sets_and_waits_never_raise():
    """If 4 threads set() and 4 wait() on each of 200 events at once, then nothing raises and every waiter sees the event set."""
    errors, seen = [], []
    for _ in range(200):
        event = OneShotEvent()
        start = threading.Barrier(8)

        def setter(event=event, start=start):
            try:
                start.wait(5)
                event.set()
            except Exception as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)

        def waiter(event=event, start=start):
            try:
                start.wait(5)
                seen.append(event.wait(10))
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=f) for f in (setter, waiter) * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert errors == []
    assert seen == [True] * 800


def test_a_wake_on_the_loop_waits_for_the_end_of_its_slice(no_leaks):
    """If loop work wakes a waiter through the runtime, then the event is set once that slice of work is done, not in the middle of it, and the waiter sees it."""
    from rcf_sync._backends._thread import get_runtime

    rt = get_runtime()
    event, seen_inside, done = OneShotEvent(), [], threading.Event()

    def on_loop():
        rt.wake_soon(event)
        seen_inside.append(event.is_set())
        done.set()

    rt.acquire()
    try:
        rt.post(on_loop)
        assert event.wait(10)
        assert done.wait(10)
        assert seen_inside == [False]
        other = OneShotEvent()
        rt.wake_soon(other)  # not on the loop: set at once
        assert other.is_set()
    finally:
        rt.release()


def pass_seen(every):
    """Run one pass of 100 jobs on the thread runtime's loop with the wake
    interval at ``every`` seconds: the first gathers a wake (wake_soon), the
    next 98 record whether it is set yet. Returns those 98 records."""
    from rcf_sync._backends._thread import get_runtime

    rt = get_runtime()
    event, seen, hold, held, done = OneShotEvent(), [], threading.Event(), threading.Event(), threading.Event()

    def block():  # the loop waits here while the 100 jobs queue up
        held.set()
        hold.wait(10)

    rt.acquire()
    saved = rt._wake_every
    try:
        rt._wake_every = every
        rt.post(block)
        assert held.wait(10)
        rt.post(rt.wake_soon, event)
        for _ in range(98):
            rt.post(lambda: seen.append(event.is_set()))
        rt.post(done.set)
        hold.set()
        assert done.wait(10)
        assert event.wait(10)
    finally:
        rt._wake_every = saved
        rt.release()
    return seen


@pytest.mark.parametrize("every, set_inside", [(0.0, True), (3600.0, False)])
def test_wakes_gathered_in_a_long_pass_wait_for_its_end_or_the_switch_interval(
        no_leaks, every, set_inside):
    """If loop work wakes a waiter early in a pass of 100 jobs, then the event is set before the pass ends only once the wake has waited the interpreter's switch interval (here: 0 s, or an hour)."""
    seen = pass_seen(every)
    assert len(seen) == 98
    assert any(seen) is set_inside
    assert seen[0] is False  # never in the middle of a slice


def test_the_switch_interval_counts_from_when_a_wake_is_gathered():
    """If a fresh runtime's loop gathers a wake early in a pass of 100 quick jobs and the interval is 50 ms, then the event is not set before the pass ends: the interval counts from the gathering, not from the last wakes the loop set (never, here)."""
    tests = Path(__file__).resolve().parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_events import pass_seen; "
            "seen = pass_seen(0.05); print(sum(seen), len(seen))")
    proc = subprocess.run([sys.executable, "-c", code, str(tests)], capture_output=True, text=True,
                          timeout=60, cwd=str(tests.parent))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "98"]
