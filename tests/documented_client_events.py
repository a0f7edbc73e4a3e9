"""Run Twisted's documented reconnecting client and record what it prints.

The client is the code of ``examples/twisted_protocol.py`` (Twisted's
documented ``EchoClientFactory`` in its Python 3 form). It runs either

* ``twisted``: under Twisted's reactor, the example's source with its one
  import line ``from rcf_sync import Protocol, ReconnectingClientFactory``
  swapped for Twisted's, connected with ``reactor.connectTCP``; or
* ``rcf_sync``: unchanged, connected with ``ReconnectingClient(...).start()``,

against a :class:`GreetServer` on loopback, in a subprocess of its own
(Twisted's reactor cannot be restarted, and the client prints to stdout).
The subprocess prints one JSON list: the lines the client printed, in order,
with the text after ``Reason:`` replaced by ``<kind>`` of the reason
(``ConnectionDone``, ``ConnectionRefused``, ...) as ``reason.check()`` tells
it, because the two sides word their messages differently.

Usage (what :func:`run_client` does): ``python documented_client_events.py
SIDE PORT``. The run ends at the first "Connection failed." (the harness
then calls ``stopTrying()``) or after 30 seconds (the list then ends with
``"TIMEOUT"``).
"""

import importlib.util
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "twisted_protocol.py"
OUR_IMPORT = "from rcf_sync import Protocol, ReconnectingClientFactory\n"
TWISTED_IMPORT = "from twisted.internet.protocol import Protocol, ReconnectingClientFactory\n"
RUN_SECONDS = 30.0
#: Back-off used for the run, so that it takes well under a second.
FAST = {"initialDelay": 0.05, "delay": 0.05, "maxDelay": 0.2}


class GreetServer:
    """A loopback server for ``connections`` connections: it says
    ``hello N`` on the N-th and closes it cleanly; before greeting the last
    one it stops listening, so the next attempt is refused."""

    def __init__(self, connections=2, timeout=30.0):
        self.connections = connections
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(timeout)
        self.port = self._listener.getsockname()[1]
        self.served = 0
        self.error = None
        self._thread = threading.Thread(target=self._serve, name="greet-server", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _serve(self):
        try:
            for n in range(1, self.connections + 1):
                conn, _ = self._listener.accept()
                with conn:
                    if n == self.connections:
                        self._listener.close()
                    conn.sendall(b"hello %d\n" % n)
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(10)
                    # Wait for the client's side to close before ours goes.
                    while conn.recv(4096):
                        pass
                self.served = n
        except OSError as exc:
            self.error = exc
        finally:
            self._listener.close()

    def stop(self, timeout=30.0):
        self._listener.close()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Recorder:
    """Stands in for ``sys.stdout``: collects whole lines, rewriting a
    ``Reason:`` tail to the kind noted just before it was printed."""

    def __init__(self):
        self.lines = []
        self._partial = ""
        self._kinds = []

    def note_reason(self, kind):
        self._kinds.append(kind)

    def write(self, text):
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if " Reason:" in line and self._kinds:
                line = line.split(" Reason:", 1)[0] + " Reason: <" + self._kinds.pop(0) + ">"
            self.lines.append(line)
        return len(text)

    def flush(self):
        pass


def twisted_kind(reason):
    from twisted.internet import error

    for kind in ("ConnectionDone", "ConnectionAborted", "ConnectionLost", "ConnectionRefusedError",
                 "TimeoutError"):
        if reason.check(getattr(error, kind)):
            return kind.replace("Error", "") if kind == "ConnectionRefusedError" else kind
    return reason.type.__name__


def rcf_sync_kind(reason):
    import rcf_sync

    if reason.check(rcf_sync.ConnectionDone):
        return "ConnectionDone"
    if reason.check(rcf_sync.ConnectionAborted):
        return "ConnectionAborted"
    if reason.check(rcf_sync.ConnectionLost):
        return "ConnectionLost"
    if reason.check(ConnectionRefusedError):
        return "ConnectionRefused"
    if reason.check(TimeoutError):
        return "TimeoutError"
    return reason.type.__name__


def load_example(side):
    """The example as a module; for ``twisted``, with Twisted's import."""
    source = EXAMPLE.read_text(encoding="utf-8")
    if source.count(OUR_IMPORT) != 1:
        raise AssertionError(f"{EXAMPLE} must contain {OUR_IMPORT!r} exactly once")
    if side == "twisted":
        source = source.replace(OUR_IMPORT, TWISTED_IMPORT)
    spec = importlib.util.spec_from_loader(f"documented_client_{side}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(EXAMPLE)
    exec(compile(source, str(EXAMPLE), "exec"), module.__dict__)
    return module


def recording_factory(module, recorder, kind_of, finished):
    """The example's factory, told to note reason kinds and to stop trying
    (calling ``finished()``) after its first failed attempt."""

    class Recording(module.EchoClientFactory):
        def clientConnectionLost(self, connector, reason):
            recorder.note_reason(kind_of(reason))
            super().clientConnectionLost(connector, reason)

        def clientConnectionFailed(self, connector, reason):
            recorder.note_reason(kind_of(reason))
            super().clientConnectionFailed(connector, reason)
            self.stopTrying()
            finished()

    factory = Recording()
    for name, value in FAST.items():
        setattr(factory, name, value)
    return factory


def run_twisted(port):
    from twisted.internet import reactor

    recorder = Recorder()
    sys.stdout = recorder
    module = load_example("twisted")
    factory = recording_factory(module, recorder, twisted_kind, lambda: reactor.callLater(0, reactor.stop))

    def timed_out():
        recorder.lines.append("TIMEOUT")
        reactor.stop()

    guard = reactor.callLater(RUN_SECONDS, timed_out)
    reactor.connectTCP("127.0.0.1", port, factory)
    reactor.run()
    if guard.active():
        guard.cancel()
    return recorder.lines


def run_rcf_sync(port):
    recorder = Recorder()
    sys.stdout = recorder
    module = load_example("rcf_sync")
    done = threading.Event()
    factory = recording_factory(module, recorder, rcf_sync_kind, done.set)
    client = module.ReconnectingClient(("127.0.0.1", port), factory=factory).start()
    try:
        if not done.wait(RUN_SECONDS):
            recorder.lines.append("TIMEOUT")
    finally:
        client.close()
    return recorder.lines


def run_client(side, port, timeout=60.0):
    """Run the documented client on ``side`` against ``127.0.0.1:port`` in
    a subprocess; return its list of printed lines. ``AssertionError`` with
    the subprocess's output if it failed."""
    proc = subprocess.run([sys.executable, __file__, side, str(port)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{side} client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    side, port = argv[0], int(argv[1])
    real_stdout = sys.stdout
    lines = run_twisted(port) if side == "twisted" else run_rcf_sync(port)
    sys.stdout = real_stdout
    print(json.dumps(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
