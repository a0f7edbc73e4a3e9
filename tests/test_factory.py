"""Unit tests of ``rcf_sync.ReconnectingClientFactory``.

Each test drives the factory with a ``FakeClock`` and a connector that only
records what is asked of it, and checks one behaviour of the policy: the
Twisted-faithful default path first, then the opt-in additions (keyword
arguments, ``jitterMode``, ``maxElapsed``, ``rng``, ``gaveUp()``).
"""

import copy
import logging
import math
import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rcf_sync
from rcf_sync import NotConnectingError, ReconnectingClientFactory
from rcf_sync import _factory as factory_module
from rcf_sync.testing import FakeClock

LOGGER = "rcf_sync"


class RecordingConnector:
    """An ``IConnector`` stand-in that records ``connect()`` and
    ``stopConnecting()`` and can be told to raise from the latter."""

    def __init__(self, name="connector", stop_error=None):
        self.name = name
        self.calls = []
        self.stop_error = stop_error

    def connect(self):
        self.calls.append("connect")

    def stopConnecting(self):
        self.calls.append("stopConnecting")
        if self.stop_error is not None:
            raise self.stop_error

    def __str__(self):
        return f"<{self.name}>"


def make_factory(cls=ReconnectingClientFactory, **kwargs):
    """A factory on a fresh FakeClock (the factory never sees a real clock)."""
    kwargs.setdefault("clock", FakeClock())
    return cls(**kwargs)


def pending_times(clock):
    return [call.getTime() for call in clock.getDelayedCalls()]


def messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


class InitialDelayFive(ReconnectingClientFactory):
    """A Twisted-style subclass that only overrides ``initialDelay``."""

    initialDelay = 5.0
    jitter = 0


class Configured(ReconnectingClientFactory):
    """A subclass with class-level configuration, for pickling tests."""

    maxRetries = 3
    factor = 2.0
    jitter = 0


# -- defaults ------------------------------------------------------------------


def test_class_attribute_defaults_are_twisteds():
    """If nothing is configured, then the class attributes hold Twisted's defaults."""
    F = ReconnectingClientFactory
    assert F.maxDelay == 3600
    assert F.initialDelay == 1.0
    assert F.factor == 2.7182818284590451 == math.e
    assert F.jitter == 0.119626565582
    assert F.delay == 1.0
    assert F.retries == 0
    assert F.maxRetries is None
    assert F.continueTrying == 1
    assert F.connector is None
    assert F.clock is None
    assert F._callID is None
    assert F.noisy is True
    assert F.jitterMode == "twisted"
    assert F.maxElapsed is None
    assert F.rng is None


def test_new_instance_has_no_instance_state():
    """If a factory is created without arguments, then everything it reads comes from the class."""
    assert ReconnectingClientFactory().__dict__ == {}


# -- retry(): the Twisted path -------------------------------------------------


def test_first_retry_waits_initial_delay_without_jitter():
    """If jitter is 0, then the first retry is scheduled exactly initialDelay from now."""
    f = make_factory(jitter=0)
    f.clock.advance(10)
    f.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(f.clock) == [11.0]


def test_delay_grows_by_factor_after_each_retry():
    """If retries follow one another, then each waits factor times the previous one."""
    f = make_factory(jitter=0, factor=3.0, initialDelay=0.5)
    c = RecordingConnector()
    waits = []
    for _ in range(4):
        f.clientConnectionFailed(c, None)
        waits.append(f._callID.getTime() - f.clock.seconds())
        f.clock.advance(1000)
    assert waits == [0.5, 1.5, 4.5, 13.5]
    assert f.delay == 40.5


def test_delay_is_capped_at_max_delay():
    """If the grown delay passes maxDelay, then delay becomes maxDelay."""
    f = make_factory(jitter=0, factor=10.0, maxDelay=25)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    assert f.delay == 10.0
    f.clientConnectionFailed(c, None)
    assert f.delay == 25
    f.clientConnectionFailed(c, None)
    assert pending_times(f.clock) == [1.0, 10.0, 25.0]


def test_retry_counts_retries():
    """If retry() schedules an attempt, then retries goes up by one."""
    f = make_factory()
    c = RecordingConnector()
    for expected in (1, 2, 3):
        f.clientConnectionFailed(c, None)
        assert f.retries == expected


def test_scheduled_retry_calls_connect_once_when_due():
    """If the clock reaches the scheduled time, then connector.connect() runs once."""
    f = make_factory(jitter=0, initialDelay=2.0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clock.advance(1.999)
    assert c.calls == []
    f.clock.advance(0.001)
    assert c.calls == ["connect"]
    f.clock.advance(100)
    assert c.calls == ["connect"]


def test_retry_keeps_the_delayed_call_in_callID():
    """If retry() schedules an attempt, then _callID is the clock's active delayed call."""
    f = make_factory()
    f.clientConnectionFailed(RecordingConnector(), None)
    assert f._callID is not None
    assert f.clock.getDelayedCalls() == [f._callID]
    assert f._callID.active()


def test_firing_retry_clears_callID():
    """If the scheduled attempt runs, then _callID is None."""
    f = make_factory(jitter=0)
    f.clientConnectionFailed(RecordingConnector(), None)
    f.clock.advance(1)
    assert f._callID is None


def test_retry_without_any_connector_raises_value_error():
    """If retry() has no argument and no stored connector, then it raises ValueError before counting."""
    f = make_factory()
    with pytest.raises(ValueError, match="^no connector to retry$"):
        f.retry()
    assert f.retries == 0
    assert f.clock.getDelayedCalls() == []


def test_retry_with_explicit_connector_does_not_store_it():
    """If retry() is given a connector, then it connects that one without storing it."""
    f = make_factory(jitter=0)
    c = RecordingConnector()
    f.retry(c)
    assert f.connector is None
    f.clock.advance(1)
    assert c.calls == ["connect"]


def test_retry_argument_wins_over_stored_connector():
    """If retry() is given a connector while another is stored, then the argument is connected."""
    f = make_factory(jitter=0)
    stored, given_ = RecordingConnector("stored"), RecordingConnector("given")
    f.connector = stored
    f.retry(given_)
    f.clock.advance(1)
    assert (stored.calls, given_.calls) == ([], ["connect"])
    assert f.connector is stored


def test_retry_after_stop_trying_does_nothing():
    """If continueTrying is false, then retry() neither counts nor schedules."""
    f = make_factory()
    f.continueTrying = 0
    f.retry(RecordingConnector())
    assert f.retries == 0
    assert f.delay == 1.0
    assert f.clock.getDelayedCalls() == []


def test_retry_after_stop_trying_logs_the_argument(caplog):
    """If retry() is refused, then the log names the connector argument, None when omitted."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    f = make_factory()
    f.connector = RecordingConnector("stored")
    f.continueTrying = 0
    f.retry()
    f.retry(RecordingConnector("arg"))
    assert messages(caplog) == [
        "Abandoning None on explicit request",
        "Abandoning <arg> on explicit request",
    ]


def test_max_retries_abandons_the_retry_past_the_limit():
    """If retries would exceed maxRetries, then nothing more is scheduled and delay stays put."""
    f = make_factory(maxRetries=2, jitter=0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clientConnectionFailed(c, None)
    delay = f.delay
    assert len(f.clock.getDelayedCalls()) == 2
    f.clientConnectionFailed(c, None)
    assert len(f.clock.getDelayedCalls()) == 2
    assert f.retries == 3
    assert f.delay == delay
    assert f.continueTrying == 1


def test_abandoned_retries_keep_counting():
    """If failures keep coming after maxRetries ran out, then retries keeps growing."""
    f = make_factory(maxRetries=1)
    c = RecordingConnector()
    for _ in range(5):
        f.clientConnectionFailed(c, None)
    assert f.retries == 5
    assert len(f.clock.getDelayedCalls()) == 1


def test_max_retries_zero_never_schedules():
    """If maxRetries is 0, then the first retry is already abandoned."""
    f = make_factory(maxRetries=0)
    f.clientConnectionFailed(RecordingConnector(), None)
    assert f.retries == 1
    assert f.clock.getDelayedCalls() == []


def test_abandon_message_names_connector_and_count(caplog):
    """If maxRetries runs out, then "Abandoning <c> after N retries." is logged."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    f = make_factory(maxRetries=1, jitter=0)
    c = RecordingConnector("db")
    f.clientConnectionFailed(c, None)
    f.clientConnectionFailed(c, None)
    assert messages(caplog)[-1] == "Abandoning <db> after 2 retries."


def test_retry_message_truncates_seconds(caplog):
    """If a retry is scheduled, then "<c> will retry in N seconds" is logged with N truncated."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    f = make_factory(jitter=0, initialDelay=2.9)
    f.clientConnectionFailed(RecordingConnector("db"), None)
    assert messages(caplog) == ["<db> will retry in 2 seconds"]
    (record,) = caplog.records
    assert (record.name, record.levelno) == ("rcf_sync", logging.INFO)


def test_noisy_false_logs_nothing(caplog):
    """If noisy is false, then retries, abandons and refusals log nothing."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    f = make_factory(noisy=False, maxRetries=1)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clientConnectionFailed(c, None)
    f.stopTrying()
    f.retry(c)
    assert messages(caplog) == []


def test_jitter_draws_from_module_normalvariate(monkeypatch):
    """If jitter is set, then delay becomes random.normalvariate(delay, delay * jitter)."""
    draws = []

    def fake_normalvariate(mu, sigma):
        draws.append((mu, sigma))
        return 1.25

    monkeypatch.setattr(random, "normalvariate", fake_normalvariate)
    f = make_factory(initialDelay=2.0, jitter=0.5, factor=2.0)
    f.clientConnectionFailed(RecordingConnector(), None)
    assert draws == [(2.0, 1.0)]
    assert pending_times(f.clock) == [1.25]
    assert f.delay == 2.5


def test_zero_jitter_draws_no_randomness():
    """If jitter is 0, then the module-level random state is untouched."""
    random.seed(1234)
    before = random.getstate()
    f = make_factory(jitter=0)
    for _ in range(3):
        f.clientConnectionFailed(RecordingConnector(), None)
    assert random.getstate() == before


def test_seeded_jitter_compounds_like_twisted():
    """If the module random is seeded, then each delay is the previous jittered delay times factor, jittered again."""
    f = make_factory(jitter=0.2, factor=2.0, maxDelay=1000)
    reference = random.Random(99)
    expected, d = [], 1.0
    for _ in range(6):
        d = reference.normalvariate(d, d * 0.2)
        expected.append(d)
        d = min(d * 2.0, 1000)
    random.seed(99)
    for _ in range(6):
        f.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(f.clock) == expected
    assert f.delay == d


def test_jitter_can_push_a_delay_past_max_delay(monkeypatch):
    """If the delay already sits at maxDelay, then jitter can schedule beyond it (Twisted issue 4734)."""
    monkeypatch.setattr(random, "normalvariate", lambda mu, sigma: mu * 1.1)
    f = make_factory(maxDelay=10, jitter=0.1)
    f.delay = 10
    f.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(f.clock) == [pytest.approx(11.0)]
    assert f.delay == 10


def test_jitter_can_make_a_delay_negative(monkeypatch):
    """If jitter draws a negative delay, then the factory schedules it as is (Twisted issue 8714)."""
    monkeypatch.setattr(random, "normalvariate", lambda mu, sigma: -0.5)
    f = make_factory(factor=2.0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    assert pending_times(f.clock) == [-0.5]
    assert f.delay == -1.0
    f.clock.advance(0)
    assert c.calls == ["connect"]


def test_rng_replaces_module_random():
    """If rng is given, then jitter comes from it and the module random is untouched."""
    random.seed(5)
    before = random.getstate()
    f = make_factory(rng=random.Random(42), jitter=0.3)
    f.clientConnectionFailed(RecordingConnector(), None)
    assert random.getstate() == before
    assert pending_times(f.clock) == [random.Random(42).normalvariate(1.0, 0.3)]


def test_second_failure_while_pending_leaves_both_attempts_scheduled():
    """If a failure arrives while an attempt is pending, then a second attempt is added without cancelling the first."""
    f = make_factory(jitter=0, factor=2.0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    first = f._callID
    f.clientConnectionFailed(c, None)
    assert first.active()
    assert f._callID is not first
    f.clock.advance(2)
    assert c.calls == ["connect", "connect"]


def test_older_attempt_firing_forgets_the_newer_callID():
    """If an older attempt fires while a newer one is pending, then _callID is cleared and stopTrying cannot cancel the newer one."""
    f = make_factory(jitter=0, factor=2.0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clientConnectionFailed(c, None)
    f.clock.advance(1)
    assert f._callID is None
    f.stopTrying()
    f.clock.advance(1)
    assert c.calls == ["connect", "stopConnecting", "connect"]


def test_retry_looks_up_the_clock_after_jitter_and_logging(monkeypatch, caplog):
    """If no clock is set, then the default clock is fetched after jitter and the log line, as Twisted fetches its reactor."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    seen = []
    clock = FakeClock()

    def default_clock():
        seen.append((f.delay, messages(caplog)))
        return clock

    monkeypatch.setattr(factory_module, "_default_clock", default_clock)
    monkeypatch.setattr(random, "normalvariate", lambda mu, sigma: 0.75)
    f = ReconnectingClientFactory()
    f.clientConnectionFailed(RecordingConnector(), None)
    assert seen == [(0.75, ["<connector> will retry in 0 seconds"])]
    assert f.clock is clock
    assert pending_times(clock) == [0.75]


# -- clientConnectionFailed / clientConnectionLost ------------------------------


@pytest.mark.parametrize("event", ["clientConnectionFailed", "clientConnectionLost"])
def test_connection_event_stores_connector_and_retries(event):
    """If a connection fails or is lost while trying, then the connector is stored and a retry scheduled."""
    f = make_factory()
    c = RecordingConnector()
    getattr(f, event)(c, Exception("reason"))
    assert f.connector is c
    assert f.retries == 1
    assert len(f.clock.getDelayedCalls()) == 1


@pytest.mark.parametrize("event", ["clientConnectionFailed", "clientConnectionLost"])
def test_connection_event_replaces_stored_connector(event):
    """If a later event comes from another connector, then that connector replaces the stored one."""
    f = make_factory()
    a, b = RecordingConnector("a"), RecordingConnector("b")
    getattr(f, event)(a, None)
    getattr(f, event)(b, None)
    assert f.connector is b


@pytest.mark.parametrize("event", ["clientConnectionFailed", "clientConnectionLost"])
def test_connection_event_after_stop_trying_is_ignored_silently(event, caplog):
    """If continueTrying is false, then a connection event stores nothing, schedules nothing and logs nothing."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    f = make_factory()
    f.continueTrying = 0
    getattr(f, event)(RecordingConnector(), None)
    assert f.connector is None
    assert f.retries == 0
    assert f.clock.getDelayedCalls() == []
    assert messages(caplog) == []


# -- stopTrying ----------------------------------------------------------------


def test_stop_trying_cancels_the_pending_retry():
    """If stopTrying() is called with a retry pending, then that retry never connects."""
    f = make_factory()
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    call = f._callID
    f.stopTrying()
    assert not call.active()
    assert f._callID is None
    f.clock.advance(10_000)
    assert "connect" not in c.calls


def test_stop_trying_clears_continue_trying_and_stops_connector():
    """If stopTrying() is called, then continueTrying is 0 and the connector is told stopConnecting()."""
    f = make_factory()
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.stopTrying()
    assert f.continueTrying == 0
    assert c.calls == ["stopConnecting"]


def test_stop_trying_swallows_not_connecting_error():
    """If stopConnecting() raises rcf_sync.NotConnectingError, then stopTrying() still succeeds."""
    f = make_factory()
    c = RecordingConnector(stop_error=NotConnectingError("idle"))
    f.clientConnectionFailed(c, None)
    f.stopTrying()
    assert c.calls == ["stopConnecting"]
    assert f.continueTrying == 0


def test_stop_trying_propagates_other_errors_after_stopping():
    """If stopConnecting() raises something else, then it propagates but trying has already stopped."""
    f = make_factory()
    c = RecordingConnector(stop_error=OSError("boom"))
    f.clientConnectionFailed(c, None)
    call = f._callID
    with pytest.raises(OSError, match="boom"):
        f.stopTrying()
    assert f.continueTrying == 0
    assert not call.active()


def test_stop_trying_without_connector_is_fine():
    """If no connector was ever stored, then stopTrying() just clears continueTrying."""
    f = make_factory()
    f.stopTrying()
    assert f.continueTrying == 0


def test_stop_trying_twice_stops_the_connector_twice():
    """If stopTrying() is called twice, then the stored connector is told stopConnecting() twice."""
    f = make_factory()
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.stopTrying()
    f.stopTrying()
    assert c.calls == ["stopConnecting", "stopConnecting"]


# -- resetDelay ----------------------------------------------------------------


def test_reset_delay_restores_initial_state():
    """If resetDelay() is called after failures, then delay, retries and _callID are as new."""
    f = make_factory(initialDelay=0.5, factor=2.0, jitter=0)
    c = RecordingConnector()
    for _ in range(3):
        f.clientConnectionFailed(c, None)
    f.resetDelay()
    assert (f.delay, f.retries, f._callID, f.continueTrying) == (0.5, 0, None, 1)


def test_reset_delay_undoes_stop_trying():
    """If resetDelay() follows stopTrying(), then the factory retries again."""
    f = make_factory()
    c = RecordingConnector()
    f.stopTrying()
    f.resetDelay()
    assert f.continueTrying == 1
    f.clientConnectionFailed(c, None)
    assert len(f.clock.getDelayedCalls()) == 1


def test_reset_delay_does_not_cancel_the_pending_retry():
    """If resetDelay() is called with a retry pending, then that retry still connects, even after stopTrying()."""
    f = make_factory(jitter=0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    call = f._callID
    f.resetDelay()
    assert call.active()
    f.stopTrying()
    assert call.active()
    f.clock.advance(1)
    assert c.calls == ["stopConnecting", "connect"]


def test_reset_delay_uses_subclass_initial_delay():
    """If a subclass overrides initialDelay, then resetDelay() sets delay to it."""
    f = make_factory(InitialDelayFive)
    f.resetDelay()
    assert f.delay == 5.0


# -- the ``delay`` quirk -------------------------------------------------------


def test_subclass_initial_delay_does_not_change_first_delay():
    """If a subclass only sets initialDelay, then the first retry still waits the class delay of 1.0, as in Twisted."""
    f = make_factory(InitialDelayFive)
    assert f.delay == 1.0
    f.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(f.clock) == [1.0]


def test_initial_delay_keyword_also_sets_delay():
    """If initialDelay is passed as a keyword, then the first retry waits that long."""
    f = make_factory(initialDelay=5.0, jitter=0)
    assert f.delay == 5.0
    f.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(f.clock) == [5.0]


def test_explicit_delay_keyword_wins_over_initial_delay():
    """If both delay and initialDelay are passed, then delay starts at the given delay."""
    f = make_factory(initialDelay=5.0, delay=2.0, jitter=0)
    assert (f.delay, f.initialDelay) == (2.0, 5.0)


# -- keyword arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("maxDelay", 60),
        ("initialDelay", 0.25),
        ("factor", 1.5),
        ("jitter", 0.0),
        ("maxRetries", 7),
        ("maxRetries", None),
        ("noisy", False),
        ("jitterMode", "full"),
        ("maxElapsed", 30.0),
        ("delay", 3.0),
        ("protocol", object),
    ],
)
def test_keyword_sets_the_attribute(name, value):
    """If a known attribute is passed as a keyword, then the instance gets that value."""
    f = ReconnectingClientFactory(**{name: value})
    assert getattr(f, name) == value
    assert name in f.__dict__


def test_keywords_leave_the_class_alone():
    """If keywords configure an instance, then the class defaults are unchanged."""
    ReconnectingClientFactory(maxDelay=5, maxRetries=2, jitter=0.5)
    assert ReconnectingClientFactory.maxDelay == 3600
    assert ReconnectingClientFactory.maxRetries is None
    assert ReconnectingClientFactory.jitter == 0.119626565582


@pytest.mark.parametrize(
    "name, value",
    [
        ("initialDelay", -0.1),
        ("initialDelay", math.nan),
        ("initialDelay", math.inf),
        ("maxDelay", -1),
        ("maxDelay", math.nan),
        ("delay", -1.0),
        ("delay", math.nan),
        ("factor", 0.5),
        ("factor", math.nan),
        ("factor", math.inf),
        ("jitter", -0.01),
        ("jitter", 1.0),
        ("jitter", math.nan),
        ("maxRetries", -1),
        ("maxRetries", 2.5),
        ("maxElapsed", -1),
        ("maxElapsed", math.nan),
        ("jitterMode", "random"),
        ("initialDelay", "1"),
        ("factor", True),
    ],
)
def test_bad_keyword_value_raises_value_error_naming_it(name, value):
    """If a keyword value is out of range, NaN or not a number, then ValueError names the attribute."""
    with pytest.raises(ValueError, match=name):
        ReconnectingClientFactory(**{name: value})


@pytest.mark.parametrize(
    "name, value",
    [("initialDelay", 0), ("maxDelay", 0), ("factor", 1), ("jitter", 0), ("maxRetries", 0),
     ("maxElapsed", 0), ("maxDelay", math.inf)],
)
def test_boundary_keyword_values_are_accepted(name, value):
    """If a keyword value sits on the edge of its range, then it is accepted."""
    assert getattr(ReconnectingClientFactory(**{name: value}), name) == value


def test_unknown_keyword_raises_type_error():
    """If an unknown keyword is passed, then TypeError names it."""
    with pytest.raises(TypeError, match="maxDelays"):
        ReconnectingClientFactory(maxDelays=3)


def test_positional_arguments_are_refused():
    """If an argument is passed positionally, then TypeError is raised."""
    with pytest.raises(TypeError):
        ReconnectingClientFactory(5)


# -- subclasses ----------------------------------------------------------------


def test_subclass_retry_override_is_called_on_failure_and_loss():
    """If a subclass overrides retry(), then clientConnectionFailed/Lost call the override."""
    calls = []

    class Custom(ReconnectingClientFactory):
        def retry(self, connector=None):
            calls.append(connector)

    f = make_factory(Custom)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clientConnectionLost(c, None)
    assert calls == [None, None]
    assert f.connector is c
    assert f.clock.getDelayedCalls() == []


def test_subclass_client_connection_failed_override_is_honoured():
    """If a subclass overrides clientConnectionFailed, then its code decides whether the base retries."""

    class Picky(ReconnectingClientFactory):
        def clientConnectionFailed(self, connector, reason):
            if isinstance(reason, PermissionError):
                self.stopTrying()
            else:
                super().clientConnectionFailed(connector, reason)

    f = make_factory(Picky)
    c = RecordingConnector()
    f.clientConnectionFailed(c, OSError())
    assert f.retries == 1
    f.clientConnectionFailed(c, PermissionError())
    assert f.continueTrying == 0
    assert f.clock.getDelayedCalls() == []


def test_subclass_client_connection_lost_override_is_honoured():
    """If a subclass overrides clientConnectionLost, then the base policy only runs when it calls up."""
    seen = []

    class Counting(ReconnectingClientFactory):
        def clientConnectionLost(self, connector, reason):
            seen.append(reason)
            if len(seen) > 1:
                super().clientConnectionLost(connector, reason)

    f = make_factory(Counting)
    c = RecordingConnector()
    f.clientConnectionLost(c, "first")
    assert (f.retries, f.connector) == (0, None)
    f.clientConnectionLost(c, "second")
    assert (f.retries, f.connector) == (1, c)
    assert seen == ["first", "second"]


def test_base_started_connecting_does_nothing():
    """If startedConnecting() is not overridden, then it touches neither the connector nor the factory."""
    f = make_factory()
    c = RecordingConnector()
    before = dict(f.__dict__)
    assert f.startedConnecting(c) is None
    assert c.calls == []
    assert f.__dict__ == before


def test_subclass_started_connecting_override_is_honoured():
    """If a subclass overrides startedConnecting, then it can abandon the attempt through the connector."""

    class Abandoning(ReconnectingClientFactory):
        def startedConnecting(self, connector):
            connector.stopConnecting()

    c = RecordingConnector()
    make_factory(Abandoning).startedConnecting(c)
    assert c.calls == ["stopConnecting"]


# -- Factory surface -----------------------------------------------------------


def test_do_start_and_do_stop_count_users(caplog):
    """If doStart/doStop are paired, then startFactory/stopFactory run only for the first and last user."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    events = []

    class Hooked(ReconnectingClientFactory):
        def startFactory(self):
            events.append("start")

        def stopFactory(self):
            events.append("stop")

    f = Hooked()
    f.doStart()
    f.doStart()
    f.doStop()
    assert events == ["start"]
    f.doStop()
    f.doStop()
    assert events == ["start", "stop"]
    assert f.numPorts == 0
    assert messages(caplog) == [f"Starting factory {f!r}", f"Stopping factory {f!r}"]


def test_log_prefix_is_class_name():
    """If logPrefix() is called, then it returns the class name."""
    assert InitialDelayFive().logPrefix() == "InitialDelayFive"


def test_do_stop_without_users_does_nothing(caplog):
    """If doStop() is called with numPorts at 0, then no hook runs, nothing is logged and numPorts stays 0."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    events = []

    class Hooked(ReconnectingClientFactory):
        def stopFactory(self):
            events.append("stop")

    f = Hooked()
    f.doStop()
    assert (events, f.numPorts, messages(caplog)) == ([], 0, [])
    assert "numPorts" not in f.__dict__


def test_quiet_factory_starts_and_stops_without_logging(caplog):
    """If noisy is false, then doStart/doStop still run the hooks but log nothing."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    events = []

    class Hooked(ReconnectingClientFactory):
        noisy = False

        def startFactory(self):
            events.append("start")

        def stopFactory(self):
            events.append("stop")

    f = Hooked()
    f.doStart()
    f.doStop()
    assert (events, messages(caplog)) == (["start", "stop"], [])


class Recorder(rcf_sync.Protocol):
    """A protocol class that remembers how it was made."""

    def __init__(self):
        self.made = True


def test_build_protocol_makes_one_protocol_per_call_with_factory_set():
    """If buildProtocol() is called, then it returns a new instance of protocol whose factory is this factory."""
    f = ReconnectingClientFactory(protocol=Recorder)
    first = f.buildProtocol(rcf_sync.IPv4Address("TCP", "127.0.0.1", 1))
    second = f.buildProtocol(None)
    assert type(first) is Recorder and type(second) is Recorder
    assert first is not second
    assert first.factory is f and second.factory is f and first.made


def test_build_protocol_accepts_any_callable():
    """If protocol is a plain callable, then buildProtocol() calls it with no arguments and sets factory on the result."""
    made = []

    def make():
        made.append(1)
        return rcf_sync.Protocol()

    f = ReconnectingClientFactory(protocol=make)
    p = f.buildProtocol(None)
    assert made == [1] and p.factory is f


def test_build_protocol_without_protocol_says_what_to_do():
    """If protocol is None, then buildProtocol() raises TypeError naming protocol and buildProtocol."""
    with pytest.raises(TypeError, match=r"protocol is None.*override buildProtocol"):
        ReconnectingClientFactory().buildProtocol(None)


def test_build_protocol_leaves_the_back_off_alone():
    """If buildProtocol() is called mid back-off, then delay, retries and the pending retry are untouched (only resetDelay() resets)."""
    f = make_factory(protocol=Recorder, jitter=0)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    before = (f.delay, f.retries, f._callID, f.continueTrying)
    f.buildProtocol(None)
    assert (f.delay, f.retries, f._callID, f.continueTrying) == before


def test_for_protocol_sets_protocol_and_passes_arguments():
    """If forProtocol(P, **kwargs) is called on a subclass, then it returns an instance of that subclass built with kwargs and protocol P."""
    f = InitialDelayFive.forProtocol(Recorder, maxRetries=3)
    assert type(f) is InitialDelayFive
    assert (f.protocol, f.maxRetries, f.initialDelay) == (Recorder, 3, 5.0)
    assert f.__dict__["protocol"] is Recorder
    assert type(f.buildProtocol(None)) is Recorder


def test_for_protocol_validates_like_the_constructor():
    """If forProtocol() gets a bad keyword value, then it raises the constructor's ValueError."""
    with pytest.raises(ValueError, match="maxRetries"):
        ReconnectingClientFactory.forProtocol(Recorder, maxRetries=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        ReconnectingClientFactory.forProtocol(Recorder, bogus=1)


def test_uses_protocol_sees_protocol_or_an_overridden_build_protocol():
    """If a factory has a protocol or overrides buildProtocol, then uses_protocol() is true; a plain factory is not."""

    class Builds(ReconnectingClientFactory):
        def buildProtocol(self, addr):
            return None

    class Inherits(Builds):
        pass

    assert not factory_module.uses_protocol(ReconnectingClientFactory())
    assert not factory_module.uses_protocol(InitialDelayFive())
    assert factory_module.uses_protocol(ReconnectingClientFactory(protocol=Recorder))
    assert factory_module.uses_protocol(ReconnectingClientFactory.forProtocol(Recorder))
    assert factory_module.uses_protocol(Builds())
    assert factory_module.uses_protocol(Inherits())


# -- pickling ----------------------------------------------------------------------


def _used(f):
    c = RecordingConnector()
    for _ in range(3):
        f.clientConnectionFailed(c, None)
    return f


def test_getstate_drops_mutable_state():
    """If a used factory is pickled, then connector, retries, delay, continueTrying, _callID and clock are left out."""
    f = _used(make_factory(maxRetries=9))
    f.continueTrying = 0
    state = f.__getstate__()
    for key in ("connector", "retries", "delay", "continueTrying", "_callID", "clock"):
        assert key not in state
    assert state["maxRetries"] == 9


def test_pickle_round_trip_behaves_like_new():
    """If a used factory is unpickled, then it holds fresh state and schedules like a new factory with its configuration."""
    f = _used(make_factory(maxRetries=4, factor=2.0, maxDelay=30, jitter=0.1))
    g = pickle.loads(pickle.dumps(f))
    assert (g.retries, g.continueTrying, g.connector, g._callID, g.clock) == (0, 1, None, None, None)
    assert (g.maxRetries, g.factor, g.maxDelay, g.jitter) == (4, 2.0, 30, 0.1)
    assert g.delay == 1.0

    fresh = make_factory(maxRetries=4, factor=2.0, maxDelay=30, jitter=0.1)
    g.clock = FakeClock()
    runs = []
    for h in (fresh, g):
        random.seed(3)
        c = RecordingConnector()
        for _ in range(6):
            h.clientConnectionFailed(c, None)
        runs.append((pending_times(h.clock), h.delay, h.retries))
    assert runs[0] == runs[1]


def test_pickle_round_trip_keeps_keyword_initial_delay():
    """If a factory configured with initialDelay= is unpickled, then its first retry waits initialDelay like a new one."""
    f = _used(make_factory(initialDelay=0.1, jitter=0))
    g = pickle.loads(pickle.dumps(f))
    assert g.delay == 0.1
    g.clock = FakeClock()
    g.clientConnectionFailed(RecordingConnector(), None)
    assert pending_times(g.clock) == [0.1]


def test_pickle_round_trip_of_subclass_keeps_class_and_quirk():
    """If a subclass instance is unpickled, then it keeps its class, configuration and the class delay."""
    f = _used(make_factory(Configured))
    f2 = _used(make_factory(InitialDelayFive))
    g, g2 = pickle.loads(pickle.dumps(f)), pickle.loads(pickle.dumps(f2))
    assert type(g) is Configured and type(g2) is InitialDelayFive
    assert (g.retries, g.delay, g.maxRetries) == (0, 1.0, 3)
    assert g2.delay == 1.0
    g.clock = FakeClock()
    c = RecordingConnector()
    for _ in range(4):
        g.clientConnectionFailed(c, None)
    assert pending_times(g.clock) == [1.0, 2.0, 4.0]


def test_pickle_keeps_opt_in_configuration_and_drops_its_state():
    """If a factory using jitterMode, maxElapsed and rng is unpickled, then configuration stays and the failure window resets."""
    f = make_factory(jitterMode="decorrelated", maxElapsed=50.0, rng=random.Random(8))
    _used(f)
    g = pickle.loads(pickle.dumps(f))
    assert (g.jitterMode, g.maxElapsed) == ("decorrelated", 50.0)
    assert g.rng.getstate() == f.rng.getstate()
    assert g._failingSince is None and g._lastWait is None


def test_copy_resets_state_like_pickling():
    """If a used factory is copied with copy.copy, then the copy has fresh state too."""
    f = _used(make_factory(maxRetries=5))
    g = copy.copy(f)
    assert (g.retries, g.delay, g.connector, g.clock, g.maxRetries) == (0, 1.0, None, None, 5)
    assert f.retries == 3


# -- jitterMode --------------------------------------------------------------------


def _scheduled_waits(mode, n, seed, **kwargs):
    """Run n failures at time 0 and return the scheduled waits."""
    f = make_factory(jitterMode=mode, rng=random.Random(seed), **kwargs)
    c = RecordingConnector()
    for _ in range(n):
        f.clientConnectionFailed(c, None)
    return [call.getTime() for call in sorted(f.clock.getDelayedCalls(), key=lambda d: d.getTime())], f


def test_full_jitter_is_uniform_below_the_exponential_base():
    """If jitterMode is "full", then the n-th wait is base * U with base = min(maxDelay, initialDelay * factor**(n-1))."""
    init, factor, cap = 0.5, 2.0, 10.0
    f = make_factory(jitterMode="full", rng=random.Random(11), initialDelay=init, factor=factor, maxDelay=cap)
    reference = random.Random(11)
    c = RecordingConnector()
    for n in range(1, 9):
        f.clientConnectionFailed(c, None)
        base = min(cap, init * factor ** (n - 1))
        wait = f._callID.getTime()
        assert wait == pytest.approx(base * reference.random(), rel=1e-12)


def test_equal_jitter_keeps_at_least_half_the_base():
    """If jitterMode is "equal", then the n-th wait is base / 2 + (base / 2) * U."""
    init, factor, cap = 1.0, 3.0, 50.0
    f = make_factory(jitterMode="equal", rng=random.Random(12), initialDelay=init, factor=factor, maxDelay=cap)
    reference = random.Random(12)
    c = RecordingConnector()
    for n in range(1, 7):
        f.clientConnectionFailed(c, None)
        base = min(cap, init * factor ** (n - 1))
        assert f._callID.getTime() == pytest.approx(base / 2 + base / 2 * reference.random(), rel=1e-12)


def test_decorrelated_jitter_follows_the_aws_formula():
    """If jitterMode is "decorrelated", then each wait is min(maxDelay, uniform(initialDelay, previous * factor))."""
    init, factor, cap = 1.0, 3.0, 20.0
    f = make_factory(jitterMode="decorrelated", rng=random.Random(13), initialDelay=init, factor=factor, maxDelay=cap)
    reference = random.Random(13)
    previous = init
    c = RecordingConnector()
    for _ in range(8):
        f.clientConnectionFailed(c, None)
        expected = min(cap, init + (previous * factor - init) * reference.random())
        assert f._callID.getTime() == pytest.approx(expected, rel=1e-12)
        previous = expected


def test_added_modes_do_not_compound_jitter():
    """If a non-Twisted jitterMode is used, then delay grows exactly by factor whatever the draws."""
    for mode in ("full", "equal", "decorrelated"):
        _, f = _scheduled_waits(mode, 5, seed=1, initialDelay=1.0, factor=2.0, maxDelay=1000)
        assert f.delay == 32.0


def test_added_modes_use_module_random_without_rng():
    """If a non-Twisted jitterMode is used without rng, then it still draws from the module random."""
    random.seed(21)
    expected = random.Random(21).random() * 1.0
    f = make_factory(jitterMode="full")
    f.clientConnectionFailed(RecordingConnector(), None)
    assert f._callID.getTime() == pytest.approx(expected, rel=1e-12)


def test_reset_delay_restarts_decorrelated_from_initial_delay():
    """If resetDelay() is called, then the next decorrelated wait is drawn from [initialDelay, initialDelay * factor] again."""
    f = make_factory(jitterMode="decorrelated", rng=random.Random(3), initialDelay=1.0, factor=3.0, maxDelay=1e6)
    c = RecordingConnector()
    for _ in range(10):
        f.clientConnectionFailed(c, None)
    f.resetDelay()
    f.clock.advance(1e7)
    f.clientConnectionFailed(c, None)
    assert 1.0 <= f._callID.getTime() - f.clock.seconds() <= 3.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["full", "equal", "decorrelated"]),
    initial=st.floats(0, 100, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 500, allow_nan=False),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 25),
)
def test_added_modes_stay_within_zero_and_max_delay(mode, initial, factor, cap, seed, n):
    """If any non-Twisted jitterMode runs any number of retries, then every wait lies in [0, maxDelay]."""
    waits, _ = _scheduled_waits(mode, n, seed, initialDelay=initial, factor=factor, maxDelay=cap)
    assert len(waits) == n
    assert all(0 <= w <= cap for w in waits), waits


# -- maxElapsed and gaveUp ---------------------------------------------------------


def _fail_until_given_up(f, c, limit=50):
    """Fail every attempt as soon as it is made; return the failure times."""
    times = []
    for _ in range(limit):
        times.append(f.clock.seconds())
        f.clientConnectionFailed(c, None)
        if f._callID is None or not f._callID.active():
            break
        f.clock.advance(f._callID.getTime() - f.clock.seconds())
    return times


def test_max_elapsed_stops_when_next_attempt_would_start_past_budget(caplog):
    """If the next attempt would start after maxElapsed seconds of failure, then nothing is scheduled and gaveUp() is true."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    f = make_factory(jitter=0, factor=2.0, maxElapsed=10.0)
    c = RecordingConnector("db")
    f.clock.advance(100)
    times = _fail_until_given_up(f, c)
    # Attempts at 101, 103 and 107 fit the budget; the next would start at 115.
    assert times == [100, 101, 103, 107]
    assert c.calls == ["connect"] * 3
    assert f.gaveUp()
    assert f.clock.getDelayedCalls() == []
    assert messages(caplog)[-1] == "Abandoning <db> after 4 retries: maxElapsed (10.0s) reached."


def test_max_elapsed_allows_an_attempt_exactly_on_the_budget():
    """If the next attempt would start exactly maxElapsed after the first failure, then it is still scheduled."""
    f = make_factory(jitter=0, factor=2.0, maxElapsed=7.0)
    times = _fail_until_given_up(f, RecordingConnector())
    assert times == [0, 1, 3, 7]
    assert f.gaveUp()


def test_max_elapsed_failures_after_giving_up_stay_abandoned():
    """If failures keep coming after maxElapsed gave up, then nothing more is scheduled."""
    f = make_factory(jitter=0, maxElapsed=0.5)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    f.clientConnectionFailed(c, None)
    assert f.gaveUp()
    assert f.clock.getDelayedCalls() == []


def test_reset_delay_restarts_the_max_elapsed_budget():
    """If resetDelay() is called after giving up, then gaveUp() is false and the budget counts from the next failure."""
    f = make_factory(jitter=0, factor=2.0, maxElapsed=3.0)
    c = RecordingConnector()
    _fail_until_given_up(f, c)
    assert f.gaveUp()
    f.resetDelay()
    assert not f.gaveUp()
    f.clock.advance(1000)
    start = f.clock.seconds()
    times = _fail_until_given_up(f, c)
    assert times == [start, start + 1, start + 3]


def test_gave_up_is_false_while_trying():
    """If retries are still being scheduled, then gaveUp() is false."""
    f = make_factory(maxRetries=2, maxElapsed=1000.0)
    f.clientConnectionFailed(RecordingConnector(), None)
    assert not f.gaveUp()


def test_gave_up_after_max_retries_until_reset():
    """If maxRetries ran out, then gaveUp() is true until resetDelay()."""
    f = make_factory(maxRetries=1)
    c = RecordingConnector()
    f.clientConnectionFailed(c, None)
    assert not f.gaveUp()
    f.clientConnectionFailed(c, None)
    assert f.gaveUp()
    f.resetDelay()
    assert not f.gaveUp()


def test_stop_trying_is_not_giving_up():
    """If trying was stopped explicitly, then gaveUp() stays false."""
    f = make_factory(maxRetries=3, maxElapsed=10.0)
    f.clientConnectionFailed(RecordingConnector(), None)
    f.stopTrying()
    assert not f.gaveUp()


def test_public_names_match_the_package():
    """If the factory is imported from the package, then it is the same class as rcf_sync's."""
    assert rcf_sync.ReconnectingClientFactory is ReconnectingClientFactory
