"""Server-rendered SVG line charts of stored readings (no script, no external library)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 600, 120, 4


def line_chart(
    title: str,
    rows: Sequence[dict[str, Any]],
    value: Callable[[dict[str, Any]], float | None],
    *,
    threshold: float | None = None,
    unit: str = "",
) -> Markup:
    """An accessible SVG line of ``value(row)`` over each row's ``at``, with a threshold line."""
    points = [(float(r["at"]), v) for r in rows if (v := value(r)) is not None]
    label = escape(title)
    if not points:
        # Only numbers and the escaped title are interpolated.
        return Markup(  # noqa: S704
            f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" aria-labelledby="t">'
            f"<title>{label}: no data</title>"
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle">no data</text></svg>'
        )
    t0, t1 = points[0][0], points[-1][0]
    values = [v for _, v in points] + ([threshold] if threshold is not None else [])
    lo, hi = min(0.0, *values), max(values)
    hi = hi if hi > lo else lo + 1.0

    def xy(t: float, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - lo) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    last = points[-1][1]
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none">',
        f"<title>{label}: latest {last:.3g}{escape(unit)}, max {hi:.3g}{escape(unit)}</title>",
    ]
    if threshold is not None:
        y = xy(t0, threshold).split(",")[1]
        parts.append(f'<line class="threshold" x1="0" x2="{WIDTH}" y1="{y}" y2="{y}"/>')
    parts.append(f'<polyline class="series" points="{" ".join(xy(t, v) for t, v in points)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and the escaped title only
