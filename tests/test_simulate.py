"""The simulations behind ``rcf-sync schedule``: retry samples and herds."""

import time

import pytest

from rcf_sync._simulate import sample_schedule, simulate_herd

MODES = ("twisted", "full", "equal", "decorrelated")
DOUBLING = {"initialDelay": 1.0, "factor": 2.0, "jitter": 0}


# -- herds -------------------------------------------------------------------


def test_herd_is_deterministic_for_a_seed():
    """If a herd is simulated twice with one seed, then every attempt happens at the same time."""
    first = simulate_herd(50, down=20, seed=4, jitter_mode="full", keep_times=True)
    second = simulate_herd(50, down=20, seed=4, jitter_mode="full", keep_times=True)
    assert first == second


def test_herd_seed_changes_the_outcome():
    """If the seed changes, then the attempt times change."""
    first = simulate_herd(50, down=20, seed=1, jitter_mode="full", keep_times=True)
    second = simulate_herd(50, down=20, seed=2, jitter_mode="full", keep_times=True)
    assert first["attempts_times"] != second["attempts_times"]


def test_zero_jitter_twisted_herd_returns_in_one_window():
    """If twisted mode has jitter 0, then all N clients hit the returning server in the same 100 ms."""
    result = simulate_herd(300, down=30, policy={"jitter": 0}, jitter_mode="twisted")
    assert result["peak_after_return"] == 300
    assert result["peak_per_window"] == 300


def test_full_jitter_spreads_the_herd():
    """If the jitter mode is full, then the peak after return is far below twisted's with jitter 0."""
    lockstep = simulate_herd(300, down=30, policy={"jitter": 0}, jitter_mode="twisted")
    spread = simulate_herd(300, down=30, policy={"jitter": 0}, jitter_mode="full")
    assert spread["peak_after_return"] * 5 < lockstep["peak_after_return"]


def test_attempts_counted_by_hand():
    """If 3 clients double from 1 s against a 10 s outage, then each tries at 1, 3, 7 and 15 s: 12 attempts."""
    result = simulate_herd(3, down=10, policy=DOUBLING, keep_times=True)
    assert result["attempts"] == 12
    assert result["attempts_after_return"] == 3
    assert result["attempts_times"] == [1.0] * 3 + [3.0] * 3 + [7.0] * 3 + [15.0] * 3


def test_all_back_after_counts_from_the_server_return():
    """If the last client reconnects at 15 s and the server returned at 10 s, then all_back_after is 5 s."""
    result = simulate_herd(3, down=10, policy=DOUBLING)
    assert result["all_back_after"] == 5.0


def test_attempt_at_the_moment_of_return_succeeds():
    """If an attempt lands exactly when the server comes back, then it succeeds."""
    result = simulate_herd(2, down=3, policy=DOUBLING, keep_times=True)
    assert result["attempts_times"] == [1.0, 1.0, 3.0, 3.0]
    assert result["all_back_after"] == 0.0


def test_clients_that_give_up_never_come_back():
    """If maxRetries runs out during the outage, then all_back_after is None and every client gave up."""
    result = simulate_herd(4, down=100, policy=dict(DOUBLING, maxRetries=2))
    assert result["gave_up"] == 4
    assert result["all_back_after"] is None
    assert result["attempts"] == 8


def test_window_sets_what_counts_as_simultaneous():
    """If attempts are 2 s apart, then a 1 s window sees one client at a time and a 3 s window sees two."""
    narrow = simulate_herd(1, down=10, policy=DOUBLING, window=1.0)
    wide = simulate_herd(1, down=10, policy=DOUBLING, window=3.0)
    assert (narrow["peak_per_window"], wide["peak_per_window"]) == (1, 2)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_brings_the_herd_back(mode):
    """If the server returns, then under every jitter mode every client reconnects after it."""
    result = simulate_herd(100, down=30, jitter_mode=mode)
    assert result["gave_up"] == 0
    assert result["attempts_after_return"] == 100
    assert result["all_back_after"] >= 0


def test_thousand_clients_in_all_modes_is_fast():
    """If 1000 clients are simulated under all four modes, then it takes well under 3 seconds."""
    started = time.perf_counter()
    for mode in MODES:
        simulate_herd(1000, down=30, jitter_mode=mode)
    assert time.perf_counter() - started < 3


def test_runaway_simulation_stops_with_an_error():
    """If a policy would need more attempts than max_attempts, then ValueError is raised instead of running on."""
    policy = {"initialDelay": 0.001, "factor": 1.0, "jitter": 0}
    with pytest.raises(ValueError, match="passed 1000 connection attempts"):
        simulate_herd(2, down=100, policy=policy, max_attempts=1000)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be"),
    ({"down": -1}, "down must be"),
    ({"window": 0}, "window must be"),
    ({"jitter_mode": "random"}, "jitter_mode"),
    ({"policy": {"factor": 0.5}}, "factor"),
    ({"policy": {"clock": None}}, "clock"),
])
def test_herd_rejects_bad_arguments(kwargs, match):
    """If an argument or policy value is bad, then ValueError names it."""
    arguments = dict(n=3, down=10)
    arguments.update(kwargs)
    n = arguments.pop("n")
    with pytest.raises(ValueError, match=match):
        simulate_herd(n, **arguments)


# -- schedule samples --------------------------------------------------------


def test_sample_schedule_stops_at_max_elapsed():
    """If doubling delays would start an attempt past maxElapsed=10, then the schedule stops after 3 retries."""
    result = sample_schedule(dict(DOUBLING, maxElapsed=10), attempts=10, samples=2)
    assert [row["median"] for row in result["schedule"]] == [1.0, 2.0, 4.0]
    assert result["stopped"] == {"reason": "maxElapsed", "samples": 2, "first": 3, "last": 3}


def test_sample_schedule_runs_to_the_end_without_a_limit():
    """If no limit applies, then every requested attempt is reported and stopped is None."""
    result = sample_schedule(DOUBLING, attempts=4, samples=1)
    assert [row["attempt"] for row in result["schedule"]] == [1, 2, 3, 4]
    assert result["stopped"] is None
