"""Evidence from real requests: what the gateway records of each attempt, and a line's traffic over a window.

Kept apart from the gateway that produces it because the store keeps it and
the status page and policy read it, and the core never imports the daemon.
Traffic is not mixed with probe samples: a completion's time to its head
includes the model's work, so it would make the line that carries the traffic
look slower than lines that only answer probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .policy import percentile


@dataclass(frozen=True)
class Attempt:
    """One try of one request on one line: the evidence a gateway gives about that line.

    Never a body, a header value or a query string; `error` has every credential
    of the request scrubbed out.
    """

    line: str
    seq: int  # 1 for the first line tried for the request, 2 for the next...
    started_at: float  # unix time
    method: str
    path: str  # without the query, which may carry a key
    outcome: str  # the probes' vocabulary (ok, refused, not_api, model_error...), unfinished if the client left
    success: bool | None  # the line delivered the API's answer (any status); None: the client left first
    failover: bool = False  # this attempt failed and the request went on to another line
    previous: str | None = None  # the line tried just before, for failovers
    status: int | None = None
    error: str | None = None
    stream: bool = False  # the answer was an event stream
    request_bytes: int = 0
    upload_ms: float | None = None  # the request's head sent -> its body sent
    ttfb_ms: float | None = None  # request sent -> the answer's head
    ttft_ms: float | None = None  # request sent -> the first text of a stream
    total_ms: float | None = None
    tokens: int | None = None  # output tokens, when the stream carries the API's usage
    tokens_per_s: float | None = None
    reused: bool = False  # on a kept-alive connection
    tripped: bool = False  # this failure opened the line's circuit breaker


@dataclass(frozen=True)
class TrafficSummary:
    """One line's real requests over a window, as the status page shows them."""

    requests: int  # attempts with an outcome (a client that left first is not counted)
    failures: int  # attempts the line failed: it could not be reached, or answered with something not the API's
    failovers: int  # of those, the ones that went on to another line with the client none the wiser
    ttfb_p50_ms: float | None
    ttft_p50_ms: float | None  # of streams
    tokens_per_s: float | None  # median, of streams that carried usage
    last_outcome: str | None
    last_error: str | None
    last_at: float | None


def summarize(attempts: Iterable[Attempt]) -> TrafficSummary:
    """Fold a line's attempts, oldest first."""
    requests = failures = failovers = 0
    ttfb: list[float] = []
    ttft: list[float] = []
    speed: list[float] = []
    last: Attempt | None = None
    for attempt in attempts:
        last = attempt
        if attempt.success is None:
            continue
        requests += 1
        if not attempt.success:
            failures += 1
            failovers += attempt.failover
            continue
        if attempt.ttfb_ms is not None:
            ttfb.append(attempt.ttfb_ms)
        if attempt.ttft_ms is not None:
            ttft.append(attempt.ttft_ms)
        if attempt.tokens_per_s is not None:
            speed.append(attempt.tokens_per_s)
    return TrafficSummary(
        requests=requests,
        failures=failures,
        failovers=failovers,
        ttfb_p50_ms=percentile(ttfb, 0.5),
        ttft_p50_ms=percentile(ttft, 0.5),
        tokens_per_s=percentile(speed, 0.5),
        last_outcome=last.outcome if last else None,
        last_error=last.error if last else None,
        last_at=last.started_at if last else None,
    )
