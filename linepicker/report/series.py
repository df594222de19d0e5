"""Samples over time grouped into equal buckets: the data every chart and sparkline draws.

Separate from the drawing so the terminal's sparklines, the SVG charts and the
JSON of `history` share one bucketing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..policy import percentile
from ..store import HourRow


@dataclass(frozen=True)
class Bucket:
    start: float
    samples: int  # finished samples
    failures: int
    p10: float  # of the successful samples' ttfb, ms; meaningless when successes == 0
    p25: float
    p50: float
    p75: float
    p90: float
    rolled_up: bool = False  # only hourly roll-ups were left: see from_hours

    @property
    def successes(self) -> int:
        return self.samples - self.failures

    @property
    def failed_share(self) -> float:
        return self.failures / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class Series:
    start: float
    span: float
    buckets: list[Bucket]


def series(
    points: Sequence[tuple[float, bool, float | None]],
    now: float,
    span: float,
    count: int,
    hours: Sequence[HourRow] = (),
) -> Series:
    """Group (started_at, success, ttfb_ms) points into `count` equal buckets ending now.

    A bucket with no raw sample falls back to the hourly roll-ups whose hour
    starts in it, so a long history still shows where retention removed the samples.
    """
    width = span / count
    start = now - span
    groups: list[list[tuple[bool, float | None]]] = [[] for _ in range(count)]
    hourly: list[list[HourRow]] = [[] for _ in range(count)]
    for at, success, ttfb in points:
        index = int((at - start) // width)
        if 0 <= index < count:
            groups[index].append((success, ttfb))
    for row in hours:
        index = int((row.hour - start) // width)
        if 0 <= index < count:
            hourly[index].append(row)
    result = []
    for index, group in enumerate(groups):
        at = start + index * width
        if not group and hourly[index]:
            result.append(from_hours(at, hourly[index]))
            continue
        ok = [ttfb for success, ttfb in group if success and ttfb is not None]
        quantiles = [percentile(ok, q) or 0.0 for q in (0.1, 0.25, 0.5, 0.75, 0.9)]
        result.append(Bucket(at, len(group), len(group) - len(ok), *quantiles))
    return Series(start, span, result)


def from_hours(start: float, rows: Sequence[HourRow]) -> Bucket:
    """Counts add up exactly; percentiles cannot be re-derived from roll-ups, so the median is the
    successes-weighted mean of the hourly medians and the spread runs from the lowest minimum to
    the highest p95 (no inner band)."""
    samples = sum(row.samples for row in rows)
    successes = sum(row.successes for row in rows)
    weighted = [(row.p50_ms, row.successes) for row in rows if row.p50_ms is not None and row.successes]
    p50 = sum(v * n for v, n in weighted) / sum(n for _, n in weighted) if weighted else 0.0
    low = min((row.min_ms for row in rows if row.min_ms is not None), default=p50)
    high = max((row.p95_ms for row in rows if row.p95_ms is not None), default=p50)
    return Bucket(start, samples, samples - successes, low, p50, p50, p50, high, rolled_up=True)


OUTLIER_GAP = 3.0  # a value this many times the next one down stands alone
OUTLIER_SHARE = 0.05  # at most this share of the values is left above a scale


def robust_top(values: Sequence[float]) -> float:
    """The largest value worth scaling a chart to, so one 2.4 s spike cannot flatten a 40 → 240 ms slowdown.

    The highest values are left out (to be marked at the top edge) only when they stand more
    than OUTLIER_GAP times above everything below them, and never more than OUTLIER_SHARE of
    them: a plateau or a steady climb has no such gap and sets the scale as it should.
    """
    ordered = sorted(values, reverse=True)
    if not ordered:
        return 0.0
    most = int(len(ordered) * OUTLIER_SHARE) or (1 if len(ordered) >= 4 else 0)
    for kept in range(1, most + 1):
        if ordered[kept] > 0 and ordered[kept - 1] > OUTLIER_GAP * ordered[kept]:
            return ordered[kept]
    return ordered[0]


def span_text(seconds: float) -> str:
    """'24 h', '7 days', '10 min': how a person names a period."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= (2 * size if unit == "days" else size):
            value = seconds / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s"
