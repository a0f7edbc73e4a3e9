"""README.rst's Python examples, run as written, so that they cannot drift
from the code.

Every ``.. code-block:: python`` block runs, in order, in one namespace (as a
reader follows along), against loopback servers this test starts:

- each address literal ``("127.0.0.1", <port>)`` is pointed at an echo server;
- the names the README takes as given exist: ``request(sock, n)`` (one
  request to that echo server), ``server_address`` (its address) and
  ``port`` (a loopback port where nothing listens);
- an RST comment just before a block says how it is special:
  ``.. readme-test: needs-client`` (it gets ``client``, a started client on
  the echo server) or ``.. readme-test: subprocess`` (it monkey-patches, so it
  runs in a fresh interpreter).

Every client or pool a block leaves behind is closed at the end, and the
suite's leak check then applies.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from rcf_sync import ReconnectingClient, ReconnectingPool

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")

MARKERS = {"needs-client", "subprocess"}

# One request to an echo server, defined as source so that a subprocess gets
# the same function without importing anything before its monkey-patching.
REQUEST_SOURCE = '''
def request(sock, n):
    data = str(n).encode() + b"\\n"
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("the echo server closed")
        got += chunk
    return got
'''

_ADDRESS = re.compile(r'\("127\.0\.0\.1", \d+\)')
_DIRECTIVE = re.compile(r"^\.\. (?:code-block|code|sourcecode):: *python\s*$")
_MARKER = re.compile(r"^\.\. readme-test: *(\S+)\s*$")


def python_blocks(text):
    """``[(line, marker or None, code)]`` for each Python block of ``text``."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not _DIRECTIVE.match(line):
            continue
        marker = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = _MARKER.match(lines[j]) if j >= 0 else None
        if m:
            marker = m.group(1)
        body = []
        k = i + 1
        while k < len(lines) and (not lines[k].strip() or lines[k].startswith((" ", "\t"))):
            body.append(lines[k])
            k += 1
        blocks.append((i + 1, marker, textwrap.dedent("\n".join(body)).strip("\n") + "\n"))
    return blocks


def read_readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_extraction_finds_every_block_and_only_known_markers():
    """If README.rst has Python blocks, then every one is found and each marker is one the runner knows."""
    text = read_readme()
    blocks = python_blocks(text)
    assert len(blocks) == text.count(".. code-block:: python") >= 6
    assert all(code.strip() for _, _, code in blocks)
    markers = [marker for _, marker, _ in blocks if marker is not None]
    assert set(markers) <= MARKERS
    assert len(re.findall(r"^\.\. readme-test:", text, re.M)) == len(markers)  # none misplaced
    assert len(markers) <= 2  # special cases stay few


def test_extraction_reads_marker_and_dedents():
    """If a block follows a marker comment, then it is returned dedented with that marker."""
    text = "Intro\n\n.. readme-test: subprocess\n\n.. code-block:: python\n\n    x = 1\n    if x:\n        y = 2\n\nAfter\n"
    assert python_blocks(text) == [(5, "subprocess", "x = 1\nif x:\n    y = 2\n")]


def run_in_subprocess(code, address, line):
    pytest.importorskip("gevent")
    script = REQUEST_SOURCE + "\n" + code
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False, env=dict(os.environ, PYTHONWARNINGS="error"))
    assert result.returncode == 0, f"README.rst:{line} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"README.rst:{line}:\n{result.stderr}"


def test_readme_python_blocks_run(server, free_port, no_leaks, capsys):
    """If the README's Python examples run in order against loopback servers, then none raises."""
    address = f'("127.0.0.1", {server.port})'
    namespace = {"server_address": server.address, "port": free_port, "__name__": "readme"}
    exec(REQUEST_SOURCE, namespace)
    left = []

    def collect():
        for value in list(namespace.values()):
            if isinstance(value, (ReconnectingClient, ReconnectingPool)) and value not in left:
                left.append(value)

    ran = 0
    try:
        for line, marker, code in python_blocks(read_readme()):
            code = _ADDRESS.sub(address, code)
            if marker == "subprocess":
                run_in_subprocess(code, address, line)
                ran += 1
                continue
            if marker == "needs-client":
                namespace["client"] = ReconnectingClient(server.address, backend="thread").start()
                collect()
            try:
                exec(compile(code, f"README.rst:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"the README.rst block at line {line} failed: {exc!r}") from exc
            finally:
                collect()
            ran += 1
    finally:
        for client in left:
            client.close()
    assert ran == len(python_blocks(read_readme()))
    assert b"PING" in capsys.readouterr().out.encode()  # the quickstart's echo came back


def test_address_substitution_points_at_the_server():
    """If a block names ("127.0.0.1", N), then the runner rewrites it to the echo server's address."""
    assert _ADDRESS.sub('("127.0.0.1", 5)', 'f(("127.0.0.1", 6379), 1)') == 'f(("127.0.0.1", 5), 1)'
    assert _ADDRESS.sub("X", repr(("::1", 1))) == repr(("::1", 1))  # others stay
