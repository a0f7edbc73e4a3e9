"""The demo and wait commands, run as a user would (a subprocess)."""

import subprocess
import sys

import pytest


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "rcf_sync", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_demo_shows_backoff_and_ends_by_itself():
    """If demo runs, then it shows losses, growing delays and reconnections, and exits 0 by itself."""
    result = run("demo", "--duration", "8")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "server killed" in out and "server restarted" in out
    assert "next attempt in" in out and "state CONNECTED" in out
    assert "summary:" in out and "Traceback" not in result.stderr
    events = [line for line in out.splitlines() if line.strip() and "summary:" not in line]
    assert events[-1].endswith("state CONNECTED")  # it ends reconnected
    assert [line for line in out.splitlines() if line.split()[1:2] == ["request"]] == []
    assert ", 0 failed;" in out  # every request made while connected was served
    delays = [float(line.rsplit("next attempt in ", 1)[1].rstrip("s"))
              for line in out.splitlines() if "failed" in line and "next attempt in" in line]
    assert len(delays) >= 2 and max(delays) > min(delays)


def test_wait_returns_0_when_reachable(server):
    """If the service accepts connections, then wait exits 0 and says so."""
    result = run("wait", f"127.0.0.1:{server.port}", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert "is reachable" in result.stdout


def test_wait_times_out_with_1(free_port):
    """If nothing listens, then wait prints each attempt and exits 1 at the timeout."""
    result = run("wait", f"127.0.0.1:{free_port}", "--timeout", "1", "--initial-delay", "0.1")
    assert result.returncode == 1
    assert "attempt 1" in result.stdout and "next attempt in" in result.stdout
    assert "timeout" in result.stdout


def test_wait_gives_up_after_max_retries(free_port):
    """If --max-retries is exhausted, then wait exits 1."""
    result = run("wait", f"127.0.0.1:{free_port}", "--max-retries", "2", "--initial-delay", "0.01")
    assert result.returncode == 1
    assert "gave up after 2 retries" in result.stdout


@pytest.mark.parametrize("args", [["wait", "nohost"], ["wait", "h:0"], ["wait", "h:1", "--timeout", "-1"],
                                  ["demo", "--factor", "0.5"], ["bogus"]])
def test_bad_arguments_exit_2_with_one_line(args):
    """If the arguments are bad, then the command exits 2 with one line on stderr and no traceback."""
    result = run(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_console_script_help_lists_commands():
    """If --help is asked for, then every command is listed with the exit codes."""
    result = run("--help")
    assert result.returncode == 0
    for word in ("demo", "wait", "schedule", "exit codes"):
        assert word in result.stdout


def test_version_flag_prints_the_package_version():
    """If --version is given, then the command prints the installed version and exits 0."""
    import rcf_sync

    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"rcf-sync {rcf_sync.__version__}"


def test_version_flag_through_main(capsys):
    """If main() gets --version, then it returns 0 (not SystemExit) after printing the version."""
    from rcf_sync import __version__
    from rcf_sync._cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rcf-sync {__version__}"
