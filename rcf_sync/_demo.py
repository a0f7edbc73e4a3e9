"""The ``demo`` and ``wait`` commands: what they run, apart from parsing."""

from __future__ import annotations

import ssl
import sys
import threading
import time
from typing import Callable, TextIO

from ._client import ReconnectingClient
from ._connectors import TCPConnector
from ._errors import ConnectTimeout, GaveUp, RCFError
from ._factory import ReconnectingClientFactory
from ._interfaces import IConnector
from ._state import State
from .testing import EchoServer, echo_round_trip

__all__ = ["run_demo", "run_wait"]


def _next_delay(factory: ReconnectingClientFactory) -> float | None:
    call = factory._callID
    if call is not None and call.active() and factory.clock is not None:
        return max(0.0, call.getTime() - factory.clock.seconds())
    return None


def _reporting(
    factory: ReconnectingClientFactory, say: Callable[[str], None], dest: str
) -> ReconnectingClientFactory:
    """A copy of ``factory`` (same class and settings) that reports every
    failure and loss with the delay the factory chose."""

    base: type[ReconnectingClientFactory] = type(factory)

    class Reporting(base):  # type: ignore[valid-type,misc]  # the factory's own class
        def _report(self, what: str, reason: object) -> None:
            delay = _next_delay(self)
            then = f"; next attempt in {delay:.2f}s" if delay is not None else "; giving up"
            error = getattr(reason, "value", reason)  # the Failure's exception
            say(f"{what} ({type(error).__name__}: {error}){then}")

        def clientConnectionFailed(self, connector: IConnector, reason: object) -> None:
            super().clientConnectionFailed(connector, reason)
            self._report(f"attempt {self.retries} to {dest} failed", reason)

        def clientConnectionLost(self, connector: IConnector, reason: object) -> None:
            super().clientConnectionLost(connector, reason)
            self._report(f"connection to {dest} lost", reason)

    Reporting.__name__ = Reporting.__qualname__ = type(factory).__name__
    copy: ReconnectingClientFactory = Reporting.__new__(Reporting)
    copy.__dict__.update(factory.__dict__)
    return copy


def run_demo(factory: ReconnectingClientFactory, duration: float, out: TextIO = sys.stdout) -> int:
    """Run the demo for ``duration`` seconds; return the exit code."""
    tty = hasattr(out, "isatty") and out.isatty()
    server = EchoServer()
    server.start()
    # (start, end) of each outage, as fractions of the run: a short one, then
    # a long one that lets the back-off grow (to about 5 s with the demo's
    # policy) and still leaves time to see the client come back.
    outages = [(0.13 * duration, 0.17 * duration), (0.33 * duration, 0.60 * duration)]
    served = failed = 0
    last_state: State | None = None
    max_delay = 0.0
    t0 = time.monotonic()

    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            if tty:
                out.write("\r\033[K")
            out.write(f"{time.monotonic() - t0:6.2f}s  {line}\n")
            out.flush()

    say(f"echo server on {server.host}:{server.port}; policy {factory!r}")
    factory = _reporting(factory, say, f"{server.host}:{server.port}")
    client = ReconnectingClient(server.address, factory=factory, backend="thread", name="demo")
    down = False
    with client:
        n = 0
        while True:
            now = time.monotonic() - t0
            should_be_down = any(a <= now < b for a, b in outages)
            if should_be_down and not down:
                server.stop()
                down = True
                say("server killed")
                # The client may not have seen the loss yet (it is noticed in
                # the background, within milliseconds); a request sent before
                # then would fail for no fault of the client's, so wait.
                try:
                    client.wait_state(State.WAITING, State.CONNECTING, State.STOPPED, timeout=2)
                except ConnectTimeout:
                    pass
            elif down and not should_be_down:
                server.start()
                down = False
                say("server restarted")
            state = client.state
            delay = _next_delay(factory)
            if state is not last_state and state in (State.CONNECTED, State.STOPPED):
                say(f"state {state.name}")
            last_state = state
            # Past the end, give a client still waiting for its retry a little
            # longer, so that the run ends connected.
            if now >= duration and (state is State.CONNECTED or now >= 1.3 * duration):
                break
            if delay is not None:
                max_delay = max(max_delay, delay)
            if state is State.CONNECTED:
                n += 1
                payload = f"request {n}".encode()
                try:
                    if client.call(echo_round_trip, payload, attempts=1, timeout=0.5) == payload:
                        served += 1
                except RCFError as exc:
                    failed += 1
                    say(f"request {n} failed: {type(exc).__name__}")
            if tty:
                status = (f"{now:6.2f}s  [{state.name:<10}] attempt {factory.retries}"
                          f"  next delay {delay if delay is not None else 0:5.2f}s"
                          f"  served {served}")
                with lock:
                    out.write("\r\033[K" + status)
                    out.flush()
            time.sleep(0.05)
        stats = client.stats
    server.stop()
    if tty:
        out.write("\r\033[K")
    out.write(
        f"\nsummary: {served} requests served, {failed} failed; {stats.connects} connections, "
        f"{stats.losses} lost, {stats.connect_failures} failed attempts; "
        f"longest back-off delay {max_delay:.2f}s\n"
    )
    return 0


def run_wait(
    factory: ReconnectingClientFactory,
    host: str,
    port: int,
    timeout: float | None,
    tls: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Block until ``host:port`` accepts a connection; return the exit code."""
    ctx = ssl.create_default_context() if tls else None
    connector = TCPConnector(host, port, timeout=min(10.0, timeout) if timeout else 10.0,
                             ssl_context=ctx)
    dest = connector.describe()
    t0 = time.monotonic()

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    reporting = _reporting(factory, say, dest)
    client = ReconnectingClient(connector, factory=reporting, backend="thread")
    with client:
        try:
            client.wait_connected(timeout=timeout)
        except ConnectTimeout:
            out.write(f"{dest} not reachable after {time.monotonic() - t0:.1f}s (timeout)\n")
            return 1
        except GaveUp as exc:
            out.write(f"{dest} not reachable: {exc}\n")
            return 1
    out.write(f"{dest} is reachable (after {time.monotonic() - t0:.2f}s)\n")
    return 0
