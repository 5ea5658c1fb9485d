"""Server-rendered SVG charts of stored readings: no script, no external asset (the CSP stays strict).

Each chart has a time axis over the span that really holds readings (never a
few seconds stretched over "3 h"), a value axis labelled in the reading's
unit, the rule's threshold as a dashed line, incidents as shaded bands and
rounds without the reading (an outage: SSH down, host unreachable) as grey
bands; the line breaks where there is no reading. Only numbers and escaped
text are interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from breakglass.web.humanize import clock, duration

WIDTH, HEIGHT = 600, 150
LEFT, RIGHT, TOP, BOTTOM = 60, 10, 10, 24  # room for the value labels and the time labels


@dataclass(frozen=True)
class Band:
    """A time span to shade: an incident (``kind`` "incident") or an outage ("outage")."""

    start: float
    end: float
    kind: str
    label: str


def _nice_top(hi: float) -> float:
    """A round number at or above ``hi`` (1, 2, 2.5 or 5 times a power of ten) for the axis top."""
    if hi <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(hi))
    return next(step * base for step in (1, 2, 2.5, 5, 10) if step * base >= hi * (1 - 1e-9))


def _fmt(v: float, unit: str) -> str:
    text = f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"
    return f"{text}{unit}"


def outages(rows: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]) -> list[Band]:
    """Runs of rounds that have no value (the probe could not read it) as bands."""
    bands: list[Band] = []
    start: float | None = None
    prev_at: float | None = None
    for r in rows:
        at = float(r["at"])
        if value(r) is None:
            start = at if start is None else start
        elif start is not None:
            bands.append(Band(start, at, "outage", "no reading"))
            start = None
        prev_at = at
    if start is not None and prev_at is not None:
        bands.append(Band(start, prev_at, "outage", "no reading"))
    return bands


def line_chart(
    title: str,
    rows: Sequence[dict[str, Any]],
    value: Callable[[dict[str, Any]], float | None],
    *,
    now: float,
    threshold: float | None = None,
    unit: str = "",
    scale: float = 1.0,
    bands: Sequence[Band] = (),
) -> Markup:
    """An accessible SVG line of ``value(row) * scale`` over each row's ``at`` up to ``now``."""
    label = escape(title)
    points = [(float(r["at"]), v * scale) for r in rows if (v := value(r)) is not None]
    if not rows:
        return Markup(  # noqa: S704 - numbers and the escaped title only
            f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}">'
            f"<title>{label}: no data</title>"
            f'<text class="empty" x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle">'
            "no data yet</text></svg>"
        )
    t0 = float(rows[0]["at"])
    t1 = max(now, float(rows[-1]["at"]))
    if t1 - t0 < 60:
        t0 = t1 - 60  # a minute at least, so a fresh start is not one stretched round
    limit = threshold * scale if threshold is not None else None
    values = [v for _, v in points] + ([limit] if limit is not None else [])
    top = _nice_top(max(values) if values else 1.0)

    def x(t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (t - t0) / (t1 - t0)

    def y(v: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * min(max(v, 0.0), top) / top

    latest = points[-1][1] if points else None
    summary = f"latest {_fmt(latest, unit)}" if latest is not None else "no reading now"
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}">',
        f"<title>{label}: {escape(summary)}, over {escape(duration(t1 - t0))}</title>",
    ]
    for band in bands:
        if band.end < t0 or band.start > t1:
            continue
        a, b = x(max(band.start, t0)), x(min(band.end, t1))
        parts.append(
            f'<rect class="band band-{escape(band.kind)}" x="{a:.1f}" y="{TOP}" width="{max(b - a, 2):.1f}" '
            f'height="{HEIGHT - TOP - BOTTOM}"><title>{escape(band.label)}</title></rect>'
        )
    # Value axis: 0, half and the top, in the reading's unit.
    for v in (0.0, top / 2, top):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="axis" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(v, unit))}</text>"
        )
    # Time axis: the real span, start to now.
    for t, anchor in ((t0, "start"), ((t0 + t1) / 2, "middle"), (t1, "end")):
        parts.append(
            f'<text class="axis" x="{x(t):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
            f"{escape(clock(t, now).replace(' UTC', ''))}</text>"
        )
    if limit is not None:
        parts.append(
            f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
            f'y1="{y(limit):.1f}" y2="{y(limit):.1f}">'
            f"<title>threshold {escape(_fmt(limit, unit))}</title></line>"
        )
    # The line breaks where a round had no reading.
    segment: list[str] = []
    for r in rows:
        v = value(r)
        if v is None:
            if segment:
                parts.append(_polyline(segment))
            segment = []
            continue
        segment.append(f"{x(float(r['at'])):.1f},{y(v * scale):.1f}")
    if segment:
        parts.append(_polyline(segment))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and escaped text only


def _polyline(points: list[str]) -> str:
    if len(points) == 1:
        cx, cy = points[0].split(",")
        dot = f'<circle class="series-dot" cx="{cx}" cy="{cy}" r="2"/>'
        return dot + f'<polyline class="series" points="{points[0]}"/>'
    return f'<polyline class="series" points="{" ".join(points)}"/>'
