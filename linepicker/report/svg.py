"""A latency-over-time chart in the SmokePing spirit, as inline SVG built on the server.

Each time bucket shows the spread of its successful samples' time to first
byte as grey "smoke" (p10-p90 light, p25-p75 darker) and the median as a
tick coloured by the bucket's failure share, so a line that is fast but
lossy looks different from one that is slow but steady. Buckets where every
sample failed are a pale red column, and any failure marks the strip under
the plot. The scale ignores a lone spike, which is marked at the top edge
instead. No script and no external resource: the page works offline.
"""

from __future__ import annotations

import html
import math
import time
from typing import Callable

from ..words import counted
from .series import Bucket, Series, robust_top

WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, PLOT_BOTTOM = 52, 712, 8, 132  # LEFT leaves room for the widest y label, "800 ms"
STRIP = (136, 142)  # the failure strip under the plot
LOSS_COLOURS = ((0.0, "#15803d", "no failures"), (0.2, "#2563eb", "under 20% failed"), (0.5, "#9333ea", "under 50% failed"), (1.01, "#dc2626", "half or more failed"))
NICE = {1: 5, 1.5: 3, 2: 4, 3: 3, 4: 4, 5: 5, 6: 3, 8: 4}  # axis maxima (× 10^k) and how many gridlines split them into round values
MAX_TICKS = 8
LABEL_CHAR_PX = 6.0  # a tick label's width per character at its 10 px font, a little generous
TICK_STEPS_S = (60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


def loss_colour(share: float) -> str:
    return next((colour for limit, colour, _ in LOSS_COLOURS if share <= limit), LOSS_COLOURS[-1][1])


def _ceiling(value: float) -> float:
    """A round axis maximum at or above `value`, one of NICE × 10^k, at least 10 ms: fine enough
    steps that data a little over 10 s is drawn on a 15 s axis, not squeezed under a 20 s one."""
    power = 10.0
    while True:
        for factor in NICE:
            if power * factor >= value:
                return power * factor
        power *= 10


def y_scale(buckets: list[Bucket]) -> float:
    """The axis maximum: robust to outliers (series.robust_top over each bucket's top of the smoke),
    so a lone spike is marked at the edge instead of flattening everything else."""
    tops = [max(b.p90, b.p50) for b in buckets if b.successes]
    return _ceiling(max(robust_top(tops), 10.0) * 1.1)


def svg(data: Series, label: str, end_label: str = "now") -> str:
    """The chart for one line; `label` names it for screen readers. `end_label` names the right edge:
    "now" on a live page, the end's date and time in a file read later."""
    y_max = y_scale(data.buckets)
    step = (RIGHT - LEFT) / len(data.buckets)
    when = "%H:%M" if data.span <= 6 * 3600 else "%b %d %H:%M"

    def y(ms: float) -> float:
        return PLOT_BOTTOM - min(ms, y_max) / y_max * (PLOT_BOTTOM - TOP)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{PLOT_BOTTOM - TOP}" class="plot"/>',
    ]
    parts += _y_axis(y_max, y)
    parts += _x_axis(data.start, data.span, end_label)
    parts.append(f'<rect x="{LEFT}" y="{STRIP[0]}" width="{RIGHT - LEFT}" height="{STRIP[1] - STRIP[0]}" class="strip"/>')
    for index, bucket in enumerate(data.buckets):
        if bucket.samples:
            parts.append(_bucket(bucket, LEFT + index * step, max(step, 2.0), y, y_max, when))
    parts.append("</svg>")
    return "".join(parts)


def _bucket(bucket: Bucket, x: float, width: float, y: Callable[[float], float], y_max: float, when_format: str) -> str:
    when = time.strftime(when_format, time.localtime(bucket.start))
    items = []
    if not bucket.successes:
        items.append(f'<rect x="{x:.1f}" y="{TOP}" width="{width:.1f}" height="{PLOT_BOTTOM - TOP}" class="dead"/>')
        summary = f"{when}: all {counted(bucket.samples, 'sample')} failed"
    else:
        items.append(_band(x, width, y(bucket.p90), y(bucket.p10), "smoke-outer"))
        items.append(_band(x, width, y(bucket.p75), y(bucket.p25), "smoke-inner"))
        colour = loss_colour(bucket.failed_share)
        if bucket.p50 > y_max:
            middle = x + width / 2
            items.append(f'<path d="M{middle - 4:.1f} {TOP + 8} L{middle:.1f} {TOP + 1} L{middle + 4:.1f} {TOP + 8} Z" class="over" fill="{colour}"/>')
        else:
            items.append(f'<rect x="{x:.1f}" y="{y(bucket.p50) - 1.5:.1f}" width="{width:.1f}" height="3" fill="{colour}"/>')
        above = f", above the {_ms_label(y_max)} scale" if bucket.p50 > y_max else ""
        spread = f"min {bucket.p10:.0f}, p95 {bucket.p90:.0f}, hourly roll-ups" if bucket.rolled_up else f"p10 {bucket.p10:.0f}, p90 {bucket.p90:.0f}"
        summary = f"{when}: median {bucket.p50:.0f} ms{above} ({spread}), {counted(bucket.samples, 'sample')}, {bucket.failures} failed"
    if bucket.failures:
        opacity = 0.35 + 0.65 * bucket.failed_share
        items.append(f'<rect x="{x:.1f}" y="{STRIP[0]}" width="{width:.1f}" height="{STRIP[1] - STRIP[0]}" fill="#dc2626" fill-opacity="{opacity:.2f}"/>')
    return f"<g><title>{html.escape(summary)}</title>{''.join(items)}</g>"


def _band(x: float, width: float, top: float, bottom: float, css: str) -> str:
    return f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{max(bottom - top, 1):.1f}" class="{css}"/>'


def _ms_label(value: float) -> str:
    """At most six characters whatever the scale: "800 ms", "1.5 s", "20 s"."""
    return f"{value:g} ms" if value < 1000 else f"{value / 1000:g} s"


def _y_axis(y_max: float, y: Callable[[float], float]) -> list[str]:
    """Gridlines on round values: NICE says how many for each kind of maximum."""
    parts = []
    count = NICE[y_max / 10 ** math.floor(math.log10(y_max))]
    for index in range(1, count + 1):
        value = y_max * index / count
        pos = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{RIGHT}" y1="{pos:.1f}" y2="{pos:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{pos + 3.5:.1f}" class="tick" text-anchor="end">{_ms_label(value)}</text>')
    parts.append(f'<text x="{LEFT - 5}" y="{PLOT_BOTTOM + 3.5}" class="tick" text-anchor="end">0</text>')
    return parts


def time_ticks(start: float, span: float) -> list[tuple[float, str]]:
    """Wall-clock ticks for any span: the shortest step from TICK_STEPS_S giving at most MAX_TICKS,
    on multiples of it since local midnight (whole days: local midnights); midnights show the date."""
    step = next((s for s in TICK_STEPS_S if span / s <= MAX_TICKS), TICK_STEPS_S[-1])
    local = time.localtime(start)
    midnight = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    if step < 86400:
        tick = midnight + math.ceil((start - midnight) / step) * step
    else:
        tick = midnight if midnight >= start else _next_midnight(midnight)
    ticks = []
    while tick < start + span:
        clock = time.localtime(tick)
        at_midnight = clock.tm_hour == 0 and clock.tm_min == 0
        ticks.append((tick, time.strftime("%b %d" if at_midnight and span > 6 * 3600 else "%H:%M", clock)))
        tick = tick + step if step < 86400 else _next_midnight(tick, step // 86400)
    return ticks


def _next_midnight(midnight: float, days: int = 1) -> float:
    """Local midnight `days` later, whatever daylight saving does in between."""
    later = time.localtime(midnight + days * 86400 + 3 * 3600)
    return time.mktime((later.tm_year, later.tm_mon, later.tm_mday, 0, 0, 0, 0, 0, -1))


def _x_axis(start: float, span: float, end_label: str) -> list[str]:
    parts = []
    label_y = HEIGHT - 14
    for tick, text in time_ticks(start, span):
        x = LEFT + (tick - start) / span * (RIGHT - LEFT)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{PLOT_BOTTOM}" class="grid"/>')
        half = LABEL_CHAR_PX * len(text) / 2
        if x - half > LEFT - 20 and x + half < RIGHT - LABEL_CHAR_PX * len(end_label) - 10:  # clear of the end label
            parts.append(f'<text x="{x:.1f}" y="{label_y}" class="tick" text-anchor="middle">{text}</text>')
    parts.append(f'<text x="{RIGHT}" y="{label_y}" class="tick" text-anchor="end">{html.escape(end_label)}</text>')
    return parts
