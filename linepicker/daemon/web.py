"""The daemon's HTTP side: the status page, /api/status, /metrics and /healthz.

Served by aiohttp.web on the daemon's own event loop, so every answer reads
the same live state the scheduler writes, with no lock and no copy: one
LiveState per relay, in a list the daemon changes in place when a reload adds
or removes relays. It binds loopback by default: the page shows the relay's
URLs and the choice, which is nobody else's business.
"""

from __future__ import annotations

import logging
import time

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..clientenv import DEFAULT_RELAY
from ..config import Listen
from ..errors import ConfigError
from ..report import documents, page, series, svg
from ..report.history import SPANS, History, history
from . import guard, listener
from .live import LineTraffic, LiveState
from .snapshot import Snapshot

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

log = logging.getLogger("linepicker")

PAGE_REFRESH_S = 30
ANSWER_MAX_AGE_S = 2.0  # /api/status and /metrics: the gateway's counters move between rounds; `top` asks every 2 s


async def start(lives: list[LiveState], listen: Listen, gateway: GatewayMetrics | None = None) -> web.AppRunner:
    """Bind and serve; a port already in use is a one-line error, not a traceback."""
    if not listen.loopback:
        log.warning("listening on %s, not loopback: anyone who can reach it sees your lines and choice", listen.host)
    runner = web.AppRunner(app(lives, listen, gateway), access_log=None, **listener.RUNNER_OPTIONS)
    await runner.setup()
    try:
        await listener.start_site(runner, listen)
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"--listen {listen.host}:{listen.port}: cannot bind: {exc.strerror or exc}") from None
    return runner


def page_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def app(lives: list[LiveState], listen: Listen, gateway: GatewayMetrics | None = None) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .metrics import registry

    metrics = registry(lives, gateway)
    pages = {span: Snapshot(lives, lambda span=span: render_page(lives, span).encode(), max_age_s=PAGE_REFRESH_S) for span in (None, *SPANS)}
    status_body = Snapshot(lives, lambda: _dumps(relays_status_json(lives)).encode(), max_age_s=ANSWER_MAX_AGE_S)
    metrics_body = Snapshot(lives, lambda: generate_latest(metrics), max_age_s=ANSWER_MAX_AGE_S)

    async def index(request: web.Request) -> web.Response:
        span = request.query.get("span")
        if span is not None and span not in SPANS:
            return web.Response(status=400, text=f"span {span!r}: choose one of {', '.join(SPANS)}\n")
        return web.Response(body=await pages[span].get(), content_type="text/html", charset="utf-8")

    async def api_status(request: web.Request) -> web.Response:
        return web.Response(body=await status_body.get(), content_type="application/json", charset="utf-8")

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=await metrics_body.get(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        problem = unhealthy(lives)
        return web.Response(status=503 if problem else 200, text=(problem or "ok") + "\n")

    application = web.Application(middlewares=[listener.middleware, guard.middleware(listen)])
    application.router.add_get("/", index)
    application.router.add_get("/api/status", api_status)
    application.router.add_get("/metrics", prometheus)
    application.router.add_get("/healthz", healthz)
    return application


def staleness(live: LiveState) -> str | None:
    """Unhealthy when rounds stopped happening: three missed intervals plus one round's worth of timeouts.

    Measured on the live state's monotonic clock: stepped back an hour, the
    wall clock would have kept /healthz at ok for that hour.
    """
    probe = live.config.probe
    allowed = 3 * probe.interval + probe.timeout * probe.samples
    now = live.clock()
    since = live.last_round_tick if live.last_round_tick is not None else live.started_tick
    if now - since > allowed:
        what = "no round finished" if live.last_round_tick is not None else "the first round has not finished"
        return f"stale: {what} in the last {now - since:.0f} s (allowed {allowed:g} s)"
    return None


TREND_MARKS = 20


def unhealthy(lives: list[LiveState]) -> str | None:
    """The first relay whose rounds stopped, named when there are several."""
    for live in lives:
        if problem := staleness(live):
            return f"relay {live.config.relay}: {problem}" if len(lives) > 1 else problem
    return None


def relays_status_json(lives: list[LiveState]) -> dict:
    """/api/status: the first relay's document at the top (a one-relay config's as before), every relay's under `relays`;
    the top-level `daemon` counts the whole daemon, each relay's its own rounds and switches."""
    data = documents.with_relays([(live.config.relay, status_json(live)) for live in lives])
    last = [live.last_round_at for live in lives if live.last_round_at is not None]
    rounds: dict[str, int] = {}
    for live in lives:
        for kind, count in live.rounds.items():
            rounds[kind] = rounds.get(kind, 0) + count
    data["daemon"] = {
        **data["daemon"],
        "started_at": documents.iso_time(min(live.started_at for live in lives)),
        "last_round_at": documents.iso_time(max(last) if last else None),
        "rounds": rounds,
        "switches": sum(live.switches for live in lives),
    }
    return data


def status_json(live: LiveState) -> dict:
    """`linepicker status --json`, plus what only a running daemon knows: rise/fall state, the last round
    and a short trend (what `linepicker top` draws)."""
    report = live.status()
    trend_s, trends = trend(live, time.time())
    extras = {
        view.status.line.name: {
            "state": view.state,
            "up": view.health.up,
            "phases": vars(view.phases) if view.phases else None,
            "trend": [documents.bucket_json(bucket) for bucket in trends.get(view.status.line.name, [])],
        }
        | ({"traffic": traffic_json(view.traffic)} if view.traffic else {})
        for view in live.views(report)
    }
    data = documents.status_json(report, live.config, extras)
    data["daemon"] = {
        "started_at": documents.iso_time(live.started_at),
        "last_round_at": documents.iso_time(live.last_round_at),
        "rounds": dict(live.rounds),
        "switches": live.switches,
        "trend_bucket_s": trend_s,
    }
    return data


def trend(live: LiveState, now: float) -> tuple[float, dict[str, list[series.Bucket]]]:
    """The last TREND_MARKS buckets per line, each 1.2 probe intervals wide: the scheduler's jitter
    moves a round by at most a tenth of an interval either way, so no bucket is left without one."""
    width = live.config.probe.interval * 1.2
    span = width * TREND_MARKS
    points = live.store.samples_since(live.store.line_ids(live.config.active_lines), now - span)
    return width, {name: series.series(found, now, span, TREND_MARKS).buckets for name, found in points.items()}


def traffic_json(traffic: LineTraffic) -> dict[str, Any]:
    """A line's real requests through the gateway over the policy window, and whether the gateway skips it."""
    summary = traffic.summary
    data: dict[str, Any] = {"breaker": traffic.breaker, "reopens_in_s": None if traffic.reopens_in is None else round(traffic.reopens_in, 1)}
    if summary is None:
        return data | {"requests": 0}
    return data | {
        "requests": summary.requests,
        "failures": summary.failures,
        "failovers": summary.failovers,
        "ttfb_p50_ms": summary.ttfb_p50_ms,
        "ttft_p50_ms": summary.ttft_p50_ms,
        "tokens_per_s": summary.tokens_per_s,
        "last_outcome": summary.last_outcome,
        "last_error": summary.last_error,
        "last_at": documents.iso_time(summary.last_at),
    }


def render_page(lives: list[LiveState] | LiveState, span: str | None = None) -> str:
    """The page with charts over `span` (a key of SPANS), or by default over the smallest span up to
    a day that holds the data (the longest of the relays', so their charts compare): a longer one is
    a click away, and a day is what a refresh can afford. One section per relay once there are several."""
    lives = lives if isinstance(lives, list) else [lives]
    now = time.time()
    named = len(lives) > 1 or lives[0].config.relay != DEFAULT_RELAY
    charts = [history(live.config, live.store, SPANS[span] if span else None, now=now, longest=SPANS["24h"]) for live in lives]
    if span is None and len({found.span_s for found in charts}) > 1:
        longest = max(found.span_s for found in charts)
        charts = [history(live.config, live.store, longest, now=now) for live in lives]
    return page.render_relays([_page(live, found, span, now, named) for live, found in zip(lives, charts)])


def _page(live: LiveState, charts: History, span: str | None, now: float, named: bool) -> page.Page:
    report = live.status()
    label = series.span_text(charts.span_s)
    return page.Page(
        status=report,
        views=live.views(report),
        charts={entry.line.name: svg.svg(entry.series, f"{entry.line.name}: time to first byte, last {label}") for entry in charts.lines},
        span_s=charts.span_s,
        bucket_s=charts.bucket_s,
        span_choice=span,
        config_source=str(live.config.source),
        db_path=str(live.store.path),
        rounds=sum(live.rounds.values()),
        last_round_at=live.last_round_at,
        refresh_s=PAGE_REFRESH_S,
        now=now,
        relay=live.config.relay if named else None,
    )


def _dumps(data: object) -> str:
    import json

    return json.dumps(data, ensure_ascii=False)
