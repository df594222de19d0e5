"""Everything linepicker prints goes through here: rich tables for people, JSON for scripts.

Results go to stdout; notes, warnings, errors and progress go to stderr, so
`linepicker pick --json | jq` and `eval "$(linepicker env)"` stay clean.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from rich.console import Console
from rich.table import Table

from .config import Config, Line
from .picker import LineReport, RoundResult, Status
from .policy import Judgement, LineStats, percentile, judge
from .store import Decision

if TYPE_CHECKING:
    from .probe import Phases, Sample

stdout = Console(highlight=False, soft_wrap=True, emoji=False)  # a relay's error text is shown as sent: ":x:" stays ":x:"
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "transfer_ms", "total_ms")


def print_json(data: Any) -> None:
    import json  # only --json needs it, and `status` is timed as a process (docs/benchmarks.md §5)

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def note(message: str) -> None:
    stderr.print(message, markup=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    stderr.print(f"[red]error:[/] {escape(message)}")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def config_note(config: Config) -> None:
    note(f"config: {config.source} ({config.origin})")
    for warning in config.warnings:
        warn(warning)


@contextmanager
def progress(total: int, enabled: bool) -> Iterator[Callable[[Sample], None] | None]:
    """A live count of finished samples, shown only to a person watching a terminal."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=stderr, transient=True
    ) as bar:
        task = bar.add_task("probing", total=total)
        yield lambda sample: bar.advance(task)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def round_phases(samples: list[Sample]) -> Phases:
    """Median of each phase over this round's samples that reached it."""
    from .probe import Phases  # here, not at the top: importing probe costs `status` ≈ 40 ms (asyncio, ssl)

    values = {}
    for name in PHASES:
        reached = [getattr(s.phases, name) for s in samples if getattr(s.phases, name) is not None]
        values[name] = round(percentile(reached, 0.5), 3) if reached else None
    return Phases(**values)


def _outcomes(samples: list[Sample]) -> str:
    counts = Counter(s.outcome for s in samples)
    return ", ".join(f"{outcome} ×{n}" if n > 1 else outcome for outcome, n in counts.items())


def _last_error(samples: list[Sample]) -> str | None:
    return next((s.error for s in reversed(samples) if s.error), None)


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "seq": sample.seq,
        "started_at": when(sample.started_at),
        "outcome": sample.outcome,
        "success": sample.success,
        "status": sample.status,
        "error": sample.error,
        "phases": vars(sample.phases),
    }


def _stats_json(stats: LineStats, judgement: Judgement) -> dict[str, Any]:
    return {
        "healthy": judgement.eligible,
        "p50_ms": None if stats.p50_ms is None else round(stats.p50_ms, 3),
        "p95_ms": None if stats.p95_ms is None else round(stats.p95_ms, 3),
        "success_rate": stats.success_rate,
        "samples_in_window": stats.samples,
        "score": None if judgement.score is None else round(judgement.score, 3),
        "why_not": judgement.why_not,
    }


def _chat_json(chat: Any) -> dict[str, Any] | None:
    """A chat probe, this round's (ChatSample) or the latest recorded (ChatRow): both carry these fields."""
    if chat is None:
        return None
    return {
        "model": chat.model,
        "outcome": chat.outcome,
        "success": chat.success,
        "ttft_ms": chat.ttft_ms,
        "tokens": chat.tokens,
        "tokens_per_s": chat.tokens_per_s,
        "error": chat.error,
        "at": when(chat.started_at),
    }


def _chat_cells(chat: Any) -> tuple[str, str]:
    if chat is None:
        return "-", "-"
    if not chat.success:
        return "[red]✗[/]", "-"
    return _ms(chat.ttft_ms), "-" if chat.tokens_per_s is None else f"{chat.tokens_per_s:.0f}"


def _decision_json(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "name": decision.name,
        "url": decision.url,
        "previous": decision.previous,
        "reason": decision.reason,
        "decided_at": when(decision.decided_at),
    }


def _judgement(result: RoundResult, report: LineReport, config: Config) -> Judgement:
    if result.verdict is not None:
        return result.verdict.judgements[report.line.name]
    return judge(report.stats, config.policy)


def round_json(result: RoundResult, config: Config, with_samples: bool) -> dict[str, Any]:
    lines = []
    for report in result.lines:
        entry = {"name": report.line.name, "url": report.line.url, "insecure": report.line.insecure}
        entry.update(_stats_json(report.stats, _judgement(result, report, config)))
        entry["error"] = _last_error(report.samples)
        entry["outcomes"] = [s.outcome for s in report.samples]
        entry["phases"] = vars(round_phases(report.samples))
        if config.probe.chat is not None:
            entry["chat"] = _chat_json(report.chat)
        if with_samples:
            entry["samples"] = [_sample_json(s) for s in report.samples]
        lines.append(entry)
    data: dict[str, Any] = {"config": str(config.source), "round_id": result.round_id, "elapsed_s": round(result.elapsed_s, 3)}
    if result.verdict is not None:
        chosen = result.chosen if result.verdict.chosen else None
        data["chosen"] = {"name": chosen.name, "url": chosen.url} if chosen else None
        data["changed"] = result.verdict.changed
        data["reason"] = result.verdict.reason
        data["kept"] = _decision_json(result.chosen) if result.no_eligible else None
        data["targets"] = [{"kind": t.kind, "path": str(t.path), "changed": t.changed} for t in result.target_results]
        data["target_errors"] = result.target_errors
    data["lines"] = lines
    return data


def _table(title: str, headers: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header in ("", "line", "outcome", "last outcome", "when", "change", "why") else "right")
    return table


def _notes(rows: list[tuple[str, str | None]]) -> None:
    """Errors and reasons go under the table, where long text does not squeeze the columns."""
    for name, text in rows:
        if text:
            stdout.print(f"  [bold]{escape(name)}[/]: {escape(text)}")


def _insecure_notes(lines: Iterable[Line]) -> None:
    """The table may cut its '(insecure)' mark short on a narrow terminal; this line it cannot."""
    for line in lines:
        if line.insecure:
            stdout.print(f"  [bold red]{escape(line.name)}: certificate NOT checked (insecure: true)[/]")


def render_round(result: RoundResult, config: Config) -> None:
    chosen = result.verdict.chosen if result.verdict else None
    chat = config.probe.chat is not None
    headers = ("", "line", "outcome", "dns", "connect", "tls", "ttfb", "p50", "success", "score") + (("ttft", "tok/s") if chat else ())
    table = _table(f"{len(result.lines)} lines, {result.elapsed_s:.2f} s", headers)
    notes = []
    for report in result.lines:
        judgement = _judgement(result, report, config)
        phases = round_phases(report.samples)
        table.add_row(
            "▶" if report.line.name == chosen else "",
            escape(report.line.name) + (" [bold red](insecure)[/]" if report.line.insecure else ""),
            escape(_outcomes(report.samples)),
            _ms(phases.dns_ms),
            _ms(phases.connect_ms),
            _ms(phases.tls_ms),
            _ms(phases.ttfb_ms),
            _ms(report.stats.p50_ms),
            _rate(report.stats.success_rate),
            _ms(judgement.score),
            *(_chat_cells(report.chat) if chat else ()),
            style="bold green" if report.line.name == chosen else ("" if judgement.eligible else "dim"),
        )
        notes.append((report.line.name, _last_error(report.samples) or judgement.why_not))
    stdout.print(table)
    _notes(notes)
    _insecure_notes(report.line for report in result.lines)
    stdout.print("[dim]phases: this round's medians in ms; p50, success and score: the policy window[/]")
    if chat:
        stdout.print(f"[dim]ttft, tok/s: this round's chat with {escape(config.probe.chat.model)} (- : not due or the line did not answer)[/]")
    if result.verdict is None:
        return
    if result.no_eligible:
        kept = f"keeping {result.chosen.name} ({result.chosen.url})" if result.chosen else "and no earlier choice to keep"
        stdout.print(f"[red]No line is eligible[/], {escape(kept)}.")
    elif result.chosen:
        verb = "switched to" if result.verdict.changed else "keeping"
        stdout.print(f"[bold]{verb} {escape(result.chosen.name)}[/] {escape(result.chosen.url)}: {escape(result.verdict.reason)}")
    for target in result.target_results:
        stdout.print(f"{'updated' if target.changed else 'already current'}: {target.path}")
    for message in result.target_errors:
        error(message)


def status_json(status: Status, config: Config) -> dict[str, Any]:
    lines = []
    for entry in status.lines:
        item = {"name": entry.line.name, "url": entry.line.url, "insecure": entry.line.insecure}
        item.update(_stats_json(entry.stats, entry.judgement))
        item["last_outcome"] = entry.last["outcome"] if entry.last else None
        item["error"] = entry.last["error"] if entry.last else None
        item["last_probed_at"] = when(entry.last["at"]) if entry.last else None
        if config.probe.chat is not None:
            item["chat"] = _chat_json(entry.chat)
        lines.append(item)
    return {
        "config": str(config.source),
        "window_s": status.window_s,
        "chosen": {"name": status.choice.name, "url": status.choice.url} if status.choice else None,
        "choice": _decision_json(status.choice),
        "pinned": status.pinned,
        "decisions": [_decision_json(d) for d in status.decisions],
        "lines": lines,
    }


def render_status(status: Status) -> None:
    chosen = status.choice.name if status.choice else None
    chat = any(entry.chat for entry in status.lines)
    headers = ("", "line", "samples", "success", "p50", "p95", "score", "last outcome") + (("ttft", "tok/s") if chat else ())
    table = _table(f"last {status.window_s / 60:g} min", headers)
    notes = []
    for entry in status.lines:
        last = entry.last or {}
        table.add_row(
            "▶" if entry.line.name == chosen else "",
            escape(entry.line.name) + (" [bold red](insecure)[/]" if entry.line.insecure else ""),
            str(entry.stats.samples),
            _rate(entry.stats.success_rate),
            _ms(entry.stats.p50_ms),
            _ms(entry.stats.p95_ms),
            _ms(entry.judgement.score),
            escape(str(last.get("outcome", "never probed"))),
            *(_chat_cells(entry.chat) if chat else ()),
            style="bold green" if entry.line.name == chosen else ("" if entry.judgement.eligible else "dim"),
        )
        notes.append((entry.line.name, last.get("error") or entry.judgement.why_not))
    stdout.print(table)
    _notes(notes)
    _insecure_notes(entry.line for entry in status.lines)
    if status.choice:
        stdout.print(
            f"[bold]chosen: {escape(status.choice.name)}[/] {escape(status.choice.url)} since {when(status.choice.decided_at)}: {escape(status.choice.reason)}"
        )
    else:
        stdout.print("No line chosen yet: run [bold]linepicker pick[/].")
    if status.pinned:
        stdout.print(f"[yellow]pinned by hand to {escape(status.pinned)}[/] (linepicker unpin to let the policy choose)")


def service_installed(unit: Any, as_json: bool) -> None:
    if as_json:
        print_json(
            {"kind": unit.kind, "path": str(unit.path), "changed": unit.changed, "env_file": str(unit.env_file) if unit.env_file else None, "next_steps": list(unit.next_steps)}
        )
        return
    stdout.print(f"{'wrote' if unit.changed else 'already current'}: {escape(str(unit.path))} ({unit.kind})")
    stdout.print("next:")
    for step in unit.next_steps:
        stdout.print(f"  {escape(step)}")


def service_removed(path: Any, as_json: bool) -> None:
    if as_json:
        print_json({"removed": str(path) if path else None})
    else:
        stdout.print(f"removed {escape(str(path))}" if path else "no linepicker service file was installed")


def doctor_report(diagnosis: Any, as_json: bool) -> None:
    findings = [vars(finding) for finding in diagnosis.findings]
    choice = diagnosis.choice
    if as_json:
        print_json({"chosen": {"name": choice.name, "url": choice.url} if choice else None, "findings": findings, "checked": diagnosis.checked})
        return
    if choice:
        stdout.print(f"chosen: [bold]{escape(choice.name)}[/] {escape(choice.url)}")
    for finding in diagnosis.findings:
        colour = "red" if finding.severity == "error" else "yellow"
        stdout.print(f"[{colour}]{finding.severity}:[/] {escape(finding.what)}")
        stdout.print(f"  at:  {escape(finding.where)}")
        stdout.print(f"  fix: {escape(finding.fix)}")
    if diagnosis.findings:
        errors = sum(1 for f in diagnosis.findings if f.severity == "error")
        stdout.print(f"{len(findings)} problem{'s' if len(findings) != 1 else ''} ({errors} error{'s' if errors != 1 else ''})")
    else:
        stdout.print("no problems found")
        note("checked the environment" + "".join(f", {path}" for path in diagnosis.checked))


def config_written(path: Any, in_force: Any, as_json: bool) -> None:
    if as_json:
        print_json({"path": str(path), "in_force": str(in_force)})
        return
    stdout.print(f"wrote {escape(str(path))}: edit it, or use linepicker add/remove")
    if in_force != path:
        warn(f"{in_force} is read first, so the new file is not used while that one exists")


def config_edited(edit: Any, action: str, as_json: bool) -> None:
    if as_json:
        print_json({"action": action, "config": str(edit.path), "name": edit.name, "url": edit.url, "notes": list(edit.notes)})
        return
    what = f"{edit.name} {edit.url}" if edit.url else edit.name
    stdout.print(f"{action} {escape(what)} {'to' if action == 'added' else 'from'} {escape(str(edit.path))}")
    for text in edit.notes:
        note(text)


SPARKS = "▁▂▃▄▅▆▇█"


def _bucket_json(bucket: Any) -> dict[str, Any]:
    ok = bucket.samples > bucket.failures
    return {
        "start": when(bucket.start),
        "samples": bucket.samples,
        "failures": bucket.failures,
        "p50_ms": round(bucket.p50, 3) if ok else None,
        "p10_ms": round(bucket.p10, 3) if ok and not bucket.rolled_up else None,
        "p90_ms": round(bucket.p90, 3) if ok and not bucket.rolled_up else None,
        "rolled_up": bucket.rolled_up,
    }


def history_json(history: Any) -> dict[str, Any]:
    return {
        "since": when(history.since),
        "until": when(history.until),
        "bucket_s": round(history.bucket_s, 3),
        "lines": [
            {"name": entry.line.name, "url": entry.line.url, "buckets": [_bucket_json(b) for b in entry.series.buckets]}
            for entry in history.lines
        ],
        "decisions": [_decision_json(d) for d in history.decisions],
    }


def _sparklines(buckets: list[Any], high: float) -> tuple[Any, Any]:
    """Median latency from 0 to `high` (one scale for every line, so they compare at a glance),
    coloured by failure share; and the failure share itself."""
    from rich.text import Text

    from .chart import loss_colour

    latency, failures = Text(), Text()
    for bucket in buckets:
        if not bucket.samples:
            latency.append(" ")
            failures.append(" ")
            continue
        if bucket.samples == bucket.failures:
            latency.append("✗", style="bold red")
        else:
            level = min(len(SPARKS) - 1, int(bucket.p50 / high * len(SPARKS))) if high > 0 else 0
            latency.append(SPARKS[level], style=loss_colour(bucket.failed_share))
        share = bucket.failed_share
        failures.append(SPARKS[min(len(SPARKS) - 1, int(share * len(SPARKS)))] if share else " ", style="red")
    return latency, failures


def render_history(history: Any) -> None:
    from .history import span_text

    span = history.until - history.since
    high = max((b.p50 for e in history.lines for b in e.series.buckets if b.samples > b.failures), default=0.0)
    stdout.print(
        f"[bold]last {span_text(span)}[/], one mark per {span_text(history.bucket_s)}: median time to first byte "
        f"(▁ 0 … █ {high:.0f} ms; [red]✗[/] every sample failed), share of failures below"
    )
    for entry in history.lines:
        buckets = entry.series.buckets
        medians = [b.p50 for b in buckets if b.samples > b.failures]
        samples = sum(b.samples for b in buckets)
        failed = sum(b.failures for b in buckets)
        latency, failures = _sparklines(buckets, high)
        figures = f"{min(medians):.0f}–{max(medians):.0f} ms" if medians else "no success"
        share = f"{failed / samples:.0%} failed" if samples else "never probed"
        stdout.print(f"[bold]{escape(entry.line.name)}[/] {escape(entry.line.url)}  {figures}, {share} of {samples}")
        stdout.print("  ", latency, sep="")
        if failed:
            stdout.print("  ", failures, sep="")
    if not history.decisions:
        stdout.print("no switches in this period")
        return
    table = _table(f"{len(history.decisions)} decisions", ("when", "change", "why"))
    for decision in history.decisions:
        table.add_row(when(decision.decided_at), f"{escape(decision.previous or '–')} → {escape(decision.name)}", escape(decision.reason))
    stdout.print(table)


def report_written(path: Any, history: Any, as_json: bool) -> None:
    from .history import span_text

    if as_json:
        print_json({"path": str(path), "since": when(history.since), "until": when(history.until), "lines": [e.line.name for e in history.lines]})
    else:
        stdout.print(f"wrote {escape(str(path))}: {len(history.lines)} lines, {len(history.decisions)} decisions, last {span_text(history.until - history.since)}")
