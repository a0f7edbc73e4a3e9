"""Command line: ``python -m rcf_sync`` / ``rcf-sync``."""

import argparse
import sys

__all__ = ["main"]


def _parser():
    parser = argparse.ArgumentParser(
        prog="rcf-sync",
        description="Twisted's reconnecting back-off for synchronous Python.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="show a client riding out a server that restarts")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "demo":
        print("demo: starts a loopback echo server and a client that reconnects "
              "while the server restarts (being built).")
    return 0
