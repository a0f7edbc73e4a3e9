"""The thread backend's one-shot event (what callers wait on)."""

import threading

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
