"""What a running daemon knows beyond the database: rise/fall health, the last round's phases, counters.

The daemon is the only writer; the web side reads it on the same event loop,
so no lock is needed. Everything a person or Prometheus sees is derived here,
so the page, /api/status and /metrics cannot disagree with each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator

from .. import picker, policy
from ..config import Config, Line
from ..policy import LineStats, Verdict
from ..probe.phases import Phases, median_phases
from ..probe.round import LineRun
from ..store import PARTIAL_ROUND_KINDS, Store
from ..traffic import TrafficSummary

if TYPE_CHECKING:
    from .gateway import Breakers

FULL = "daemon"  # round kinds, as recorded in the rounds table
RECHECK, WATCH = PARTIAL_ROUND_KINDS  # lines not fully healthy; the chosen line alone, every probe.watch_interval


@dataclass(frozen=True)
class Health:
    """HAProxy-style rise/fall: a state flips only after enough consecutive rounds against it."""

    up: bool = True
    streak: int = 0  # consecutive rounds against the current state: failures while up, successes while down

    def after(self, good: bool, rise: int, fall: int) -> "Health":
        if good == self.up:
            return Health(self.up, 0)
        streak = self.streak + 1
        if streak >= (fall if self.up else rise):
            return Health(not self.up)
        return Health(self.up, streak)

    @property
    def steady(self) -> bool:
        """Fully healthy: up with no failure pending. Anything else is re-checked on the fast schedule."""
        return self.up and self.streak == 0

    def label(self, rise: int, fall: int) -> str:
        if self.up:
            return f"failing {self.streak}/{fall}" if self.streak else "up"
        return f"rising {self.streak}/{rise}" if self.streak else "down"


@dataclass(frozen=True)
class Transition:
    line: str
    up: bool  # the new state
    rounds: int  # consecutive rounds that made it flip
    last_error: str | None


@dataclass(frozen=True)
class LineTraffic:
    """A line's real requests through the gateway: the window's figures and its circuit breaker."""

    summary: TrafficSummary | None  # None: no request in the window
    breaker: str  # closed, open, half-open
    reopens_in: float | None  # seconds until an open line is tried again


@dataclass(frozen=True)
class LineView:
    """One line as the daemon sees it now: the policy's figures plus rise/fall and the last round."""

    status: picker.LineStatus
    health: Health
    state: str  # up, down, failing 1/3, rising 1/2
    phases: Phases | None  # medians of the latest round that probed the line
    traffic: LineTraffic | None = None  # None: the daemon serves no gateway


@dataclass
class LiveState:
    config: Config
    store: Store
    health: dict[str, Health] = field(default_factory=dict)
    phases: dict[str, Phases] = field(default_factory=dict)
    rounds: Counter[str] = field(default_factory=Counter)
    switches: int = 0
    ttfb_count: Counter[str] = field(default_factory=Counter)  # successful samples timed since start: a summary's _count
    ttfb_sum_ms: Counter[str] = field(default_factory=Counter)
    last_round_at: float | None = None  # unix time, for people and Prometheus
    last_full_round_at: float | None = None  # a round of every line: what makes the record whole
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.monotonic  # what staleness is measured on: a wall clock can be stepped
    last_round_tick: float | None = None  # `clock` when the latest round finished
    started_tick: float = field(default_factory=time.monotonic)
    breakers: Breakers | None = None  # the gateway's, while the daemon serves one
    order: tuple[Line, ...] = ()  # the lines in the policy's order, chosen first: where the gateway sends requests
    version: int = 0  # changes whenever what the page, /api/status or /metrics show may have changed
    rounds_probing: int = 0  # rounds with requests in flight (a watch round may run beside a full one)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()
        self.started_tick = self.clock()

    @property
    def probing(self) -> bool:
        """Requests are being timed: nothing heavy may run on the loop."""
        return self.rounds_probing > 0

    @contextlib.contextmanager
    def probing_round(self) -> Iterator[None]:
        """Mark a round's probing, so the HTTP side renders nothing while its requests are being timed."""
        self.rounds_probing += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.rounds_probing -= 1
            if not self.rounds_probing:
                self._idle.set()

    async def between_rounds(self) -> None:
        while self.probing:
            await self._idle.wait()

    def health_of(self, name: str) -> Health:
        return self.health.get(name, Health())

    def unsteady_lines(self, besides: str | None = None) -> tuple[Line, ...]:
        """Lines to re-check on the fast schedule: failing probes, or failing real requests (`besides` is watched apart)."""
        return tuple(
            line for line in self.config.active_lines
            if (not self.health_of(line.name).steady or self.skipped(line.name)) and line.name != besides
        )

    def record_is_whole(self, now: float) -> bool:
        """Whether a full round finished within the policy window. Until one has (at start, after a
        laptop slept longer than the window), the window may hold only the few lines a re-check
        probed, and a decision on those alone would be a guess."""
        last = self.last_full_round_at
        return last is not None and now - last <= self.config.policy.window

    def skipped(self, name: str) -> bool:
        """The gateway skips the line: its real requests kept failing."""
        return self.breakers is not None and self.breakers.state(name) == "open"

    def traffic_error(self, name: str) -> str | None:
        """Why real requests make a line ineligible, beside its probes: the same as a failing chat probe."""
        if not self.skipped(name):
            return None
        assert self.breakers is not None
        return f"real requests through the gateway keep failing (skipped for {self.breakers.reopens_in(name) or 0:.0f} s more)"

    def set_order(self, chosen: str | None, verdict: Verdict | None = None) -> None:
        """Chosen first, then the eligible lines by score, then the rest in config order: the gateway's failover order."""
        scores = {name: j.score for name, j in verdict.judgements.items() if j.eligible and j.score is not None} if verdict else {}
        lines = self.config.active_lines
        ranked = sorted(range(len(lines)), key=lambda i: (lines[i].name != chosen, lines[i].name not in scores, scores.get(lines[i].name, 0.0), i))
        self.order = tuple(lines[i] for i in ranked)

    def record(self, kind: str, runs: list[LineRun]) -> list[Transition]:
        """Fold a finished round into health and counters; returns the lines whose state flipped."""
        rise, fall = self.config.policy.rise, self.config.policy.fall
        flips = []
        for run in runs:
            before = self.health_of(run.line.name)
            after = before.after(picker.answered_in_round(run.samples), rise, fall)
            self.health[run.line.name] = after
            self.phases[run.line.name] = median_phases(run.samples)
            timed = [s.phases.ttfb_ms for s in run.samples if s.success and s.phases.ttfb_ms is not None]
            self.ttfb_count[run.line.name] += len(timed)
            self.ttfb_sum_ms[run.line.name] += sum(timed)
            if after.up != before.up:
                last_error = next((s.error for s in reversed(run.samples) if s.error), None)
                flips.append(Transition(run.line.name, after.up, rise if after.up else fall, last_error))
        self.rounds[kind] += 1
        self.last_round_at = time.time()
        self.last_round_tick = self.clock()
        if kind == FULL:
            self.last_full_round_at = self.last_round_at
        self.version += 1
        return flips

    def reconfigure(self, config: Config) -> None:
        """A reloaded config keeps the health of lines it still has; new lines start up."""
        names = {line.name for line in config.active_lines}
        self.health = {name: h for name, h in self.health.items() if name in names}
        self.phases = {name: p for name, p in self.phases.items() if name in names}
        if self.breakers is not None:
            self.breakers.forget(names)
        self.config = config
        self.version += 1

    def stats(self) -> list[LineStats]:
        """Window figures in config order, with `up` from rise/fall rather than the latest round alone."""
        config = self.config
        line_ids = self.store.line_ids(config.active_lines)
        window = self.store.window(line_ids, time.time() - config.policy.window)
        errors = picker.model_errors(config, self.store, line_ids)
        return [
            policy.summarize(line.name, window[line.name], config.policy, self.health_of(line.name).up, errors.get(line.name) or self.traffic_error(line.name))
            for line in config.active_lines
        ]

    def status(self) -> picker.Status:
        """picker.status, judged with the daemon's rise/fall verdicts."""
        report = picker.status(self.config, self.store)
        lines = []
        for entry in report.lines:
            stats = replace(entry.stats, up=self.health_of(entry.line.name).up, model_error=entry.stats.model_error or self.traffic_error(entry.line.name))
            lines.append(replace(entry, stats=stats, judgement=policy.judge(stats, self.config.policy)))
        return replace(report, lines=lines)

    def views(self, status: picker.Status) -> list[LineView]:
        rise, fall = self.config.policy.rise, self.config.policy.fall
        traffic = self.traffic()
        return [
            LineView(
                entry, self.health_of(entry.line.name), self.health_of(entry.line.name).label(rise, fall), self.phases.get(entry.line.name),
                traffic.get(entry.line.name),
            )
            for entry in status.lines
        ]

    def traffic(self) -> dict[str, LineTraffic]:
        """Each line's real requests over the policy window, while the daemon serves a gateway."""
        breakers = self.breakers
        if breakers is None:
            return {}
        line_ids = self.store.line_ids(self.config.active_lines)
        summaries = self.store.traffic_since(line_ids, time.time() - self.config.policy.window)
        return {
            name: LineTraffic(summaries.get(name), breakers.state(name), breakers.reopens_in(name))
            for name in line_ids
        }
