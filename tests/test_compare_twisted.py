"""Our ``ReconnectingClientFactory`` against Twisted's, side by side.

Each test runs the same events through both factories, each on its own clock
(ours on a ``FakeClock`` and on Twisted's ``task.Clock``; Twisted's on
``task.Clock``) with the module-level ``random`` seeded the same way before
each run, and compares everything either side lets us observe.
"""

import contextlib
import copy
import logging
import pickle
import random

import pytest

pytest.importorskip("twisted")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error as twisted_error
from twisted.internet import task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ReconnectingClientFactory as TwistedFactory
from twisted.python import log as twisted_log
from zope.interface.verify import verifyObject

import rcf_sync
from rcf_sync import ReconnectingClientFactory as OurFactory
from rcf_sync.testing import FakeClock

CLOCKS = {"FakeClock": FakeClock, "task.Clock": task.Clock}


class StatefulConnector:
    """An ``IConnector`` stand-in that records calls with the clock time and,
    like Twisted's connectors, raises ``not_connecting`` from
    ``stopConnecting()`` unless an attempt is in progress."""

    def __init__(self, clock, not_connecting=twisted_error.NotConnectingError):
        self.clock = clock
        self.not_connecting = not_connecting
        self.state = "disconnected"
        self.calls = []

    def connect(self):
        self.calls.append(("connect", self.clock.seconds()))
        self.state = "connecting"

    def stopConnecting(self):
        self.calls.append(("stopConnecting", self.state))
        if self.state != "connecting":
            raise self.not_connecting()
        self.state = "disconnected"

    def __str__(self):
        return "<connector>"


class RaisingConnector(StatefulConnector):
    def stopConnecting(self):
        self.calls.append(("stopConnecting", self.state))
        raise OSError("unplugged")


@contextlib.contextmanager
def captured_logs():
    """Collect the text of what either factory logs: ours through
    ``logging.getLogger("rcf_sync")``, Twisted's through ``twisted.python.log``."""
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    def observer(event):
        text = twisted_log.textFromEventDict(event)
        if text is not None:
            lines.append(text)

    logger = logging.getLogger("rcf_sync")
    old_level = logger.level
    handler = Handler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    twisted_log.addObserver(observer)
    try:
        yield lines
    finally:
        twisted_log.removeObserver(observer)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def observe(f, clock, connector, outcome=None):
    """Everything observable about a factory, its clock and its connector."""
    call = f._callID
    return {
        "delay": f.delay,
        "retries": f.retries,
        "continueTrying": f.continueTrying,
        "connector": None if f.connector is None else f.connector is connector,
        "_callID": None if call is None else (call.getTime(), bool(call.active())),
        "pending": sorted(c.getTime() for c in clock.getDelayedCalls()),
        "now": clock.seconds(),
        "connector calls": list(connector.calls),
        "outcome": outcome,
    }


def apply(f, clock, connector, event):
    kind = event[0]
    if kind == "failed":
        connector.state = "disconnected"
        f.clientConnectionFailed(connector, None)
    elif kind == "lost":
        connector.state = "disconnected"
        f.clientConnectionLost(connector, None)
    elif kind == "advance":
        clock.advance(event[1])
    elif kind == "stop":
        f.stopTrying()
    elif kind == "reset":
        f.resetDelay()
    elif kind == "retry":
        f.retry()
    elif kind == "retry with":
        f.retry(connector)
    else:  # pragma: no cover
        raise AssertionError(event)


def run(factory_cls, clock_cls, params, events, seed, not_connecting=twisted_error.NotConnectingError):
    """Configure a factory Twisted's way (attributes), seed the module random,
    play the events and return the observations after each and the log."""
    clock = clock_cls()
    f = factory_cls()
    f.clock = clock
    for name, value in params.items():
        setattr(f, name, value)
    connector = StatefulConnector(clock, not_connecting)
    steps = [observe(f, clock, connector)]
    random.seed(seed)
    with captured_logs() as lines:
        for event in events:
            try:
                apply(f, clock, connector, event)
            except Exception as exc:
                outcome = (type(exc).__name__, str(exc))
            else:
                outcome = None
            steps.append(observe(f, clock, connector, outcome))
    return steps, lines


def assert_same_runs(params, events, seed, our_not_connecting=twisted_error.NotConnectingError):
    expected = run(TwistedFactory, task.Clock, params, events, seed)
    for clock_name, clock_cls in CLOCKS.items():
        ours = run(OurFactory, clock_cls, params, events, seed, our_not_connecting)
        assert ours[0] == expected[0], clock_name
        assert ours[1] == expected[1], clock_name
    return expected


# -- generated event sequences ---------------------------------------------------

events_strategy = st.lists(
    st.one_of(
        st.just(("failed",)),
        st.just(("lost",)),
        st.tuples(st.just("advance"), st.floats(0, 30, allow_nan=False, allow_infinity=False)),
        st.just(("stop",)),
        st.just(("reset",)),
        st.just(("retry",)),
        st.just(("retry with",)),
    ),
    max_size=30,
)

params_strategy = st.fixed_dictionaries(
    {
        "initialDelay": st.floats(0, 5, allow_nan=False),
        "factor": st.floats(1, 4, allow_nan=False),
        "maxDelay": st.floats(0, 20, allow_nan=False),
        "jitter": st.sampled_from([0, 0.119626565582, 0.5]),
        "maxRetries": st.none() | st.integers(0, 6),
    },
    optional={
        "noisy": st.booleans(),
        "delay": st.floats(0, 5, allow_nan=False),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=params_strategy,
    events=events_strategy,
    seed=st.integers(0, 2**32 - 1),
    ours_raise_ours=st.booleans(),
)
def test_generated_event_sequences_match_twisted(params, events, seed, ours_raise_ours):
    """If both factories see the same events, then after every step their state, clocks, connector calls and logs are identical."""
    assert_same_runs(
        params,
        events,
        seed,
        rcf_sync.NotConnectingError if ours_raise_ours else twisted_error.NotConnectingError,
    )


# -- hand-picked sequences for the quirks ------------------------------------------

DEFAULTS = {"initialDelay": 1.0, "factor": 2.7182818284590451, "maxDelay": 3600,
            "jitter": 0.119626565582, "maxRetries": None}


def test_default_class_attributes_match():
    """If neither class is configured, then every Twisted attribute has the same value and type in ours."""
    names = ["maxDelay", "initialDelay", "factor", "jitter", "delay", "retries", "maxRetries",
             "continueTrying", "connector", "clock", "_callID", "noisy", "numPorts", "protocol"]
    for name in names:
        ours, theirs = getattr(OurFactory, name), getattr(TwistedFactory, name)
        assert (type(ours), ours) == (type(theirs), theirs), name


def test_twisted_methods_exist_in_ours():
    """If Twisted's factory has a public method, then ours has it too (buildProtocol and forProtocol aside)."""
    missing = {
        name for name in dir(TwistedFactory)
        if not name.startswith("_") and callable(getattr(TwistedFactory, name))
        and not hasattr(OurFactory, name)
    }
    assert missing <= {"buildProtocol", "forProtocol"}


def test_fake_clock_has_twisteds_interface_shape():
    """If FakeClock and its calls are checked against IReactorTime and IDelayedCall, then every method is there with a matching signature."""
    clock = FakeClock()
    assert verifyObject(IReactorTime, clock, tentative=True)
    assert verifyObject(IDelayedCall, clock.callLater(1, lambda: None), tentative=True)


def test_fresh_instances_carry_no_state():
    """If both factories are new, then neither has instance attributes."""
    assert OurFactory().__dict__ == TwistedFactory().__dict__ == {}


def test_failures_then_giving_up_match():
    """If failures run past maxRetries with real jitter, then both give up at the same retry with the same log."""
    params = dict(DEFAULTS, maxRetries=3)
    steps, lines = assert_same_runs(params, [("failed",), ("advance", 2.0)] * 5, seed=7)
    assert steps[-1]["retries"] == 5
    assert lines[-1] == "Abandoning <connector> after 5 retries."


def test_reset_delay_does_not_cancel_the_pending_retry_in_either():
    """If resetDelay() then stopTrying() follow a failure, then the forgotten retry still connects in both."""
    steps, _ = assert_same_runs(dict(DEFAULTS, jitter=0), [("failed",), ("reset",), ("stop",), ("advance", 5)], seed=1)
    assert [name for name, _ in steps[-1]["connector calls"]] == ["stopConnecting", "connect"]


def test_older_attempt_clears_newer_call_id_in_both():
    """If two retries are pending and the first fires, then _callID is forgotten in both and stopTrying cannot cancel the second."""
    events = [("failed",), ("failed",), ("advance", 1.0), ("stop",), ("advance", 100)]
    steps, _ = assert_same_runs(dict(DEFAULTS, jitter=0), events, seed=1)
    assert steps[3]["_callID"] is None
    assert [name for name, _ in steps[-1]["connector calls"]] == ["connect", "stopConnecting", "connect"]


def test_reset_delay_undoes_stop_trying_in_both():
    """If resetDelay() follows stopTrying(), then both retry again on the next failure."""
    steps, _ = assert_same_runs(DEFAULTS, [("stop",), ("reset",), ("failed",)], seed=2)
    assert steps[-1]["retries"] == 1
    assert len(steps[-1]["pending"]) == 1


def test_retry_after_stop_logs_the_same_refusal():
    """If retry() is called after stopTrying(), then both log "Abandoning None on explicit request"."""
    _, lines = assert_same_runs(DEFAULTS, [("failed",), ("stop",), ("retry",), ("retry with",)], seed=3)
    assert lines[-2:] == ["Abandoning None on explicit request",
                          "Abandoning <connector> on explicit request"]


def test_retry_without_connector_fails_the_same_way():
    """If retry() has no connector, then both raise ValueError("no connector to retry") before counting."""
    steps, _ = assert_same_runs(DEFAULTS, [("retry",)], seed=4)
    assert steps[-1]["outcome"] == ("ValueError", "no connector to retry")
    assert steps[-1]["retries"] == 0


def test_jitter_overshoots_max_delay_in_both():
    """If the delay is capped and jitter draws above it, then both schedule past maxDelay (Twisted issue 4734)."""
    events = [("failed",), ("advance", 100)] * 8
    for seed in range(200):
        steps, _ = assert_same_runs(dict(DEFAULTS, maxDelay=2.0), events, seed)
        waits = [s["_callID"][0] - s["now"] for s in steps[1::2]]
        if max(waits) > 2.0:
            break
    else:
        pytest.fail("no seed made jitter overshoot maxDelay")


def test_jitter_goes_negative_in_both():
    """If the jitter is large, then both can schedule a retry in the past (Twisted issue 8714)."""
    for seed in range(200):
        steps, _ = assert_same_runs(dict(DEFAULTS, jitter=0.9), [("failed",), ("advance", 0)], seed)
        if steps[1]["delay"] < 0:
            assert steps[1]["pending"][0] < 0
            assert steps[2]["connector calls"] == [("connect", 0.0)]
            break
    else:
        pytest.fail("no seed made the jitter negative")


def test_subclass_initial_delay_keeps_class_delay_in_both():
    """If a subclass only sets initialDelay, then both first wait the class delay 1.0 and resetDelay switches to initialDelay."""

    def first_waits(base):
        class Sub(base):
            initialDelay = 5.0
            jitter = 0

        f = Sub()
        f.clock = task.Clock()
        c = StatefulConnector(f.clock)
        f.clientConnectionFailed(c, None)
        f.resetDelay()
        f.clientConnectionFailed(c, None)
        return sorted(d.getTime() for d in f.clock.getDelayedCalls())

    assert first_waits(OurFactory) == first_waits(TwistedFactory) == [1.0, 5.0]


@pytest.mark.parametrize("clock_name", sorted(CLOCKS))
def test_our_factory_swallows_twisteds_not_connecting_error(clock_name):
    """If a Twisted connector raises twisted's NotConnectingError on stopConnecting, then our stopTrying swallows it."""
    f = OurFactory()
    f.clock = CLOCKS[clock_name]()
    c = StatefulConnector(f.clock, twisted_error.NotConnectingError)
    f.clientConnectionFailed(c, None)
    f.stopTrying()
    assert c.calls == [("stopConnecting", "disconnected")]
    assert f.continueTrying == 0


def test_other_stop_connecting_errors_propagate_from_both():
    """If stopConnecting() raises another error, then both let it out after stopping."""
    results = []
    for base in (OurFactory, TwistedFactory):
        f = base()
        f.clock = task.Clock()
        c = RaisingConnector(f.clock)
        f.clientConnectionFailed(c, None)
        with pytest.raises(OSError):
            f.stopTrying()
        results.append((f.continueTrying, f._callID, f.clock.getDelayedCalls()))
    assert results[0] == results[1] == (0, None, [])


def test_subclass_retry_override_is_honoured_by_both():
    """If a subclass overrides retry(), then both dispatch clientConnectionFailed/Lost to it."""
    seen = {}
    for base in (OurFactory, TwistedFactory):
        calls = seen[base] = []

        class Sub(base):
            def retry(self, connector=None):
                calls.append(connector)  # noqa: B023 (used within this iteration only)

        f = Sub()
        f.clock = task.Clock()
        c = StatefulConnector(f.clock)
        f.clientConnectionFailed(c, None)
        f.clientConnectionLost(c, None)
        assert f.connector is c
    assert seen[OurFactory] == seen[TwistedFactory] == [None, None]


def test_started_connecting_is_a_no_op_in_both():
    """If startedConnecting() is not overridden, then neither factory touches the connector."""
    for base in (OurFactory, TwistedFactory):
        f = base()
        c = StatefulConnector(task.Clock())
        assert f.startedConnecting(c) is None
        assert c.calls == [] and f.__dict__ == {}


def test_log_prefix_and_do_start_do_stop_match():
    """If doStart/doStop are called in the same pattern, then both count users and call the hooks alike."""
    results = []
    for base in (OurFactory, TwistedFactory):
        events = []

        class Sub(base):
            noisy = False

            def startFactory(self):
                events.append(("start", self.numPorts))  # noqa: B023 (this iteration only)

            def stopFactory(self):
                events.append(("stop", self.numPorts))  # noqa: B023 (this iteration only)

        f = Sub()
        for op in ("doStart", "doStart", "doStop", "doStop", "doStop", "doStart"):
            getattr(f, op)()
        results.append((events, f.numPorts, f.logPrefix()))
    assert results[0] == results[1]
    assert results[0][2] == "Sub"


def _used_pair(params, seed=5):
    pair = []
    for base in (OurFactory, TwistedFactory):
        f = base()
        f.clock = task.Clock()
        for name, value in params.items():
            setattr(f, name, value)
        c = StatefulConnector(f.clock)
        random.seed(seed)
        for _ in range(3):
            f.clientConnectionFailed(c, None)
        f.doStart()
        pair.append(f)
    return pair


def test_getstate_matches():
    """If both factories went through the same failures, then __getstate__ returns the same dictionary."""
    ours, theirs = _used_pair(dict(maxRetries=4, initialDelay=0.5))
    assert ours.__getstate__() == theirs.__getstate__() == {
        "maxRetries": 4, "initialDelay": 0.5, "numPorts": 1}


@pytest.mark.parametrize("duplicate", [pickle.loads, copy.copy], ids=["pickle", "copy"])
def test_round_trip_behaves_like_new_in_both(duplicate):
    """If used factories are pickled (or copied), then both come back fresh and then schedule identically."""
    pair = _used_pair(dict(maxRetries=4, factor=2.0))
    if duplicate is pickle.loads:
        pair = [pickle.loads(pickle.dumps(f)) for f in pair]
    else:
        pair = [copy.copy(f) for f in pair]
    runs = []
    for f in pair:
        state = (f.delay, f.retries, f.continueTrying, f.connector, f._callID, f.clock, f.numPorts)
        f.clock = task.Clock()
        c = StatefulConnector(f.clock)
        random.seed(9)
        for _ in range(6):
            f.clientConnectionFailed(c, None)
        runs.append((state, sorted(d.getTime() for d in f.clock.getDelayedCalls()), f.retries, f.delay))
    assert runs[0] == runs[1]
    assert runs[0][0] == (1.0, 0, 1, None, None, None, 1)


def test_noisy_do_start_do_stop_log_the_same_lines():
    """If a noisy factory is started twice and stopped three times, then both log the same start and stop lines."""
    results = []
    for base in (OurFactory, TwistedFactory):
        class Sub(base):
            def __repr__(self):
                return "<factory>"

        f = Sub()
        with captured_logs() as lines:
            for op in ("doStart", "doStart", "doStop", "doStop", "doStop"):
                getattr(f, op)()
        results.append((lines, f.numPorts))
    assert results[0] == results[1] == (["Starting factory <factory>", "Stopping factory <factory>"], 0)


def test_for_protocol_and_build_protocol_match():
    """If forProtocol() and buildProtocol() are used alike, then both return the same kind of factory and protocol."""
    from twisted.internet.protocol import Protocol as TwistedProtocol

    results = []
    for base in (OurFactory, TwistedFactory):
        class Sub(base):
            pass

        f = Sub.forProtocol(TwistedProtocol)
        p = f.buildProtocol(None)
        results.append((type(f) is Sub, f.protocol, type(p), p.factory is f, sorted(f.__dict__)))
    assert results[0] == results[1] == (True, TwistedProtocol, TwistedProtocol, True, ["protocol"])


def test_our_protocol_matches_twisteds_protocol():
    """If a connection is made on our Protocol and on Twisted's, then both set the same attributes and call connectionMade once."""
    from twisted.internet.protocol import Protocol as TwistedProtocol

    results = []
    for base in (rcf_sync.Protocol, TwistedProtocol):
        class P(base):
            def connectionMade(self):
                self.seen = (self.connected, self.transport)

        p = P()
        before = (p.connected, p.transport, p.factory)
        transport = object()
        p.makeConnection(transport)
        p.dataReceived(b"x")
        p.connectionLost()
        results.append((before, p.seen == (1, transport), p.connected, p.transport is transport,
                        p.logPrefix()))
    assert results[0] == results[1] == ((0, None, None), True, 1, True, "P")
