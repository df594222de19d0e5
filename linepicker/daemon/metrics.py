"""Prometheus metrics of a running daemon, read from its live state at scrape time.

A collector rather than Gauge objects updated by the daemon, so a line removed
by a config reload disappears from the exposition instead of lingering with its
last value. Its own CollectorRegistry keeps it apart from anything else in the
process (tests run several daemons in one interpreter).

Latency per phase is exported as gauges of the latest round's medians, not as
histograms: a round is already a small batch of samples, its median is what the
page shows, and Prometheus scraping several vantage points compares them with
plain `max by (line)` or `avg_over_time`. The window's p50/p95 time to first
byte, which the policy judges by, is a summary beside them: its quantiles slide
with the policy window (as a client library's summary with a max age does) and
its _sum/_count are counters since start, so `promtool check metrics` accepts it
and `rate(_sum)/rate(_count)` gives a true mean.

Every series about a line, and every per-relay counter and gauge, carries a
`relay` label: one daemon serves every relay, and two relays may both have a `main`.

The process collector adds the usual `process_*` series (memory, CPU, open
files), so a daemon that leaks shows it on the same dashboard.

The gateway's real requests are the exception: they come one by one, so they
are counted as they happen (GatewayMetrics), with a ttfb histogram per line.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from ..probe.phases import PHASES
from ..traffic import Attempt
from .live import FULL, RECHECK, WATCH, LiveState

TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

WINDOW_QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"))


class LiveCollector:
    def __init__(self, lives: list[LiveState]):
        self.lives = lives  # one per relay; the daemon changes the list in place on reload

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("linepicker_line_up", "1 if the line is up by rise/fall, else 0.", labels=["relay", "line"])
        eligible = GaugeMetricFamily("linepicker_line_eligible", "1 if the policy may choose the line now, else 0.", labels=["relay", "line"])
        chosen_gauge = GaugeMetricFamily("linepicker_line_chosen", "1 for the line in force, 0 for the others.", labels=["relay", "line"])
        ratio = GaugeMetricFamily("linepicker_line_success_ratio", "Share of successful samples in the policy window.", labels=["relay", "line"])
        window = SummaryMetricFamily(
            "linepicker_line_ttfb_window_seconds",
            "Time to first byte of successful samples: quantiles over the policy window, sum and count since the daemon started.",
            labels=["relay", "line"],
        )
        phases = GaugeMetricFamily(
            "linepicker_line_phase_seconds", "Median of each request phase in the latest round that probed the line.", labels=["relay", "line", "phase"]
        )
        chat_ok = GaugeMetricFamily(
            "linepicker_line_chat_ok", "1 if the latest chat probe in the window succeeded, else 0 (probe.chat only).", labels=["relay", "line", "model"]
        )
        ttft = GaugeMetricFamily(
            "linepicker_line_chat_ttft_seconds", "Time to first token of the latest chat probe, when it succeeded.", labels=["relay", "line", "model"]
        )
        speed = GaugeMetricFamily(
            "linepicker_line_chat_tokens_per_second", "Output tokens per second of the latest chat probe, when it succeeded.", labels=["relay", "line", "model"]
        )
        rounds = CounterMetricFamily("linepicker_rounds", "Probe rounds run by this daemon.", labels=["relay", "kind"])
        switches = CounterMetricFamily(
            "linepicker_switches", "Changes of the chosen line made by this daemon; the first choice ever is not one.", labels=["relay"]
        )
        interval = GaugeMetricFamily(
            "linepicker_probe_interval_seconds", "probe.interval: seconds between full rounds, to tell a late round from a stopped one.", labels=["relay"]
        )
        last_round = GaugeMetricFamily("linepicker_last_round_timestamp_seconds", "Unix time the latest round finished.", labels=["relay"])
        for live in list(self.lives):
            relay = live.config.relay
            status = live.status()
            chosen = status.choice.name if status.choice else None
            for view in live.views(status):
                name = view.status.line.name
                if (chat := view.status.chat) is not None:
                    chat_ok.add_metric([relay, name, chat.model], float(chat.success))
                    if chat.success and chat.ttft_ms is not None:
                        ttft.add_metric([relay, name, chat.model], chat.ttft_ms / 1000)
                    if chat.success and chat.tokens_per_s is not None:
                        speed.add_metric([relay, name, chat.model], chat.tokens_per_s)
                stats = view.status.stats
                up.add_metric([relay, name], float(view.health.up))
                eligible.add_metric([relay, name], float(view.status.judgement.eligible))
                chosen_gauge.add_metric([relay, name], float(name == chosen))
                if stats.success_rate is not None:
                    ratio.add_metric([relay, name], stats.success_rate)
                for quantile, field in WINDOW_QUANTILES:
                    if (value := getattr(stats, field)) is not None:
                        window.add_sample(window.name, {"relay": relay, "line": name, "quantile": quantile}, value / 1000)
                window.add_metric([relay, name], live.ttfb_count[name], live.ttfb_sum_ms[name] / 1000)
                for phase in PHASES:
                    value = getattr(view.phases, phase) if view.phases else None
                    if value is not None:
                        phases.add_metric([relay, name, phase.removesuffix("_ms")], value / 1000)
            rounds.add_metric([relay, "full"], live.rounds[FULL])
            rounds.add_metric([relay, "recheck"], live.rounds[RECHECK])
            rounds.add_metric([relay, "watch"], live.rounds[WATCH])
            switches.add_metric([relay], live.switches)
            interval.add_metric([relay], live.config.probe.interval)
            if live.last_round_at is not None:
                last_round.add_metric([relay], live.last_round_at)
        yield from (up, eligible, chosen_gauge, ratio, window, phases, chat_ok, ttft, speed, rounds, switches, interval)
        if last_round.samples:
            yield last_round
        skipped = GaugeMetricFamily("linepicker_gateway_line_skipped", "1 while the gateway skips the line (its circuit breaker is open).", labels=["relay", "line"])
        for live in list(self.lives):
            if live.breakers is not None:
                for line in live.config.active_lines:
                    skipped.add_metric([live.config.relay, line.name], float(live.skipped(line.name)))
        if skipped.samples:
            yield skipped


class GatewayMetrics:
    """Every relay's gateway requests, counted as they happen. Labels are relay and line names and outcomes
    only: never a path or a key. One for the daemon, so each series is registered once whatever the relays."""

    def __init__(self) -> None:
        self.requests = Counter(
            "linepicker_gateway_requests", "Attempts the gateway made on each line, by how they ended (the probes' outcomes).",
            ["relay", "line", "outcome"], registry=None,
        )
        self.failovers = Counter(
            "linepicker_gateway_failovers", "Requests moved to another line before any of the answer reached the client.",
            ["relay", "from_line", "to_line"], registry=None,
        )
        self.ttfb = Histogram(
            "linepicker_gateway_ttfb_seconds", "From a request sent to a line to the head of its answer.", ["relay", "line"],
            buckets=TTFB_BUCKETS, registry=None,
        )

    def observe(self, relay: str, attempt: Attempt) -> None:
        self.requests.labels(relay, attempt.line, attempt.outcome).inc()
        if attempt.previous is not None:
            self.failovers.labels(relay, attempt.previous, attempt.line).inc()
        if attempt.ttfb_ms is not None:
            self.ttfb.labels(relay, attempt.line).observe(attempt.ttfb_ms / 1000)


def registry(lives: list[LiveState] | LiveState, gateway: GatewayMetrics | None = None) -> CollectorRegistry:
    """Over every relay's live state (the daemon's list), or one relay's; with the gateways' counters when one serves."""
    registry = CollectorRegistry()
    registry.register(LiveCollector(lives if isinstance(lives, list) else [lives]))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    if gateway is not None:
        for metric in (gateway.requests, gateway.failovers, gateway.ttfb):
            registry.register(metric)
    return registry
