"""Times, durations and values as a person reads them (template filters; pure functions)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any


def utc(ts: float | None) -> str:
    """A Unix time as UTC ISO 8601 (seconds), for ``datetime`` attributes and tooltips."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(ts: float | None, now: float | None = None) -> str:
    """A Unix time as a person reads it: '14:03:12 UTC' today, 'Nov 30 14:03 UTC' another day."""
    if ts is None:
        return "-"
    at = datetime.fromtimestamp(float(ts), UTC)
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
    if at.date() == today:
        return at.strftime("%H:%M:%S UTC")
    if at.year == today.year:
        return at.strftime("%b %-d %H:%M UTC")
    return at.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    """A span as '42 s', '3 min 5 s', '2 h 5 min' or '1 d 3 h'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    for size, unit, small, small_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if s >= size:
            big, rest = divmod(s, size)
            part = rest // small
            # Past ten minutes the seconds are noise.
            if part and not (unit == "min" and big >= 10):
                return f"{big} {unit} {part} {small_unit}"
            return f"{big} {unit}"
    return f"{s} s"  # pragma: no cover - the loop always returns


def ago(ts: float | None, now: float | None = None) -> str:
    """A Unix time relative to now: '3 min ago' or 'in 2 h'."""
    if ts is None:
        return ""
    delta = (time.time() if now is None else now) - float(ts)
    span, suffix = abs(delta), ("ago" if delta >= 0 else "from now")
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if span >= size:
            return f"{int(span // size)} {unit} {suffix}"
    return f"{int(span)} s {suffix}"


def pretty(value: Any) -> str:
    """A field as readable text: strings as they are, the rest as indented JSON."""
    return value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)


FILTERS = {"utc": utc, "clock": clock, "duration": duration, "ago": ago, "pretty": pretty}
