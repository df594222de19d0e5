"""`linepicker top`: a running daemon's lines, refreshed in place, for people who would rather look than read JSON.

It reads nothing but the daemon's /api/status over HTTP, so it works against a daemon on
another machine or through a tunnel and never opens the database the daemon writes. The
standard library's urllib is enough for one small GET every few seconds; proxies are not
used, as the daemon is normally on loopback where a proxy could only get in the way.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import DEFAULT_LISTEN
from ..errors import ConfigError, LinepickerError
from ..words import counted
from .page import ago
from .series import Bucket, robust_top, span_text
from .terminal import sparklines

TIMEOUT_S = 5.0
MAX_BYTES = 16 * 1024 * 1024  # an /api/status of a thousand lines is far below this
PHASE_COLUMNS = ("dns", "connect", "tls", "ttfb")
WIDE = 120  # columns from which every phase is shown
PIPE_WIDTH = 200
COLUMN_GAP = 3  # between two columns of a SIMPLE_HEAD table
MIN_MARKS = 6  # the trend keeps at least this many marks, squeezing the others instead


class DaemonUnreachable(LinepickerError):
    """No linepicker daemon answered at the URL: refused, timed out, or something else answered."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # the short form, for a view that keeps running


@dataclass(frozen=True)
class TopLine:
    name: str
    url: str
    insecure: bool
    state: str  # up, down, failing 1/3, rising 1/2
    eligible: bool
    score_ms: float | None
    p50_ms: float | None
    success_rate: float | None
    last_outcome: str | None
    error: str | None  # of the latest sample
    why_not: str | None  # why the policy may not choose it
    phases: dict[str, float | None]
    trend: list[Bucket]


@dataclass(frozen=True)
class Switch:
    name: str
    url: str
    previous: str | None
    reason: str
    at: float


@dataclass(frozen=True)
class Snapshot:
    url: str
    lines: list[TopLine]
    choice: Switch | None  # the decision in force
    last_switch: Switch | None  # the newest decision that replaced another line
    pinned: str | None
    window_s: float
    rounds: dict[str, int]
    last_round_at: float | None
    trend_bucket_s: float | None
    relay: str | None = None  # named once the daemon serves several relays


def status_url(base: str) -> str:
    """The daemon's address as given to --listen or seen in a browser, with or without a path prefix."""
    if not base.startswith(("http://", "https://")) or len(base.split("//", 1)[1].strip("/")) == 0:
        raise ConfigError(f"--url {base!r}: expected the daemon's address, such as http://{DEFAULT_LISTEN}")
    return base.rstrip("/") + "/api/status"


def fetch(url: str, timeout: float = TIMEOUT_S) -> list[Snapshot]:
    """One GET of /api/status, turned into a Snapshot per relay or a DaemonUnreachable saying what answered instead."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise DaemonUnreachable(f"{url} answered HTTP {exc.code}: is this a linepicker daemon's address?", f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        reason = _reason(exc.reason)
        raise DaemonUnreachable(f"no daemon answers at {url}: {reason} (start one with `linepicker daemon`)", reason) from None
    except OSError as exc:  # a timeout or a reset while reading the body
        raise DaemonUnreachable(f"no daemon answers at {url}: {_reason(exc)}", _reason(exc)) from None
    if len(body) > MAX_BYTES:
        raise DaemonUnreachable(f"{url} sent more than {MAX_BYTES // 2**20} MiB: not a linepicker daemon", "an oversized answer")
    try:
        return parse_all(json.loads(body), url)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DaemonUnreachable(f"{url} did not answer with a linepicker daemon's status: is this the right address?", "not a daemon's status") from None


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return getattr(reason, "strerror", None) or str(reason)


def _number(value: object) -> float | None:
    """A figure from the JSON: a number or null, anything else means it was not a daemon's status."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _time(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text).timestamp()


def _decision(data: dict[str, Any] | None) -> Switch | None:
    if not data:
        return None
    return Switch(str(data["name"]), str(data["url"]), _text(data["previous"]), str(data["reason"]), _time(data["decided_at"]) or 0.0)


def _bucket(data: dict[str, Any]) -> Bucket:
    """The JSON of a trend bucket back into the Bucket the sparklines draw; only the median is used."""
    p50 = _number(data.get("p50_ms")) or 0.0
    return Bucket(_time(data["start"]) or 0.0, int(data["samples"]), int(data["failures"]), p50, p50, p50, p50, p50)


def _line(data: dict[str, Any]) -> TopLine:
    phases = data.get("phases") or {}
    return TopLine(
        name=str(data["name"]),
        url=str(data["url"]),
        insecure=bool(data.get("insecure")),
        state=str(data["state"]),
        eligible=bool(data["healthy"]),
        score_ms=_number(data["score"]),
        p50_ms=_number(data["p50_ms"]),
        success_rate=_number(data["success_rate"]),
        last_outcome=_text(data["last_outcome"]),
        error=_text(data.get("error")),
        why_not=_text(data.get("why_not")),
        phases={name: _number(phases.get(f"{name}_ms")) for name in PHASE_COLUMNS},
        trend=[_bucket(bucket) for bucket in data.get("trend") or []],
    )


def parse_all(data: dict[str, Any], url: str) -> list[Snapshot]:
    """Every relay of /api/status: the top level alone for one relay, each entry of `relays` for several."""
    relays = data.get("relays") or []
    if len(relays) < 2:
        return [parse(data, url)]
    return [parse(entry, url, str(entry["name"])) for entry in relays]


def parse(data: dict[str, Any], url: str, relay: str | None = None) -> Snapshot:
    """/api/status (or one relay's part of it) as a Snapshot; a KeyError or TypeError here means something else answered."""
    daemon = data["daemon"]
    decisions = [_decision(item) for item in data.get("decisions") or []]
    return Snapshot(
        url=url,
        lines=[_line(item) for item in data["lines"]],
        choice=_decision(data["choice"]),
        last_switch=next((d for d in decisions if d is not None and d.previous), None),
        pinned=_text(data.get("pinned")),
        window_s=float(data["window_s"]),
        rounds={str(kind): int(n) for kind, n in daemon["rounds"].items()},
        last_round_at=_time(daemon["last_round_at"]),
        trend_bucket_s=_number(daemon.get("trend_bucket_s")),
        relay=relay,
    )


def _clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _when(timestamp: float, now: float) -> str:
    day = "" if now - timestamp < 20 * 3600 else time.strftime("%Y-%m-%d ", time.localtime(timestamp))
    return f"{day}{_clock(timestamp)} ({ago(timestamp, now)})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def render(snapshots: list[Snapshot], now: float, interval: float, width: int, problem: str | None = None) -> RenderableType:
    """The whole screen: for each relay what is chosen and since when, the last switch, a table of lines, notes."""
    parts: list[RenderableType] = [_header(snapshots, now)]
    for snapshot in snapshots:
        if snapshot.relay is not None:
            parts.append(Text(f"relay {snapshot.relay}", style="bold underline"))
        parts += _choice(snapshot, now)
        parts.append(_table(snapshot, width))
        for line in snapshot.lines:
            notes = ([f"not eligible ({line.why_not})"] if line.why_not else []) + ([line.error] if line.error else [])
            if notes:
                parts.append(Text.assemble("  ", (line.name, "bold"), ": " + ": ".join(notes)))
            if line.insecure:
                parts.append(Text(f"  {line.name}: certificate NOT checked (insecure: true)", style="bold red"))
    if problem:
        parts.append(Text(problem, style="bold red"))
    parts.append(Text(f"every {interval:g} s from {snapshots[0].url} · Ctrl-C quits", style="dim"))
    return Group(*parts)


def _header(snapshots: list[Snapshot], now: float) -> Text:
    """Rounds of every relay together; the round kinds /api/status counts are daemon.live's FULL and RECHECK."""
    full = sum(snapshot.rounds.get("daemon", 0) for snapshot in snapshots)
    rechecks = sum(snapshot.rounds.get("daemon-recheck", 0) for snapshot in snapshots)
    latest = max((snapshot.last_round_at for snapshot in snapshots if snapshot.last_round_at), default=None)
    last = f"last round {_when(latest, now)}" if latest else "first round running"
    return Text.assemble(("linepicker top", "bold"), f"  {_clock(now)} · {counted(full, 'round')}, {counted(rechecks, 'recheck')} · {last}")


def _choice(snapshot: Snapshot, now: float) -> list[RenderableType]:
    choice = snapshot.choice
    if choice is None:
        return [Text("no line chosen yet", style="bold yellow")]
    lines: list[RenderableType] = [
        Text.assemble("chosen: ", (choice.name, "bold green"), f" {choice.url} since {_when(choice.at, now)}")
    ]
    if snapshot.pinned:
        lines.append(Text(f"pinned by hand to {snapshot.pinned} (linepicker unpin to let the policy choose)", style="yellow"))
    switch = snapshot.last_switch
    if switch is None:
        lines.append(Text("last switch: none yet", style="dim"))
    else:
        lines.append(Text(f"last switch: {switch.previous} → {switch.name} at {_when(switch.at, now)}: {switch.reason}"))
    return lines


def _table(snapshot: Snapshot, width: int) -> Table:
    """Narrow terminals lose the dns/connect/tls columns and the oldest trend marks, never a cell's text."""
    from rich import box

    chosen = snapshot.choice.name if snapshot.choice else None
    phases = PHASE_COLUMNS if width >= WIDE else PHASE_COLUMNS[-1:]
    headers = ("line", "state", "score", "p50", "success", *phases)
    rows = [
        [
            Text(f"▶ {line.name}", style="bold green") if line.name == chosen else Text(f"  {line.name}"),
            Text(line.state, style="green" if line.state == "up" else "red" if line.state == "down" else "yellow"),
            Text(_ms(line.score_ms)) if line.eligible else Text("-", style="dim"),
            Text(_ms(line.p50_ms)),
            Text("-" if line.success_rate is None else f"{line.success_rate:.0%}"),
            *(Text(_ms(line.phases.get(name))) for name in phases),
        ]
        for line in snapshot.lines
    ]
    outcomes = [Text(line.last_outcome or "never probed", style="" if line.last_outcome in ("ok", None) else "red") for line in snapshot.lines]
    fixed = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    fixed.append(max([len("last outcome"), *(len(text) for text in outcomes)]))
    room = width - sum(fixed) - COLUMN_GAP * len(fixed) - 2
    marks = min(max((len(line.trend) for line in snapshot.lines), default=0), max(MIN_MARKS, room))
    span = span_text(snapshot.trend_bucket_s * marks) if snapshot.trend_bucket_s and marks else None
    trend_header = f"ttfb, last {span}" if span and len(f"ttfb, last {span}") <= marks else "trend"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"policy window {snapshot.window_s / 60:g} min · phases: the last round's medians in ms", title_justify="left", title_style="dim")
    for header in (*headers, trend_header, "last outcome"):
        table.add_column(header, justify="right" if header in ("score", "p50", "success", *phases) else "left", no_wrap=True)
    high = robust_top([b.p50 for line in snapshot.lines for b in line.trend[-marks:] if b.successes])
    for line, cells, outcome in zip(snapshot.lines, rows, outcomes):
        latency, _ = sparklines(line.trend[-marks:] if marks else [], high)
        table.add_row(*cells, latency, outcome)
    return table


def run(base_url: str, interval: float, console: Console, once: bool) -> None:
    """Draw until Ctrl-C. The first fetch must succeed (else one line and exit 1); later failures are
    shown in place while it keeps trying, since a daemon restarting for a reload comes back."""
    url = status_url(base_url)
    snapshots = fetch(url)
    if not console.is_terminal:  # a pipe gets one view with every column, uncut
        console = Console(file=console.file, width=PIPE_WIDTH, highlight=False, emoji=False, soft_wrap=True)
        once = True
    if once:
        console.print(render(snapshots, time.time(), interval, console.width))
        return
    problem: str | None = None
    failing_since: float | None = None
    try:
        with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
            while True:
                live.update(render(snapshots, time.time(), interval, console.width, problem), refresh=True)
                time.sleep(interval)
                try:
                    snapshots = fetch(url)
                    problem, failing_since = None, None
                except DaemonUnreachable as exc:
                    failing_since = failing_since or time.time()
                    problem = f"no answer since {_clock(failing_since)} ({exc.reason}); still trying"
    except KeyboardInterrupt:
        return
