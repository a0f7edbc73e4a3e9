"""ReconnectingClient under ``gevent.monkey.patch_all()``.

Monkey-patching cannot be undone, so the checks live in
``gevent_patched_suite.py`` and each runs in its own subprocess; this module
runs them, one pytest test per check. Each check also asserts that the hub
was never blocked and that no greenlet or socket was left behind.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gevent")

SUITE = Path(__file__).with_name("gevent_patched_suite.py")
CHECKS = re.findall(r"^def check_(\w+)\(", SUITE.read_text(), re.MULTILINE)


def run_suite(*args):
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True,
                          timeout=120, cwd=str(SUITE.parent.parent))


def test_suite_lists_every_check():
    """If the suite is asked for its checks, then it lists exactly those this module runs."""
    proc = run_suite("--list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == CHECKS
    assert len(CHECKS) >= 8


@pytest.mark.parametrize("check", CHECKS)
def test_patched(check):
    """If the named check runs in a monkey-patched process, then it passes."""
    proc = run_suite(check)
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert re.search(rf"^ok {check} ", proc.stdout, re.MULTILINE), output
