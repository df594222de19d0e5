"""The phases of one request in milliseconds, and their medians over a round.

No aiohttp, asyncio or ssl: `status`, the report and the daemon's metrics read
phases back without importing the prober (asyncio, ssl, aiohttp cost ≈ 40 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..policy import percentile

PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "transfer_ms", "total_ms")


@dataclass(frozen=True)
class Phases:
    """Milliseconds per phase; None where the sample never got there (or, for dns, no lookup was needed)."""

    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    transfer_ms: float | None = None
    total_ms: float | None = None


class Timed(Protocol):
    phases: Phases


def median_phases(samples: Sequence[Timed]) -> Phases:
    """Median of each phase over the samples that reached it."""
    values = {}
    for name in PHASES:
        reached = [value for s in samples if (value := getattr(s.phases, name)) is not None]
        values[name] = round(percentile(reached, 0.5), 3) if reached else None  # type: ignore[arg-type]
    return Phases(**values)
