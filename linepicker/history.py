"""How each line behaved over a period: the data behind `history` (terminal) and `report` (HTML).

Raw samples give the buckets their percentiles; where retention has already
rolled samples into hourly rows, those fill the buckets instead (see
chart.from_hours), so a 30-day view is not blank before the last week.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from . import chart
from .config import Config, Line
from .errors import ConfigError
from .store import Decision, Store


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
    def bucket_s(self) -> float:
        buckets = self.lines[0].series.buckets if self.lines else []
        return (self.until - self.since) / len(buckets) if buckets else 0.0


def history(config: Config, store: Store, span_s: float, names: Sequence[str] = (), buckets: int = chart.BUCKETS, now: float | None = None) -> History:
    unknown = [name for name in names if config.line(name) is None]
    if unknown:
        known = ", ".join(line.name for line in config.active_lines)
        raise ConfigError(f"no line named {unknown[0]!r} in {config.source} (lines: {known})")
    lines = [line for line in config.active_lines if not names or line.name in names]
    until = time.time() if now is None else now
    since = until - span_s
    ids = store.line_ids(lines)
    points = store.samples_since(ids, since)
    hours = store.hours_since(ids, since)
    return History(
        since=since,
        until=until,
        lines=[LineHistory(line, chart.series(points[line.name], until, span_s, buckets, hours[line.name])) for line in lines],
        decisions=list(reversed(store.decisions(limit=1000, since=since))),
    )


def span_text(seconds: float) -> str:
    """'24 h', '7 days', '10 min': how a person names a period."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= (2 * size if unit == "days" else size):
            value = seconds / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s"
