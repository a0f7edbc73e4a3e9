"""Tests of ``rcf_sync.testing.FakeClock`` and the delayed calls it hands out
(Twisted's ``IReactorTime`` / ``IDelayedCall`` shape)."""

import math
import sys
import threading

import pytest

from rcf_sync import AlreadyCalled, AlreadyCancelled
from rcf_sync.testing import FakeClock


def recorder():
    """A list and a function that appends (label, time of the call) to it."""
    log = []

    def record(clock, label):
        log.append((label, clock.seconds()))

    return log, record


# -- time and scheduling -------------------------------------------------------


def test_time_starts_at_zero():
    """If a clock is created without a start, then seconds() is 0."""
    assert FakeClock().seconds() == 0.0


def test_time_starts_at_given_start():
    """If a clock is created with start=t, then seconds() is t."""
    assert FakeClock(start=12.5).seconds() == 12.5


def test_call_later_returns_an_active_call_at_now_plus_delay():
    """If callLater(d, f) is called at time t, then the returned call is active and due at t + d."""
    clock = FakeClock()
    clock.advance(3)
    call = clock.callLater(2.5, lambda: None)
    assert call.getTime() == 5.5
    assert call.active()


def test_call_later_passes_arguments():
    """If callLater is given positional and keyword arguments, then the call receives them."""
    clock = FakeClock()
    got = []
    clock.callLater(1, lambda *a, **k: got.append((a, k)), 1, 2, x=3)
    clock.advance(1)
    assert got == [((1, 2), {"x": 3})]


def test_advance_runs_only_due_calls():
    """If the clock advances, then exactly the calls due by the new time run."""
    clock = FakeClock()
    log, record = recorder()
    clock.callLater(1, record, clock, "a")
    clock.callLater(2, record, clock, "b")
    clock.advance(1.5)
    assert [label for label, _ in log] == ["a"]
    clock.advance(0.5)
    assert [label for label, _ in log] == ["a", "b"]


def test_calls_run_in_time_order():
    """If calls are scheduled out of order, then they run earliest first."""
    clock = FakeClock()
    log, record = recorder()
    for label, delay in [("c", 3), ("a", 1), ("d", 4), ("b", 2)]:
        clock.callLater(delay, record, clock, label)
    clock.advance(10)
    assert [label for label, _ in log] == ["a", "b", "c", "d"]


def test_ties_run_in_scheduling_order():
    """If several calls are due at the same time, then they run in the order they were scheduled."""
    clock = FakeClock()
    log, record = recorder()
    for label in "qwertyuiop":
        clock.callLater(1, record, clock, label)
    clock.advance(1)
    assert "".join(label for label, _ in log) == "qwertyuiop"


def test_calls_see_the_time_after_the_advance():
    """If a call falls due in the middle of an advance, then it sees the clock at the end of that advance, as in Twisted."""
    clock = FakeClock()
    log, record = recorder()
    clock.callLater(1, record, clock, "a")
    clock.advance(5)
    assert log == [("a", 5.0)]


def test_due_call_scheduled_during_advance_runs_in_same_advance():
    """If a running call schedules another call that is already due, then it runs in the same advance."""
    clock = FakeClock()
    log, record = recorder()

    def first():
        record(clock, "first")
        clock.callLater(0, record, clock, "now")
        clock.callLater(-1, record, clock, "past")
        clock.callLater(1, record, clock, "later")

    clock.callLater(1, first)
    clock.advance(1)
    assert [label for label, _ in log] == ["first", "past", "now"]
    clock.advance(1)
    assert [label for label, _ in log] == ["first", "past", "now", "later"]


def test_delay_scheduled_during_advance_counts_from_the_advanced_time():
    """If a running call schedules with a positive delay, then that delay counts from the end of the advance, as in Twisted."""
    clock = FakeClock()
    log, record = recorder()
    clock.callLater(1, lambda: clock.callLater(1, record, clock, "inner"))
    clock.advance(3)
    assert log == []
    assert [c.getTime() for c in clock.getDelayedCalls()] == [4.0]
    clock.advance(1)
    assert log == [("inner", 4.0)]


def test_advance_zero_runs_calls_due_now():
    """If advance(0) is called, then calls due at the present time run."""
    clock = FakeClock()
    log, record = recorder()
    clock.callLater(0, record, clock, "a")
    assert log == []
    clock.advance(0)
    assert log == [("a", 0.0)]


def test_negative_call_later_runs_at_next_advance():
    """If callLater is given a negative delay, then the call is due in the past and runs at the next advance, as with task.Clock."""
    clock = FakeClock()
    clock.advance(10)
    log, record = recorder()
    call = clock.callLater(-2, record, clock, "late")
    assert call.getTime() == 8.0
    assert call.active()
    clock.advance(0)
    assert log == [("late", 10.0)]


def test_call_is_inactive_while_it_runs():
    """If a call is running, then it reports itself inactive and cannot cancel itself."""
    clock = FakeClock()
    seen = []

    def body():
        seen.append(call.active())
        with pytest.raises(AlreadyCalled):
            call.cancel()

    call = clock.callLater(1, body)
    clock.advance(1)
    assert seen == [False]


def test_failing_call_propagates_and_leaves_the_rest_pending():
    """If a call raises, then advance raises it and later calls stay scheduled for the next advance."""
    clock = FakeClock()
    log, record = recorder()

    def boom():
        raise KeyError("boom")

    clock.callLater(1, boom)
    clock.callLater(2, record, clock, "after")
    with pytest.raises(KeyError):
        clock.advance(3)
    assert log == []
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert log == [("after", 3.0)]


# -- cancel / reset / delay ----------------------------------------------------


def test_cancelled_call_never_runs():
    """If a call is cancelled, then it is inactive, leaves getDelayedCalls and never runs."""
    clock = FakeClock()
    log, record = recorder()
    call = clock.callLater(1, record, clock, "a")
    call.cancel()
    assert not call.active()
    assert clock.getDelayedCalls() == []
    clock.advance(5)
    assert log == []


@pytest.mark.parametrize("operation", ["cancel", "reset", "delay"])
def test_operations_on_cancelled_call_raise_already_cancelled(operation):
    """If a call was cancelled, then cancel/reset/delay raise AlreadyCancelled (a ValueError, as Twisted's)."""
    clock = FakeClock()
    call = clock.callLater(1, lambda: None)
    call.cancel()
    args = () if operation == "cancel" else (1,)
    with pytest.raises(AlreadyCancelled) as info:
        getattr(call, operation)(*args)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("operation", ["cancel", "reset", "delay"])
def test_operations_on_called_call_raise_already_called(operation):
    """If a call already ran, then cancel/reset/delay raise AlreadyCalled (a ValueError, as Twisted's)."""
    clock = FakeClock()
    call = clock.callLater(1, lambda: None)
    clock.advance(1)
    args = () if operation == "cancel" else (1,)
    with pytest.raises(AlreadyCalled) as info:
        getattr(call, operation)(*args)
    assert isinstance(info.value, ValueError)


def test_reset_is_relative_to_now():
    """If reset(s) is called at time t, then the call becomes due at t + s, earlier or later."""
    clock = FakeClock()
    call = clock.callLater(5, lambda: None)
    clock.advance(2)
    call.reset(1)
    assert call.getTime() == 3.0
    call.reset(10)
    assert call.getTime() == 12.0


def test_reset_moves_when_the_call_runs():
    """If a call is reset later, then it does not run at its old time but at the new one."""
    clock = FakeClock()
    log, record = recorder()
    call = clock.callLater(1, record, clock, "a")
    call.reset(3)
    clock.advance(2)
    assert log == []
    clock.advance(1)
    assert log == [("a", 3.0)]


def test_reset_into_the_past_runs_at_next_advance():
    """If reset is given a negative delay, then the call runs at the next advance."""
    clock = FakeClock()
    log, record = recorder()
    call = clock.callLater(5, record, clock, "a")
    call.reset(-1)
    assert call.getTime() == -1.0
    clock.advance(0)
    assert log == [("a", 0.0)]


def test_delay_is_relative_to_scheduled_time():
    """If delay(s) is called, then the call moves s seconds from the time it was due, whatever the clock says."""
    clock = FakeClock()
    call = clock.callLater(5, lambda: None)
    clock.advance(2)
    call.delay(3)
    assert call.getTime() == 8.0
    call.delay(-4)
    assert call.getTime() == 4.0


def test_delay_moves_when_the_call_runs():
    """If a call is delayed, then it runs at the later time."""
    clock = FakeClock()
    log, record = recorder()
    call = clock.callLater(1, record, clock, "a")
    call.delay(1)
    clock.advance(1)
    assert log == []
    clock.advance(1)
    assert log == [("a", 2.0)]


def test_rescheduled_call_runs_once():
    """If a call is reset and delayed several times, then it runs exactly once."""
    clock = FakeClock()
    log, record = recorder()
    call = clock.callLater(1, record, clock, "a")
    call.reset(2)
    call.delay(1)
    call.reset(0.5)
    clock.advance(10)
    assert log == [("a", 10.0)]
    assert clock.getDelayedCalls() == []


def test_rescheduled_call_goes_after_calls_already_due_at_that_time():
    """If a call is moved onto a time other calls already hold, then it runs after them, its move counting as its scheduling."""
    clock = FakeClock()
    log, record = recorder()
    moved = clock.callLater(1, record, clock, "moved")
    clock.callLater(2, record, clock, "b")
    moved.reset(2)
    clock.advance(2)
    assert [label for label, _ in log] == ["b", "moved"]


# -- getDelayedCalls / calls / pump --------------------------------------------


def test_get_delayed_calls_lists_pending_calls_earliest_first():
    """If calls are pending, then getDelayedCalls() lists exactly them, earliest first."""
    clock = FakeClock()
    c3 = clock.callLater(3, lambda: None)
    c1 = clock.callLater(1, lambda: None)
    c2 = clock.callLater(2, lambda: None)
    gone = clock.callLater(2.5, lambda: None)
    gone.cancel()
    assert clock.getDelayedCalls() == [c1, c2, c3]
    clock.advance(1)
    assert clock.getDelayedCalls() == [c2, c3]
    c3.reset(0.5)
    assert clock.getDelayedCalls() == [c3, c2]
    assert clock.calls == [c3, c2]


def test_pump_advances_by_each_amount_in_turn():
    """If pump() is given a list of amounts, then the clock advances by each, running calls at each step."""
    clock = FakeClock()
    log, record = recorder()
    for t in (1, 2, 4):
        clock.callLater(t, record, clock, t)
    clock.pump([1.5, 0.5, 3])
    assert log == [(1, 1.5), (2, 2.0), (4, 5.0)]
    assert clock.seconds() == 5.0


@pytest.mark.parametrize("amount", [-1, -1e-9, math.nan])
def test_bad_advance_raises_value_error_and_keeps_time(amount):
    """If advance is given a negative or NaN amount, then ValueError is raised and time does not move."""
    clock = FakeClock(start=4.0)
    log, record = recorder()
    clock.callLater(0, record, clock, "due")
    with pytest.raises(ValueError):
        clock.advance(amount)
    assert clock.seconds() == 4.0
    assert log == []


def test_call_later_refuses_a_non_callable():
    """If callLater is given something that cannot be called, then TypeError is raised at once."""
    with pytest.raises(TypeError):
        FakeClock().callLater(1, "not callable")


@pytest.mark.parametrize("delay", ["1", None, True])
def test_call_later_refuses_a_non_number_delay(delay):
    """If callLater is given a delay that is not a number, then TypeError is raised."""
    with pytest.raises(TypeError):
        FakeClock().callLater(delay, lambda: None)


def test_call_later_refuses_nan_delay():
    """If callLater is given a NaN delay, then ValueError is raised."""
    with pytest.raises(ValueError):
        FakeClock().callLater(math.nan, lambda: None)


# -- threads -------------------------------------------------------------------


@pytest.fixture
def fast_thread_switching():
    """Make the interpreter switch threads often, so that the threads interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_calls_scheduled_from_another_thread_while_advancing_run_once_and_on_time(fast_thread_switching):
    """If a thread schedules calls while the main thread advances, then every call runs exactly once and never early."""
    clock = FakeClock()
    n = 3000
    ran = []
    calls = []
    done = threading.Event()

    def schedule():
        for i in range(n):
            calls.append(clock.callLater(0.001 * (i % 5), lambda i=i: ran.append((i, clock.seconds()))))
        done.set()

    worker = threading.Thread(target=schedule)
    worker.start()
    steps = 0
    while not done.is_set() and steps < 1_000_000:
        clock.advance(0.0005)
        steps += 1
    worker.join(timeout=30)
    assert not worker.is_alive()
    clock.advance(1)
    assert sorted(i for i, _ in ran) == list(range(n))
    assert all(calls[i].getTime() <= when for i, when in ran)
    assert clock.getDelayedCalls() == []


def test_cancels_from_another_thread_while_advancing_never_also_run(fast_thread_switching):
    """If a thread cancels calls while the main thread runs them, then each call either runs or is cancelled, never both."""
    clock = FakeClock()
    n = 3000
    ran = set()
    calls = [clock.callLater(i * 0.001, ran.add, i) for i in range(n)]
    cancelled = set()
    done = threading.Event()

    def cancel_all():
        for i in reversed(range(n)):
            try:
                calls[i].cancel()
            except AlreadyCalled:
                continue
            cancelled.add(i)
        done.set()

    worker = threading.Thread(target=cancel_all)
    worker.start()
    steps = 0
    while not done.is_set() and steps < 1_000_000:
        clock.advance(0.001)
        steps += 1
    worker.join(timeout=30)
    assert not worker.is_alive()
    clock.advance(n)
    assert ran.isdisjoint(cancelled)
    assert ran | cancelled == set(range(n))
    assert clock.getDelayedCalls() == []


def test_a_cancelled_call_invoked_directly_says_so():
    """If a cancelled call is invoked anyway, then it raises RuntimeError naming the call, not a TypeError."""
    clock = FakeClock()
    call = clock.callLater(1, lambda: None)
    call.cancel()
    with pytest.raises(RuntimeError, match="nothing left to run"):
        call()
    assert clock.getDelayedCalls() == []
