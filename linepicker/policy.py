"""Choose a line from its recent record, without flapping.

Pure functions over plain data: the same judgement serves a one-shot `pick`,
the daemon and the early stop of a round, and tests need no network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from .config import PolicySettings


@dataclass(frozen=True)
class LineStats:
    name: str
    samples: int  # finished samples in the window
    successes: int
    p50_ms: float | None  # of the successful samples' time to first byte
    p95_ms: float | None
    up: bool = True  # the caller's verdict on the latest evidence: a line that just died is not up
    model_error: str | None = None  # the latest chat probe failed: the API lists models but cannot answer

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.samples if self.samples else None


@dataclass(frozen=True)
class Judgement:
    score: float | None  # lower is better; None when not eligible
    eligible: bool
    why_not: str | None  # why a line is not eligible, in words


@dataclass(frozen=True)
class Verdict:
    chosen: str | None  # None: nothing eligible, the previous choice stays in force
    previous: str | None
    changed: bool
    reason: str
    judgements: dict[str, Judgement]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, so p50 of two values is their mean."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(name: str, outcomes: Iterable[tuple[bool, float | None]], up: bool = True, model_error: str | None = None) -> LineStats:
    """Fold (success, ttfb_ms) pairs into the figures the policy judges by."""
    total = 0
    latencies = []
    for success, ttfb in outcomes:
        total += 1
        if success and ttfb is not None:
            latencies.append(ttfb)
    return LineStats(
        name=name,
        samples=total,
        successes=len(latencies),
        p50_ms=percentile(latencies, 0.5),
        p95_ms=percentile(latencies, 0.95),
        up=up,
        model_error=model_error,
    )


def judge(stats: LineStats, settings: PolicySettings) -> Judgement:
    """Score = median latency plus a penalty per failed share, so a fast but flaky line loses to a steady one."""
    rate = stats.success_rate
    if rate is None or stats.p50_ms is None:
        return Judgement(None, False, "no successful sample in the window")
    if not stats.up:
        return Judgement(None, False, "down: failed its latest probes")
    if stats.model_error:
        return Judgement(None, False, f"model calls fail: {stats.model_error}")
    if rate < settings.min_success_rate:
        return Judgement(None, False, f"success {rate:.0%} is below the minimum {settings.min_success_rate:.0%}")
    return Judgement(stats.p50_ms + (1 - rate) * settings.failure_penalty_ms, True, None)


def decide(
    stats: Sequence[LineStats],
    current: str | None,
    settings: PolicySettings,
    pinned: str | None = None,
) -> Verdict:
    """`stats` come in config order, which breaks ties."""
    judgements = {s.name: judge(s, settings) for s in stats}
    if current not in judgements:
        current = None
    if pinned is not None and pinned in judgements:
        note = "" if judgements[pinned].eligible else f" (warning: {judgements[pinned].why_not})"
        return Verdict(pinned, current, pinned != current, f"pinned by hand{note}", judgements)

    eligible = [s.name for s in stats if judgements[s.name].eligible]
    if not eligible:
        keep = f"; keeping {current}" if current else ""
        return Verdict(None, current, False, f"no line is eligible{keep}", judgements)
    best = min(eligible, key=lambda name: judgements[name].score or 0.0)
    best_score = judgements[best].score or 0.0

    if current is None:
        return Verdict(best, None, True, f"{best} has the best score ({best_score:.1f} ms)", judgements)
    if not judgements[current].eligible:
        return Verdict(best, current, True, f"{current} is not eligible ({judgements[current].why_not}); {best} is the best", judgements)
    if best == current:
        return Verdict(current, current, False, f"{current} is still the best ({best_score:.1f} ms)", judgements)

    current_score = judgements[current].score or 0.0
    gain_ms = current_score - best_score
    gain = gain_ms / current_score if current_score > 0 else 0.0
    figures = f"{best} scores {best_score:.1f} ms against {current_score:.1f} ms for {current}, {gain:.0%} ({gain_ms:.1f} ms) better"
    if gain >= settings.margin_relative and gain_ms >= settings.margin_ms:
        return Verdict(best, current, True, figures, judgements)
    needed = f"needs {settings.margin_relative:.0%} and {settings.margin_ms:g} ms"
    return Verdict(current, current, False, f"keeping {current}: {figures}, {needed}", judgements)
