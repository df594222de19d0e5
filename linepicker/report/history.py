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
