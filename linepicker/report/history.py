"""How each line behaved over a period: the data behind `history` (terminal) and `report` (HTML).

Raw samples give the buckets their percentiles; where retention has already
rolled samples into hourly rows, those fill the buckets instead (see
series.from_hours), so a 30-day view is not blank before the last week.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from ..config import Config, Line
from ..errors import ConfigError
from ..store import Decision, Store
from . import series as chart


SPANS = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 24 * 3600.0, "7d": 7 * 86400.0}  # the page's ?span= and the fitted defaults
FIT_SLACK = 1.1  # data a tenth older than a span still fits it: an hour and five minutes is "the last hour"
MOST_BUCKETS = 144


@dataclass(frozen=True)
class LineHistory:
    line: Line
    series: chart.Series


@dataclass(frozen=True)
class History:
    since: float
    until: float
    lines: list[LineHistory]
    decisions: list[Decision]  # oldest first

    @property
    def span_s(self) -> float:
        return self.until - self.since

    @property
    def bucket_s(self) -> float:
        buckets = self.lines[0].series.buckets if self.lines else []
        return (self.until - self.since) / len(buckets) if buckets else 0.0


def fitting_span(oldest: float | None, now: float, longest: float = SPANS["7d"]) -> float:
    """The smallest of SPANS (up to `longest`) that holds everything since `oldest`, so a daemon's
    first 18 minutes fill an hour's chart instead of three pixels of a day's."""
    age = 0.0 if oldest is None else now - oldest
    choices = sorted(span for span in SPANS.values() if span <= longest)
    return next((span for span in choices if age <= span * FIT_SLACK), choices[-1])


def bucket_count(span_s: float, interval_s: float, most: int = MOST_BUCKETS) -> int:
    """Buckets at least two probe intervals wide, so each holds a round or two and a short span is
    not a comb of gaps; at most `most` (a day in ten-minute buckets)."""
    return max(12, min(most, int(span_s // (2 * interval_s))))


def history(
    config: Config,
    store: Store,
    span_s: float | None,
    names: Sequence[str] = (),
    buckets: int | None = None,
    now: float | None = None,
    longest: float = SPANS["7d"],
    most: int = MOST_BUCKETS,
) -> History:
    """Each line over `span_s`, or with None over the smallest standard span that holds the data
    (up to `longest`); `buckets` fixes the count, else bucket_count decides, up to `most`."""
    unknown = [name for name in names if config.line(name) is None]
    if unknown:
        known = ", ".join(line.name for line in config.active_lines)
        raise ConfigError(f"no line named {unknown[0]!r} in {config.source} (lines: {known})")
    lines = [line for line in config.active_lines if not names or line.name in names]
    store = store.scoped(config.relay)
    until = time.time() if now is None else now
    ids = store.line_ids(lines)
    points = store.samples_since(ids, until - (span_s or longest))
    hours = store.hours_since(ids, until - (span_s or longest))
    if span_s is None:
        starts = [found[0][0] for found in points.values() if found] + [rows[0].hour for rows in hours.values() if rows]
        span_s = fitting_span(min(starts, default=None), until, longest)
    count = buckets or bucket_count(span_s, config.probe.interval, most)
    since = until - span_s
    return History(
        since=since,
        until=until,
        lines=[LineHistory(line, chart.series(points[line.name], until, span_s, count, hours[line.name])) for line in lines],
        decisions=list(reversed(store.decisions(limit=1000, since=since))),
    )
