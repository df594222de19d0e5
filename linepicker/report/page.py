"""The daemon's status page and the offline HTML report: self-contained documents a person reads at a glance.

Rendered on the server with inline CSS and SVG, no script and no external
resource, so it works on a machine without network and in any browser; a
meta refresh keeps it current.
"""

from __future__ import annotations

import html
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__
from ..picker import Status
from ..probe.phases import Phases
from ..store import ChatRow, Decision
from ..words import counted
from .history import SPANS, History
from .series import Series, span_text
from .svg import LOSS_COLOURS, svg

if TYPE_CHECKING:
    from ..daemon.live import LineTraffic, LineView  # the daemon hands its views in; the page never imports the daemon


@dataclass(frozen=True)
class Page:
    status: Status
    views: list[LineView]
    charts: dict[str, str]  # line name -> inline SVG
    span_s: float  # what the charts cover
    bucket_s: float
    span_choice: str | None  # the ?span= asked for; None: fitted to the data
    config_source: str
    db_path: str
    rounds: int
    last_round_at: float | None
    refresh_s: int
    now: float
    relay: str | None = None  # the relay's name on a page of several relays; None: a one-relay config


def render(page: Page) -> str:
    return render_relays([page])


def render_relays(pages: list[Page]) -> str:
    """One status page for every relay the daemon serves: each relay's choice, cards and decisions under its name."""
    first = pages[0]
    legend = _legend(f"the last {span_text(first.span_s)} in {span_text(first.bucket_s)} buckets")
    sections = []
    for page in pages:
        chosen = page.status.choice.name if page.status.choice else None
        cards = "".join(_card(view, view.status.line.name == chosen, page.charts.get(view.status.line.name, ""), page.now) for view in page.views)
        if page.relay is None:  # a one-relay config: the page as it always was
            sections.append(f"""{_choice(page.status, page.now)}
{_spans(page)}
<section class="lines">{cards}</section>
{legend}
{_decisions(page.status.decisions, page.now)}""")
        else:
            sections.append(f"""<h2 class="relay">relay {html.escape(page.relay)}</h2>
{_choice(page.status, page.now)}
<section class="lines">{cards}</section>
{_decisions(page.status.decisions, page.now)}""")
    body = "\n".join(sections) if first.relay is None else _spans(first) + "\n" + "\n".join(sections) + "\n" + legend
    last_round = max((page.last_round_at for page in pages if page.last_round_at is not None), default=None)
    rounds = sum(page.rounds for page in pages)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{first.refresh_s}">
<title>{html.escape(_title(pages))}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>linepicker</h1><p class="muted">{html.escape(socket.gethostname())} · updated {_clock(first.now)}
 · {_last_round(last_round, first.now)} · refreshes every {first.refresh_s} s</p></header>
{body}
<footer class="muted">config {html.escape(first.config_source)} · database {html.escape(first.db_path)} · {counted(rounds, "round")} since start ·
<a href="api/status">/api/status</a> · <a href="metrics">/metrics</a> · linepicker {__version__}</footer>
</main></body></html>
"""


def _spans(page: Page) -> str:
    """Links to the other spans; the one shown is plain text, and a fitted one says so."""
    links = []
    for key, seconds in SPANS.items():
        text = span_text(seconds)
        links.append(f"<b>{text}</b>" if seconds == page.span_s else f'<a href="?span={key}">{text}</a>')
    fitted = ' <span class="muted">(fitted to the data)</span>' if page.span_choice is None else ""
    return f'<nav class="spans muted">Charts over: {" · ".join(links)}{fitted}</nav>'


def _title(pages: list[Page]) -> str:
    def chosen(page: Page) -> str:
        choice = page.status.choice
        return choice.name if choice else "no line chosen"

    if pages[0].relay is None:
        return f"linepicker: {chosen(pages[0])}"
    return "linepicker: " + " · ".join(f"{page.relay}: {chosen(page)}" for page in pages)


def _last_round(last_round_at: float | None, now: float) -> str:
    if last_round_at is None:
        return "first round running"
    return f"last round {ago(last_round_at, now)}"


def _choice(status: Status, now: float) -> str:
    choice = status.choice
    if choice is None:
        return '<section class="choice none"><h2>No line chosen yet</h2><p>The first round is still running.</p></section>'
    pinned = '<span class="badge warn">pinned by hand</span>' if status.pinned else ""
    since = f"Switched from <b>{html.escape(choice.previous)}</b>" if choice.previous else "Chosen"
    return f"""<section class="choice"><div class="label">Chosen line</div>
<h2>{html.escape(choice.name)} {pinned}</h2><div class="url">{html.escape(choice.url)}</div>
<p class="why">{since} {ago(choice.decided_at, now)} ({_clock(choice.decided_at)}): {html.escape(choice.reason)}</p></section>"""


def _card(view: LineView, chosen: bool, chart: str, now: float) -> str:
    entry = view.status
    stats = entry.stats
    state_class = "ok" if view.health.steady else ("bad" if not view.health.up else "warn")
    badges = f'<span class="badge {state_class}">{html.escape(view.state)}</span>'
    if chosen:
        badges = '<span class="badge chosen">chosen</span>' + badges
    if entry.line.insecure:
        badges += '<span class="badge bad">certificate NOT checked (insecure: true)</span>'
    if view.traffic is not None and view.traffic.breaker != "closed":
        badges += f'<span class="badge {"bad" if view.traffic.breaker == "open" else "warn"}">gateway: {_breaker(view.traffic)}</span>'
    judgement = entry.judgement
    parts = judgement.parts
    breakdown = (
        f" = p50 {parts.p50_ms:.1f} + tail {parts.tail_ms:.1f} + failures {parts.failure_ms:.1f} + thin evidence {parts.confidence_ms:.1f}"
        if parts else ""
    )
    verdict = (
        f"score {'> ' if judgement.lower_bound else ''}{judgement.score:.1f} ms{breakdown}" if judgement.eligible and judgement.score is not None
        else f"not eligible: {judgement.why_not}"
    )
    outcome = html.escape(entry.last.outcome if entry.last else "never probed")
    error = f' <span class="error">{html.escape(entry.last.error)}</span>' if entry.last and entry.last.error else ""
    return f"""<article class="card{' is-chosen' if chosen else ''}">
<div class="head"><h3>{html.escape(entry.line.name)}</h3>{badges}</div>
<div class="url">{html.escape(entry.line.url)}</div>
<dl class="figures">{_figure("p50", _ms(stats.p50_ms))}{_figure("p95", _ms(stats.p95_ms))}
{_figure("success", _rate(stats.success_rate))}{_figure("samples", str(stats.samples))}</dl>
<p class="verdict{'' if entry.judgement.eligible else ' muted'}">{html.escape(verdict)}</p>
<p class="phases">last round: {_phases(view.phases)} · <span class="outcome">{outcome}</span>{error}</p>
{_chat(entry.chat, now)}{_traffic(view.traffic, now)}{chart}</article>"""


def _traffic(traffic: LineTraffic | None, now: float) -> str:
    """Real requests through the gateway, beside the probes: what clients actually got from the line."""
    if traffic is None:
        return ""
    summary = traffic.summary
    if summary is None or not summary.requests:
        return '<p class="chat">gateway: no request in the window</p>\n'
    parts = [f"{summary.requests} requests", f"{summary.failures} failed" + (f" ({summary.failovers} moved to another line)" if summary.failovers else "")]
    if summary.ttfb_p50_ms is not None:
        parts.append(f"head {_ms(summary.ttfb_p50_ms)}")
    if summary.ttft_p50_ms is not None:
        parts.append(f"first token {_ms(summary.ttft_p50_ms)}")
    if summary.tokens_per_s is not None:
        parts.append(f"{summary.tokens_per_s:.0f} tokens/s")
    last = ""
    if summary.last_at is not None and summary.last_error:
        last = f' · last {ago(summary.last_at, now)}: <span class="error">{html.escape(summary.last_outcome or "")}: {html.escape(summary.last_error)}</span>'
    return f'<p class="chat">gateway (medians): {" · ".join(parts)}{last}</p>\n'


def _breaker(traffic: LineTraffic) -> str:
    if traffic.breaker == "open":
        return f"skipped, tried again in {traffic.reopens_in or 0:.0f} s"
    return "on trial"


def _chat(chat: ChatRow | None, now: float) -> str:
    """The model call, beside the ping: a line can answer /v1/models and still fail it."""
    if chat is None:
        return ""
    head = f"model call ({html.escape(chat.model)}, {ago(chat.started_at, now)})"
    if not chat.success:
        return f'<p class="chat">{head}: <span class="error">{html.escape(chat.outcome)}: {html.escape(chat.error or "")}</span></p>\n'
    speed = "" if chat.tokens_per_s is None else f" · {chat.tokens_per_s:.0f} tokens/s"
    return f'<p class="chat">{head}: first token {_ms(chat.ttft_ms)}{speed}</p>\n'


def _figure(name: str, value: str) -> str:
    return f"<div><dt>{name}</dt><dd>{value}</dd></div>"


def _phases(phases: Phases | None) -> str:
    if phases is None:
        return "not probed by this daemon yet"
    parts = [(label, getattr(phases, f"{label}_ms")) for label in ("dns", "connect", "tls", "ttfb", "total")]
    return " · ".join(f"{label} {value:.0f} ms" for label, value in parts if value is not None) or "no phase reached"


def _legend(period: str) -> str:
    swatches = "".join(f'<span><i style="background:{colour}"></i>median, {words}</span>' for _, colour, words in LOSS_COLOURS)
    return f"""<p class="legend muted">Charts: time to first byte over {html.escape(period)}. {swatches}
<span><i class="smoke"></i>spread p10–p90 (darker p25–p75)</span><span><i class="dead"></i>every sample failed</span>
<span><i class="failed"></i>failures in the bucket</span><span><i class="over"></i>median above the scale</span></p>"""


def _decisions(decisions: list[Decision], now: float | None) -> str:
    """With `now` (the live page) each time also says how long ago; a file read later gets absolute times only."""
    if not decisions:
        return ""
    rows = "".join(
        f"<tr><td>{_clock(d.decided_at)}{_ago_note(d.decided_at, now)}</td>"
        f"<td>{html.escape(d.previous or '–')} → <b>{html.escape(d.name)}</b></td><td>{html.escape(d.reason)}</td></tr>"
        for d in decisions
    )
    return f'<section class="history"><h2>Recent decisions</h2><table><thead><tr><th>when</th><th>change</th><th>why</th></tr></thead><tbody>{rows}</tbody></table></section>'


def _ago_note(timestamp: float, now: float | None) -> str:
    return "" if now is None else f"<div class='muted'>{ago(timestamp, now)}</div>"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _zone(timestamp: float) -> str:
    """The local zone a file's times are in, for a reader somewhere else: 'CST, UTC+08:00'."""
    offset = time.strftime("%z", time.localtime(timestamp))
    name = time.strftime("%Z", time.localtime(timestamp))
    utc = f"UTC{offset[:3]}:{offset[3:]}"
    return utc if name in ("UTC", "GMT", "") else f"{name}, {utc}"


def ago(timestamp: float, now: float) -> str:
    seconds = max(now - timestamp, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 129600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


CSS = """
:root { color-scheme: light; --ink:#1f2933; --muted:#6b7785; --line:#e4e7eb; --ok:#15803d; --bad:#dc2626; --warn:#b45309; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:#f4f6f8; color:var(--ink); font:15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 20px 20px 40px; }
header { display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; margin-bottom: 14px; }
h1 { font-size: 22px; margin:0; letter-spacing:-0.01em; }
h2 { font-size: 20px; margin: 0; }
h3 { font-size: 17px; margin: 0; }
.muted { color: var(--muted); font-size: 13px; margin: 0; }
.url { color: var(--muted); font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; word-break: break-all; }
.choice { background:#fff; border:1px solid var(--line); border-left:6px solid var(--ok); border-radius:10px; padding:14px 18px; margin-bottom:16px; }
.choice.none { border-left-color: var(--warn); }
.choice .label { text-transform: uppercase; font-size: 11px; letter-spacing: .08em; color: var(--muted); }
.choice h2 { font-size: 26px; display:flex; align-items:center; gap:10px; }
.why { margin: 8px 0 0; }
.lines { display:grid; gap: 14px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:14px 18px 10px; }
.card.is-chosen { border-color: #86c99c; box-shadow: 0 0 0 2px #d8f0df; }
.head { display:flex; align-items:center; gap:8px; }
.badge { font-size: 12px; font-weight: 600; border-radius: 999px; padding: 1px 9px; border:1px solid; }
.badge.ok { color: var(--ok); border-color:#a7dbb6; background:#effaf2; }
.badge.bad { color: var(--bad); border-color:#f4b4b4; background:#fdf0f0; }
.badge.warn { color: var(--warn); border-color:#f1cf94; background:#fdf6e9; }
.badge.chosen { color:#fff; background: var(--ok); border-color: var(--ok); }
.figures { display:flex; gap: 28px; margin: 10px 0 4px; }
.figures div { min-width: 70px; }
.figures dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
.figures dd { margin: 0; font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.verdict { margin: 2px 0; font-size: 14px; }
.phases, .chat { margin: 2px 0 6px; font-size: 13px; color: var(--muted); }
.outcome { color: var(--ink); font-weight: 600; }
.error { color: var(--bad); }
.chart { width: 100%; height: auto; display:block; }
.chart .plot { fill: #fbfcfd; stroke: var(--line); }
.chart .grid { stroke: #e9ecef; stroke-width: 1; }
.chart .tick { fill: var(--muted); font-size: 10px; }
.chart .smoke-outer { fill: #d5dae1; }
.chart .smoke-inner { fill: #a3adba; }
.chart .dead { fill: #fde2e2; }
.chart .strip { fill: #f1f3f5; }
.chart .over { stroke: #fff; stroke-width: 0.5; }
.legend { margin: 12px 2px; display:flex; flex-wrap:wrap; gap: 4px 14px; }
.legend i { display:inline-block; width: 14px; height: 8px; margin-right: 5px; border-radius:2px; vertical-align: middle; }
.legend i.smoke { background: linear-gradient(#d5dae1 0 25%, #a3adba 25% 75%, #d5dae1 75%); }
.legend i.dead { background:#fde2e2; border:1px solid #f4b4b4; }
.legend i.failed { background:#dc2626; height: 4px; }
.legend i.over { width: 0; height: 0; border-radius: 0; background: none; border: 5px solid transparent; border-bottom: 8px solid var(--ink); border-top: 0; }
.spans { margin: 0 2px 10px; }
.spans a { color: var(--accent); }
.history { background:#fff; border:1px solid var(--line); border-radius:10px; padding:14px 18px; margin-top: 8px; }
.history table { width:100%; border-collapse: collapse; margin-top: 8px; font-size: 14px; }
.history th { text-align:left; font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); border-bottom:1px solid var(--line); padding: 4px 8px 4px 0; }
.history td { vertical-align: top; border-bottom:1px solid #f0f2f4; padding: 6px 10px 6px 0; }
.history td:first-child { white-space: nowrap; }
h2.relay { margin: 26px 0 10px; font-size: 22px; }
footer { margin-top: 18px; }
footer a { color: var(--accent); }
"""


def render_report(history: History, config_source: str, now: float) -> str:
    """The charts of the status page for any period, as one file that opens anywhere, offline, for ever:
    so every time in it is absolute, with its zone, and nothing says "ago" or "now"."""
    return render_relay_reports([(None, history)], config_source, now)


def render_relay_reports(histories: list[tuple[str | None, History]], config_source: str, now: float) -> str:
    """The report of one or several relays: each relay's cards and switches under its name (None: a one-relay file)."""
    first = histories[0][1]
    span = span_text(first.span_s)
    end = time.strftime("%b %d %H:%M", time.localtime(first.until))
    legend = _legend(f"{span} in {span_text(first.bucket_s)} buckets")
    parts = []
    for relay, history in histories:
        cards = "".join(_report_card(entry.line.name, entry.line.url, entry.series, span, end) for entry in history.lines)
        switches = _decisions(list(reversed(history.decisions)), None) or '<section class="history"><h2>No switches in this period</h2></section>'
        if relay is None:
            parts.append(f'<section class="lines">{cards}</section>\n{legend}\n{switches}')
        else:
            parts.append(f'<h2 class="relay">relay {html.escape(relay)}</h2>\n<section class="lines">{cards}</section>\n{switches}')
    body = "\n".join(parts) if histories[0][0] is None else legend + "\n" + "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>linepicker report: {_clock(first.since)} – {_clock(first.until)}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>linepicker report</h1><p class="muted">{html.escape(socket.gethostname())} · {_clock(first.since)} – {_clock(first.until)}
 ({span}; times in {_zone(first.until)}) · written {_clock(now)}</p></header>
{body}
<footer class="muted">config {html.escape(config_source)} · linepicker {__version__}</footer>
</main></body></html>
"""


def _report_card(name: str, url: str, series: Series, span: str, end: str) -> str:
    buckets = series.buckets
    samples = sum(b.samples for b in buckets)
    failures = sum(b.failures for b in buckets)
    medians = [b.p50 for b in buckets if b.successes]
    return f"""<article class="card">
<div class="head"><h3>{html.escape(name)}</h3></div>
<div class="url">{html.escape(url)}</div>
<dl class="figures">{_figure("best median", _ms(min(medians, default=None)))}{_figure("worst median", _ms(max(medians, default=None)))}
{_figure("success", _rate((samples - failures) / samples if samples else None))}{_figure("samples", str(samples))}</dl>
{svg(series, f"{name}: time to first byte, {span} to {end}", end_label=end)}</article>"""
