"""What the command line prints: durations, policies, tables and bar charts
of a back-off schedule and of a simulated herd."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["format_seconds"]


def format_seconds(seconds: float | None) -> str:
    """A duration for people: ``"50.0ms"``, ``"2.72s"``, ``"1m 13s"``,
    ``"1h 00m"``, ``"2d 03h"``."""
    if seconds is None:
        return "-"
    if math.isnan(seconds):
        return "nan"
    if math.isinf(seconds):
        return "inf" if seconds > 0 else "-inf"
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f}ms"
    if round(seconds, 2) < 60:
        return f"{seconds:.2f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        return f"{minutes // 60}h {minutes % 60:02d}m"
    hours = round(seconds / 3600)
    return f"{hours // 24}d {hours % 24:02d}h"


def _describe_policy(policy: dict[str, Any]) -> str:
    parts = []
    for name, value in policy.items():
        text = f"{value:g}" if isinstance(value, float) else value
        parts.append(f"{name}={text}")
    return " ".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Rows of strings as aligned columns; ``align`` holds '<' or '>' per column."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in (headers, *rows):
        cells = [f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _bar_chart(labels: list[str], values: list[float], texts: list[str], width: int) -> list[str]:
    """Horizontal bars of '#', the longest filling what ``width`` leaves."""
    label_w = max(len(label) for label in labels)
    text_w = max(len(text) for text in texts)
    room = max(10, width - label_w - text_w - 5)
    top = max((v for v in values if v > 0), default=0)
    lines = []
    for label, value, text in zip(labels, values, texts):
        length = 0
        if top > 0 and value > 0:
            length = max(1, round(value / top * room))
        lines.append(f"{label:>{label_w}} | {'#' * length:<{room}} {text:>{text_w}}".rstrip())
    return lines


def _print_schedule(result: dict[str, Any], out: TextIO, width: int) -> None:
    print(f"policy: {_describe_policy(result['policy'])}", file=out)
    print(f"{result['samples']} samples, seed {result['seed']}", file=out)
    print(file=out)
    rows = result["schedule"]
    uneven = any(row["samples"] != result["samples"] for row in rows)
    headers = ["attempt", "median", "p5", "p95", "cumulative (median)"]
    if uneven:
        headers.append("samples")
    body = []
    for row in rows:
        cells = [str(row["attempt"])] + [
            format_seconds(row[key]) for key in ("median", "p5", "p95", "cumulative_median")
        ]
        if uneven:
            cells.append(str(row["samples"]))
        body.append(cells)
    if body:
        for line in _table(headers, body, ">>>>>>"):
            print(line, file=out)
    stopped = result["stopped"]
    if stopped:
        policy = result["policy"]
        limit = " and ".join(f"{name}={policy[name]}" for name in stopped["reason"].split(" and "))
        if stopped["first"] == stopped["last"]:
            after = f"after {stopped['first']} retries"
        else:
            after = f"after {stopped['first']} to {stopped['last']} retries"
        if stopped["samples"] == result["samples"]:
            print(f"\nThe factory gives up {after} ({limit}).", file=out)
        else:
            print(f"\n{stopped['samples']} of {result['samples']} samples give up {after} "
                  f"({limit}).", file=out)
    if body:
        print("\nmedian delay per attempt", file=out)
        for line in _bar_chart(
            [str(row["attempt"]) for row in rows],
            [row["median"] for row in rows],
            [format_seconds(row["median"]) for row in rows],
            width,
        ):
            print(line, file=out)


def _print_herd(report: dict[str, Any], out: TextIO) -> None:
    n, down, window = report["clients"], report["down"], report["window"]
    print(f"{n} clients lose the server at t=0; it is back at t={format_seconds(down)}.",
          file=out)
    print(f"policy: {_describe_policy(report['policy'])}; seed {report['seed']}", file=out)
    print(file=out)
    per = f"{window * 1000:g}ms" if window < 1 else format_seconds(window)
    headers = ["jitter mode", "attempts", f"peak/{per} after return", f"peak/{per} overall",
               "all back after"]
    body = []
    for mode, result in report["modes"].items():
        back = format_seconds(result["all_back_after"])
        if result["gave_up"]:
            back = f"never ({result['gave_up']} gave up)"
        body.append([mode, str(result["attempts"]), str(result["peak_after_return"]),
                     str(result["peak_per_window"]), back])
    for line in _table(headers, body, "<>>>>"):
        print(line, file=out)
    print(f"\npeak: most connection attempts the server sees in any {per}; "
          "all back after: from the server's return.", file=out)


# -- commands ------------------------------------------------------------------
