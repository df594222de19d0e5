"""A latency-over-time chart in the SmokePing spirit, as inline SVG built on the server.

Each time bucket shows the spread of its successful samples' time to first
byte as grey "smoke" (p10-p90 light, p25-p75 darker) and the median as a
tick coloured by the bucket's failure share, so a line that is fast but
lossy looks different from one that is slow but steady. Buckets where every
sample failed are a pale red column, and any failure marks the strip under
the plot. No script and no external resource: the page works offline.
"""

from __future__ import annotations

import html
import time
from typing import Callable

from .series import Bucket, Series

WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, PLOT_BOTTOM = 46, 712, 8, 132
STRIP = (136, 142)  # the failure strip under the plot
LOSS_COLOURS = ((0.0, "#15803d", "no failures"), (0.2, "#2563eb", "under 20% failed"), (0.5, "#9333ea", "under 50% failed"), (1.01, "#dc2626", "half or more failed"))


def loss_colour(share: float) -> str:
    return next((colour for limit, colour, _ in LOSS_COLOURS if share <= limit), LOSS_COLOURS[-1][1])


def _ceiling(value: float) -> float:
    """A round axis maximum: 1, 2 or 5 times a power of ten, at least 10 ms."""
    step = 10.0
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def svg(data: Series, label: str) -> str:
    """The chart for one line; `label` names it for screen readers."""
    tops = [b.p90 for b in data.buckets if b.successes]
    y_max = _ceiling(max(tops, default=10.0) * 1.1)
    step = (RIGHT - LEFT) / len(data.buckets)

    def y(ms: float) -> float:
        return PLOT_BOTTOM - min(ms, y_max) / y_max * (PLOT_BOTTOM - TOP)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{PLOT_BOTTOM - TOP}" class="plot"/>',
    ]
    parts += _y_axis(y_max, y)
    parts += _x_axis(data.start, data.span)
    parts.append(f'<rect x="{LEFT}" y="{STRIP[0]}" width="{RIGHT - LEFT}" height="{STRIP[1] - STRIP[0]}" class="strip"/>')
    for index, bucket in enumerate(data.buckets):
        if bucket.samples:
            parts.append(_bucket(bucket, LEFT + index * step, max(step, 2.0), y))
    parts.append("</svg>")
    return "".join(parts)


def _bucket(bucket: Bucket, x: float, width: float, y: Callable[[float], float]) -> str:
    when = time.strftime("%H:%M", time.localtime(bucket.start))
    items = []
    if not bucket.successes:
        items.append(f'<rect x="{x:.1f}" y="{TOP}" width="{width:.1f}" height="{PLOT_BOTTOM - TOP}" class="dead"/>')
        summary = f"{when}: all {bucket.samples} samples failed"
    else:
        items.append(_band(x, width, y(bucket.p90), y(bucket.p10), "smoke-outer"))
        items.append(_band(x, width, y(bucket.p75), y(bucket.p25), "smoke-inner"))
        items.append(f'<rect x="{x:.1f}" y="{y(bucket.p50) - 1.5:.1f}" width="{width:.1f}" height="3" fill="{loss_colour(bucket.failed_share)}"/>')
        spread = f"min {bucket.p10:.0f}, p95 {bucket.p90:.0f}, hourly roll-ups" if bucket.rolled_up else f"p10 {bucket.p10:.0f}, p90 {bucket.p90:.0f}"
        summary = f"{when}: median {bucket.p50:.0f} ms ({spread}), {bucket.samples} samples, {bucket.failures} failed"
    if bucket.failures:
        opacity = 0.35 + 0.65 * bucket.failed_share
        items.append(f'<rect x="{x:.1f}" y="{STRIP[0]}" width="{width:.1f}" height="{STRIP[1] - STRIP[0]}" fill="#dc2626" fill-opacity="{opacity:.2f}"/>')
    return f"<g><title>{html.escape(summary)}</title>{''.join(items)}</g>"


def _band(x: float, width: float, top: float, bottom: float, css: str) -> str:
    return f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{max(bottom - top, 1):.1f}" class="{css}"/>'


def _y_axis(y_max: float, y: Callable[[float], float]) -> list[str]:
    parts = []
    for fraction in (0.25, 0.5, 0.75, 1.0):
        value = y_max * fraction
        pos = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{RIGHT}" y1="{pos:.1f}" y2="{pos:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{pos + 3.5:.1f}" class="tick" text-anchor="end">{value:g} ms</text>')
    parts.append(f'<text x="{LEFT - 5}" y="{PLOT_BOTTOM + 3.5}" class="tick" text-anchor="end">0</text>')
    return parts


TICK_STEPS_H = (1, 3, 6, 12, 24, 48, 168)


def _x_axis(start: float, span: float) -> list[str]:
    """Gridlines on whole local hours or days (at most eight), so times read like a wall clock."""
    parts = []
    step_h = next((h for h in TICK_STEPS_H if span / (h * 3600) <= 8), TICK_STEPS_H[-1])
    label = "%H:%M" if step_h < 24 else "%m-%d"
    local = time.localtime(start)
    tick = start - (local.tm_min * 60 + local.tm_sec) + 3600  # the next whole local hour
    while time.localtime(tick).tm_hour % min(step_h, 24):
        tick += 3600
    label_y = HEIGHT - 14
    while tick < start + span:
        x = LEFT + (tick - start) / span * (RIGHT - LEFT)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{PLOT_BOTTOM}" class="grid"/>')
        if x < RIGHT - 36:
            parts.append(f'<text x="{x:.1f}" y="{label_y}" class="tick" text-anchor="middle">{time.strftime(label, time.localtime(tick))}</text>')
        tick += step_h * 3600
    parts.append(f'<text x="{RIGHT}" y="{label_y}" class="tick" text-anchor="end">now</text>')
    return parts
