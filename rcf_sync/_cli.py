"""Command line: ``python -m rcf_sync`` / ``rcf-sync``.

Commands:

``schedule``
    the delays a policy produces, computed by running the factory
    (:mod:`rcf_sync._simulate`); with ``--clients N``, the load a herd of
    clients puts on a server that comes back, under each jitter mode.
``wait HOST:PORT``
    block until a TCP service accepts connections.
``demo``
    a client riding out a server that restarts.

Exit codes: 0 success; 1 failure, timeout, gave up or interrupted; 2 bad
arguments. Every error is one line on stderr, ``rcf-sync: error: ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, TextIO

from ._cli_output import _print_herd, _print_schedule
from ._factory import ReconnectingClientFactory
from ._policy import JITTER_MODES
from ._simulate import policy_of, sample_schedule, simulate_herd
from ._version import __version__

__all__ = ["main", "parse_host_port"]

PROG = "rcf-sync"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The demo's first delay unless --initial-delay is given, so that the
#: back-off grows visibly within its 15 s.
DEMO_INITIAL_DELAY = 0.25

EPILOG = """\
exit codes:
  0  success
  1  failure: not reachable, timed out, gave up, or interrupted
  2  bad arguments"""

# Policy options: (flag, factory attribute, argparse type, metavar, help).
_D = ReconnectingClientFactory
_POLICY_OPTIONS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--initial-delay", "initialDelay", float, "S",
     f"first back-off delay in seconds (default: {_D.initialDelay})"),
    ("--factor", "factor", float, "F",
     f"growth of the delay per retry, >= 1 (default: {_D.factor})"),
    ("--max-delay", "maxDelay", float, "S",
     f"cap on the delay in seconds (default: {_D.maxDelay})"),
    ("--jitter", "jitter", float, "J",
     f"relative spread of Twisted's normal jitter, in [0, 1) (default: {_D.jitter})"),
    ("--max-retries", "maxRetries", int, "N",
     "give up after N retries (default: never)"),
    ("--jitter-mode", "jitterMode", str, "MODE",
     f"jitter strategy: {', '.join(JITTER_MODES)} (default: {_D.jitterMode})"),
    ("--max-elapsed", "maxElapsed", float, "S",
     "give up after S seconds of consecutive failure (default: never)"),
)
del _D


class UsageError(Exception):
    """Bad input found after parsing; reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``rcf-sync: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return convert


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


_PORT = re.compile(r"[0-9]+\Z")


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[v6addr]:port"`` into ``(host, port)``.

    The brackets around an IPv6 address are removed; the port becomes an
    int. Raises ``ValueError`` saying what is wrong for a missing colon,
    host or port, an unbracketed IPv6 address, or a port that is not a
    number from 1 to 65535.
    """
    where = f"expected HOST:PORT, got {text!r}"
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{where}: missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1:]
        if not rest.startswith(":"):
            raise ValueError(f"{where}: missing ':PORT' after ']'")
        port = rest[1:]
        if not host:
            raise ValueError(f"{where}: empty address between '[' and ']'")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{where}: missing ':PORT'")
        if not host:
            raise ValueError(f"{where}: missing host")
        if ":" in host:
            raise ValueError(f"{where}: put an IPv6 address in brackets, as in [::1]:{port}")
    if not port:
        raise ValueError(f"{where}: missing port")
    if not _PORT.match(port):
        raise ValueError(f"{where}: port {port!r} is not a number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{where}: port {number} is out of range (1-65535)")
    return host, number


def _host_port_arg(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _policy_parent() -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("back-off policy (ReconnectingClientFactory attributes)")
    for flag, attribute, kind, metavar, text in _POLICY_OPTIONS:
        if attribute == "jitterMode":
            group.add_argument(flag, dest=attribute, choices=JITTER_MODES, metavar=metavar,
                               help=text)
        else:
            group.add_argument(flag, dest=attribute, metavar=metavar, help=text,
                               type=_float if kind is float else _integer)
    return parent


def _parser() -> _Parser:
    parent = _policy_parent()
    parser = _Parser(
        prog=PROG,
        description="Twisted's reconnecting back-off for synchronous Python.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        width = min(shutil.get_terminal_size().columns, 80) - 2
        description = "\n\n".join(
            textwrap.fill(paragraph, width) for paragraph in description.split("\n\n")
        )
        return sub.add_parser(
            name, help=summary, description=description, epilog=EPILOG,
            parents=[parent], formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    schedule = command(
        "schedule", "print the delay of each retry under a policy",
        "Print the delay before each retry (median, 5th and 95th percentiles over "
        "random samples) and the median cumulative wait, as a table and a bar "
        "chart, computed by running ReconnectingClientFactory on a fake clock.\n\n"
        "With --clients N: simulate N clients that lose the server at the same "
        "instant and show, for each jitter mode side by side, the load the server "
        "sees when it comes back (--jitter-mode is then ignored).",
    )
    schedule.add_argument("--attempts", type=_int_at_least(1), metavar="N",
                          help="number of retries to show (default: 10)")
    schedule.add_argument("--samples", type=_int_at_least(1), metavar="K",
                          help="random samples per retry (default: 1000)")
    schedule.add_argument("--seed", type=_integer, default=0, metavar="S",
                          help="random seed; same seed, same numbers (default: 0)")
    schedule.add_argument("--json", action="store_true",
                          help="print a JSON object instead of the table")
    schedule.add_argument("--clients", type=_int_at_least(1), metavar="N",
                          help="simulate a herd of N clients instead")
    schedule.add_argument("--down", type=_seconds, metavar="S",
                          help="with --clients: seconds the server stays down (default: 30)")
    schedule.set_defaults(handler=_cmd_schedule)

    wait = command(
        "wait", "block until a TCP service accepts connections",
        "Connect to HOST:PORT with the back-off policy until it accepts a "
        "connection, printing progress.",
    )
    wait.add_argument("address", type=_host_port_arg, metavar="HOST:PORT",
                      help="service to wait for, e.g. db:5432 or [::1]:8080")
    wait.add_argument("--timeout", type=_positive_seconds, metavar="S",
                      help="give up after S seconds (default: follow the policy)")
    wait.add_argument("--tls", action="store_true",
                      help="also complete a TLS handshake, verifying the certificate")
    wait.set_defaults(handler=_cmd_wait)

    demo = command(
        "demo", "show a client riding out a server that restarts",
        "Run an echo server on loopback and a client that keeps talking to it "
        "while the server is killed and restarted, showing each state change "
        "and back-off delay. Unless --initial-delay is given the demo starts "
        f"from {DEMO_INITIAL_DELAY}s, so that the back-off grows visibly within "
        "its run.",
    )
    demo.add_argument("--duration", type=_positive_seconds, default=15.0, metavar="S",
                      help="how long the demo runs (default: 15)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _build_factory(args: argparse.Namespace) -> ReconnectingClientFactory:
    """The factory the policy options describe; ``UsageError`` when a value
    is rejected, naming the option."""
    kwargs: dict[str, Any] = {}
    for _flag, attribute, *_ in _POLICY_OPTIONS:
        value = getattr(args, attribute, None)
        if value is not None:
            kwargs[attribute] = value
    try:
        return ReconnectingClientFactory(noisy=False, **kwargs)
    except ValueError as exc:
        message = str(exc)
        for flag, attribute, *_ in _POLICY_OPTIONS:
            if message.startswith(attribute + " "):
                raise UsageError(f"argument {flag}: {message}") from None
        raise UsageError(message) from None


def _herd_policy(factory: ReconnectingClientFactory) -> dict[str, Any]:
    """The factory's policy minus ``jitterMode``, which the herd varies."""
    policy = policy_of(factory)
    del policy["jitterMode"]
    return policy


# -- formatting ----------------------------------------------------------------

def _cmd_schedule(args: argparse.Namespace, out: TextIO) -> int:
    factory = _build_factory(args)
    if args.clients is None:
        if args.down is not None:
            raise UsageError("argument --down: only applies with --clients")
        result = sample_schedule(
            policy_of(factory),
            attempts=10 if args.attempts is None else args.attempts,
            samples=1000 if args.samples is None else args.samples,
            seed=args.seed,
        )
        if args.json:
            json.dump(result, out, indent=2)
            print(file=out)
        else:
            _print_schedule(result, out, shutil.get_terminal_size().columns)
        return EXIT_OK

    for flag, value in (("--attempts", args.attempts), ("--samples", args.samples)):
        if value is not None:
            raise UsageError(f"argument {flag}: does not apply with --clients")
    policy = _herd_policy(factory)
    down = 30.0 if args.down is None else args.down
    modes: dict[str, dict[str, Any]] = {}
    for mode in JITTER_MODES:
        try:
            modes[mode] = simulate_herd(args.clients, down=down, policy=policy,
                                        jitter_mode=mode, seed=args.seed)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    report = {
        "clients": args.clients,
        "down": down,
        "window": modes[JITTER_MODES[0]]["window"],
        "seed": args.seed,
        "policy": policy,
        "modes": modes,
    }
    if args.json:
        json.dump(report, out, indent=2)
        print(file=out)
    else:
        _print_herd(report, out)
    return EXIT_OK


def _cmd_wait(args: argparse.Namespace, out: TextIO) -> int:
    factory = _build_factory(args)
    from ._demo import run_wait

    host, port = args.address
    return run_wait(factory, host, port, args.timeout, args.tls, out)


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.initialDelay is None:
        args.initialDelay = DEMO_INITIAL_DELAY
    factory = _build_factory(args)
    from ._demo import run_demo

    return run_demo(factory, args.duration, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``);
    return the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotImplementedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (``rcf-sync schedule | head``): stop quietly.
        # Point stdout at /dev/null so flushing it at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILURE
