"""The command line: ``rcf-sync schedule``, argument checking, HOST:PORT."""

import json
import random
import statistics
import subprocess
import sys

import pytest

from rcf_sync._cli import main, parse_host_port
from rcf_sync._cli_output import format_seconds

E = 2.7182818284590451
TWISTED_JITTER = 0.119626565582


def run(capsys, *argv):
    """Run the command line in-process; return (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


# -- the numbers -------------------------------------------------------------


def test_zero_jitter_medians_are_the_capped_exponential_sequence(capsys):
    """If jitter is 0, then the k-th median delay is initialDelay * factor**k capped at maxDelay."""
    result = run_json(capsys, "schedule", "--jitter", "0", "--attempts", "12", "--samples", "3")
    expected = [min(1.0 * E ** k, 3600) for k in range(12)]
    medians = [row["median"] for row in result["schedule"]]
    assert medians == pytest.approx(expected, rel=1e-12)


def test_zero_jitter_has_no_spread(capsys):
    """If jitter is 0, then the 5th and 95th percentiles equal the median."""
    result = run_json(capsys, "schedule", "--jitter", "0", "--initial-delay", "0.5",
                      "--factor", "3", "--attempts", "6", "--samples", "4")
    for row in result["schedule"]:
        assert row["p5"] == pytest.approx(row["median"], rel=1e-12)
        assert row["p95"] == pytest.approx(row["median"], rel=1e-12)


def test_zero_jitter_cumulative_is_the_running_sum(capsys):
    """If jitter is 0, then the cumulative wait is the sum of the delays so far."""
    result = run_json(capsys, "schedule", "--jitter", "0", "--initial-delay", "2",
                      "--factor", "1.5", "--max-delay", "10", "--attempts", "8", "--samples", "2")
    delays = [min(2 * 1.5 ** k, 10) for k in range(8)]
    expected = [sum(delays[: k + 1]) for k in range(8)]
    assert [row["cumulative_median"] for row in result["schedule"]] == pytest.approx(
        expected, rel=1e-12
    )


def test_jittered_numbers_follow_twisted_formula_for_each_seed(capsys):
    """If jitter is on, then median and percentiles are those of Twisted's compounding normal jitter with rng seed+k per sample."""
    seed, samples, attempts = 7, 21, 5
    result = run_json(capsys, "schedule", "--seed", str(seed), "--samples", str(samples),
                      "--attempts", str(attempts))
    per_attempt = [[] for _ in range(attempts)]
    for k in range(samples):
        rng = random.Random(seed + k)
        delay = 1.0
        for i in range(attempts):
            delay = rng.normalvariate(delay, delay * TWISTED_JITTER)
            per_attempt[i].append(delay)
            delay = min(delay * E, 3600)
    for row, delays in zip(result["schedule"], per_attempt):
        cuts = statistics.quantiles(delays, n=20, method="inclusive")
        assert row["median"] == pytest.approx(statistics.median(delays), rel=1e-9)
        assert row["p5"] == pytest.approx(cuts[0], rel=1e-9)
        assert row["p95"] == pytest.approx(cuts[18], rel=1e-9)


def test_same_seed_same_numbers(capsys):
    """If schedule runs twice with one seed, then it prints the same numbers."""
    first = run_json(capsys, "schedule", "--seed", "3", "--samples", "50")
    second = run_json(capsys, "schedule", "--seed", "3", "--samples", "50")
    assert first == second


def test_full_jitter_mode_delays_stay_under_the_cap(capsys):
    """If the jitter mode is full, then no percentile exceeds maxDelay."""
    result = run_json(capsys, "schedule", "--jitter-mode", "full", "--max-delay", "5",
                      "--attempts", "8", "--samples", "200")
    assert max(row["p95"] for row in result["schedule"]) <= 5


# -- output shape ------------------------------------------------------------


def test_json_has_the_per_attempt_keys_and_the_policy(capsys):
    """If --json is given, then the output is one JSON object with the policy and per-attempt rows."""
    result = run_json(capsys, "schedule", "--samples", "20")
    assert result["policy"]["factor"] == E
    assert result["policy"]["jitterMode"] == "twisted"
    assert len(result["schedule"]) == 10
    for number, row in enumerate(result["schedule"], 1):
        assert row["attempt"] == number
        assert {"attempt", "median", "p5", "p95", "cumulative_median"} <= set(row)


def test_max_retries_stops_the_schedule(capsys):
    """If --max-retries is 3, then the schedule has 3 attempts and says why it stops."""
    result = run_json(capsys, "schedule", "--max-retries", "3", "--samples", "10")
    assert [row["attempt"] for row in result["schedule"]] == [1, 2, 3]
    assert result["stopped"]["reason"] == "maxRetries"


def test_max_retries_is_explained_in_the_table(capsys):
    """If --max-retries is 3, then the table ends at attempt 3 with a note that the factory gives up."""
    code, out, _ = run(capsys, "schedule", "--max-retries", "3", "--samples", "10")
    assert code == 0
    table = out.split("median delay per attempt")[0].split("cumulative (median)\n")[1]
    attempt_rows = [line for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert [line.split()[0] for line in attempt_rows] == ["1", "2", "3"]
    assert "gives up after 3 retries (maxRetries=3)" in out


def test_table_and_chart_show_human_readable_delays(capsys):
    """If --jitter is 0, then the table and chart show delays such as 1.00s, 2.72s and 20.09s."""
    code, out, _ = run(capsys, "schedule", "--jitter", "0", "--attempts", "4", "--samples", "1")
    assert code == 0
    table, chart = out.split("median delay per attempt")
    assert table.splitlines()[-4].split()[:2] == ["2", "2.72s"]
    assert "1.00s" in chart and "20.09s" in chart


def test_chart_fits_the_terminal_width(capsys, monkeypatch):
    """If the terminal is 50 columns wide, then no chart line is wider and the largest delay has the longest bar."""
    monkeypatch.setenv("COLUMNS", "50")
    code, out, _ = run(capsys, "schedule", "--jitter", "0", "--attempts", "5", "--samples", "1")
    assert code == 0
    chart = out.split("median delay per attempt\n")[1].splitlines()
    assert all(len(line) <= 50 for line in chart)
    bars = [line.count("#") for line in chart]
    assert bars == sorted(bars) and bars[0] < bars[-1]


@pytest.mark.parametrize("seconds, text", [
    (0.05, "50.0ms"),
    (1.0, "1.00s"),
    (E, "2.72s"),
    (59.999, "1m 00s"),
    (73.4, "1m 13s"),
    (3600, "1h 00m"),
    (8139.1, "2h 16m"),
    (-0.25, "-0.25s"),
])
def test_format_seconds(seconds, text):
    """If a duration is shown, then it is in the largest sensible units."""
    assert format_seconds(seconds) == text


# -- the herd ----------------------------------------------------------------


def test_clients_json_reports_every_jitter_mode(capsys):
    """If --clients is given with --json, then each of the four jitter modes has its herd numbers."""
    result = run_json(capsys, "schedule", "--clients", "20", "--down", "5")
    assert list(result["modes"]) == ["twisted", "full", "equal", "decorrelated"]
    for mode in result["modes"].values():
        assert {"peak_per_window", "peak_after_return", "all_back_after", "attempts"} <= set(mode)
        assert mode["clients"] == 20 and mode["down"] == 5


def test_clients_ignores_jitter_mode_and_shows_all_four(capsys):
    """If --clients is given with --jitter-mode, then the table still compares all four modes."""
    code, out, _ = run(capsys, "schedule", "--clients", "10", "--jitter-mode", "full")
    assert code == 0
    first_column = [line.split()[0] for line in out.splitlines() if line.split()]
    for mode in ("twisted", "full", "equal", "decorrelated"):
        assert mode in first_column


def test_clients_with_zero_jitter_shows_the_whole_herd_in_one_window(capsys):
    """If --clients 50 runs with jitter 0, then twisted mode's peak after return is all 50 clients."""
    result = run_json(capsys, "schedule", "--clients", "50", "--jitter", "0")
    assert result["modes"]["twisted"]["peak_after_return"] == 50


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("argv, mentions", [
    (["schedule", "--factor", "0.5"], "factor"),
    (["schedule", "--jitter", "2"], "jitter"),
    (["schedule", "--initial-delay", "-1"], "initial"),
    (["schedule", "--max-retries", "-1"], "maxRetries"),
    (["schedule", "--max-elapsed", "nan"], "maxElapsed"),
    (["schedule", "--attempts", "0"], "--attempts"),
    (["schedule", "--samples", "x"], "--samples"),
    (["schedule", "--factor", "fast"], "--factor"),
    (["schedule", "--jitter-mode", "random"], "--jitter-mode"),
    (["schedule", "--clients", "0"], "--clients"),
    (["schedule", "--down", "5"], "--clients"),
    (["schedule", "--clients", "5", "--attempts", "3"], "--attempts"),
    (["wait", "localhost"], "HOST:PORT"),
    (["wait", "localhost:0"], "port"),
    (["wait", "localhost:65536"], "port"),
    (["wait", "localhost:http"], "port"),
    (["wait", "localhost:80", "--factor", "0"], "factor"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, mentions):
    """If an argument is bad, then the exit code is 2 and stderr is one 'rcf-sync: error:' line naming it."""
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("rcf-sync: error: ")
    assert mentions in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["schedule", "wait", "demo"])
def test_every_command_has_help_with_exit_codes(capsys, command):
    """If a command is given --help, then it exits 0 and documents the exit codes."""
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "--initial-delay" in out
    assert "2  bad arguments" in out


# -- the real entry point ----------------------------------------------------


def test_python_dash_m_schedule_json():
    """If `python -m rcf_sync schedule --json` runs, then it exits 0 and prints parseable JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "rcf_sync", "schedule", "--json", "--samples", "50"],
        capture_output=True, text=True, timeout=30,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    result = json.loads(proc.stdout)
    assert result["schedule"][0]["median"] == pytest.approx(1.0, abs=0.2)


def test_python_dash_m_bad_argument_exits_2():
    """If `python -m rcf_sync` gets a bad policy value, then the process exits 2 with one line and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "rcf_sync", "schedule", "--factor", "0.5"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# -- HOST:PORT ---------------------------------------------------------------


def test_parse_host_port_splits_name_and_port():
    """If given 'host:port', then parse_host_port returns the host and the port as an int."""
    assert parse_host_port("db.example.com:5432") == ("db.example.com", 5432)


def test_parse_host_port_unbrackets_ipv6():
    """If given '[::1]:port', then parse_host_port returns the bare IPv6 address."""
    assert parse_host_port("[::1]:8080") == ("::1", 8080)


@pytest.mark.parametrize("text, match", [
    ("localhost", "missing ':PORT'"),
    ("localhost:", "missing port"),
    (":80", "missing host"),
    ("localhost:http", "not a number"),
    ("localhost:-1", "not a number"),
    ("localhost:0", "out of range"),
    ("localhost:65536", "out of range"),
    ("::1:80", "brackets"),
    ("[::1]", "missing ':PORT'"),
    ("[::1:80", "missing ']'"),
    ("[]:80", "empty address"),
])
def test_parse_host_port_rejects_bad_text(text, match):
    """If the text is not a usable HOST:PORT, then ValueError says what is wrong."""
    with pytest.raises(ValueError, match=match):
        parse_host_port(text)
