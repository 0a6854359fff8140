"""The overview's chart: the last hour as stacked bars, an inline SVG drawn here.

Drawn on the server so the page needs no script to show it; the figure's text
alternative is its <title>/<desc> and the table the page prints beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from saga.adapters.sql.console_reads import Bucket

SERIES = (
    ("started", "#4c6ef5"),
    ("completed", "#2f9e44"),
    ("compensated", "#f08c00"),
    ("failed", "#e03131"),
)
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 220, 40, 28, 12


@dataclass(frozen=True)
class Chart:
    svg: str
    summary: str


def _value(bucket: Bucket, series: str) -> int:
    return bucket.started if series == "started" else bucket.ended.get(series, 0)


def last_hour(buckets: list[Bucket]) -> Chart:
    totals = {name: sum(_value(b, name) for b in buckets) for name, _ in SERIES}
    summary = "In the last hour: " + ", ".join(f"{n} {name}" for name, n in totals.items()) + "."
    highest = max([max(_value(b, n) for n, _ in SERIES) for b in buckets] + [1])
    # Four whole-number steps on the axis.
    peak = -(-highest // 4) * 4
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(buckets))
    bar = max(2.0, (slot - 6) / len(SERIES))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Sagas started and finished per 5 minutes, last hour</title>',
        f'<desc id="chart-desc">{escape(summary)}</desc>',
    ]
    for i in range(5):
        y = TOP + plot_h * i / 4
        label = peak * (4 - i) // 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{label}</text>'
        )
    for i, b in enumerate(buckets):
        x0 = LEFT + i * slot + 3
        for j, (name, color) in enumerate(SERIES):
            v = _value(b, name)
            h = plot_h * v / peak
            parts.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar - 1:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{b.start:%H:%M} {name}: {v}</title></rect>'
            )
        if i % 2 == 0:
            parts.append(
                f'<text x="{x0 + slot / 2 - 3:.1f}" y="{HEIGHT - 8}" class="axis" '
                f'text-anchor="middle">{b.start:%H:%M}</text>'
            )
    parts.append("</svg>")
    return Chart("".join(parts), summary)
