"""What the CLI prints: rich tables for people, the JSON documents for scripts.

Only the CLI imports this module (rich costs start-up time, and the daemon
logs instead of printing). Results go to stdout; notes, warnings, errors and progress go to stderr, so
`linepicker pick --json | jq` and `eval "$(linepicker env)"` stay clean.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from rich.console import Console
from rich.table import Table

from ..clientenv import DEFAULT_RELAY
from ..config import Config, Line, Setup
from ..picker import RoundResult, Status
from ..policy import Judgement, LineStats
from ..probe.phases import median_phases
from ..words import counted
from .documents import iso_time, judgement_of, last_error, no_eligible_hint
from .documents import with_relays as documents_with_relays

if TYPE_CHECKING:
    from ..probe.sample import Sample

# A terminal gets tables fitted to its width; a pipe or a file gets every cell whole (rich would
# assume 80 columns and cut "unfinished" to "unfini…"), and whatever reads it can cut for itself.
UNBOUNDED = 10_000
stdout = Console(
    highlight=False, soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else UNBOUNDED
)  # a relay's error text is shown as sent: ":x:" stays ":x:"
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


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


def config_note(config: Config | Setup, with_notes: bool = False) -> None:
    """Which file, and its warnings; its notes (a /v1 taken off a URL) only where the config is inspected,
    as a valid file must not repeat them on every run."""
    note(f"config: {config.source} ({config.origin})")
    for warning in config.warnings:
        warn(warning)
    for text in config.notes if with_notes else ():
        note(f"note: {text}")


def for_relay(setup: Setup, config: Config, message: str) -> str:
    """A message about one relay says which, once the file has several."""
    return f"relay {config.relay}: {message}" if setup.named else message


def relay_heading(setup: Setup, config: Config) -> None:
    """A rule above each relay's table, only when the file declares relays: (a one-relay file prints as it always did)."""
    if setup.named:
        stdout.rule(f"[bold]relay {escape(config.relay)}[/]", align="left")


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


def _score(judgement: Judgement) -> str:
    """A score that counts unanswered requests at their wait so far is a floor: '> N'."""
    if judgement.score is None:
        return "-"
    return f"> {judgement.score:.1f}" if judgement.lower_bound else f"{judgement.score:.1f}"


def _wait_cells(judgement: Judgement, stats: LineStats) -> tuple[str, str]:
    """The score's p50 and tail parts; blank for a line that never answered, whose only waits are floors."""
    if judgement.parts is None or not stats.successes:
        return "-", "-"
    return _ms(judgement.parts.p50_ms), _ms(judgement.parts.tail_ms)


def _waited(samples: list[Sample]) -> str:
    """A line not answered this round: how long it was waited for, never a verdict."""
    waits = [s.phases.total_ms for s in samples if s.success is None and s.phases.total_ms is not None]
    return f"> {max(waits):.0f} ms" if waits else "-"


def _latency_words(config: Config) -> str:
    if config.policy.latency == "warm":
        return "waits: time to first byte, as on a kept-alive connection"
    return "waits: dns + connect + tls + ttfb, as on a fresh connection"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _outcomes(samples: list[Sample]) -> str:
    counts = Counter(s.outcome for s in samples)
    return ", ".join(f"{outcome} ×{n}" if n > 1 else outcome for outcome, n in counts.items())


def _chat_cells(chat: Any) -> tuple[str, str]:
    if chat is None:
        return "-", "-"
    if not chat.success:
        return "[red]✗[/]", "-"
    return _ms(chat.ttft_ms), "-" if chat.tokens_per_s is None else f"{chat.tokens_per_s:.0f}"


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
    headers = ("", "line", "outcome", "dns", "connect", "tls", "ttfb", "p50", "tail", "success", "score") + (("ttft", "tok/s") if chat else ())
    rows, styles, notes = [], [], []
    for report in result.lines:
        judgement = judgement_of(result, report, config)
        phases = median_phases(report.answered)
        rows.append((
            "▶" if report.line.name == chosen else "",
            escape(report.line.name) + (" [bold red](insecure)[/]" if report.line.insecure else ""),
            escape(_outcomes(report.samples)),
            _ms(phases.dns_ms),
            _ms(phases.connect_ms),
            _ms(phases.tls_ms),
            _ms(phases.ttfb_ms) if report.measured else _waited(report.samples),
            *_wait_cells(judgement, report.stats),
            _rate(report.stats.success_rate),
            _score(judgement),
            *(_chat_cells(report.chat) if chat else ()),
        ))
        styles.append("bold green" if report.line.name == chosen else ("" if judgement.eligible else "dim"))
        notes.append((report.line.name, last_error(report.samples) or judgement.why_not))
    # No lookup for an IP address, no handshake over http: a column of dashes only takes room from the others.
    shown = [i for i, header in enumerate(headers) if header not in ("dns", "tls") or any(row[i] != "-" for row in rows)]
    table = _table(f"{counted(len(result.lines), 'line')}, {result.elapsed_s:.2f} s", tuple(headers[i] for i in shown))
    for row, style in zip(rows, styles):
        table.add_row(*(row[i] for i in shown), style=style)
    stdout.print(table)
    _notes(notes)
    _insecure_notes(report.line for report in result.lines)
    stdout.print(f"[dim]phases: this round's medians in ms; p50, tail, success and score: the policy window ({_latency_words(config)})[/]")
    if chat:
        stdout.print(f"[dim]ttft, tok/s: this round's chat with {escape(config.probe.chat.model)} (- : not due or the line did not answer)[/]")
    if result.verdict is None:
        return
    if result.no_eligible:
        kept = f"keeping {result.chosen.name} ({result.chosen.url})" if result.chosen else "and no earlier choice to keep"
        stdout.print(f"[red]No line is eligible[/], {escape(kept)}.")
        if hint := no_eligible_hint(result, config):
            stdout.print(f"likely cause: {escape(hint)}")
    elif result.chosen:
        verb = "switched to" if result.verdict.changed else "keeping"
        stdout.print(f"[bold]{verb} {escape(result.chosen.name)}[/] {escape(result.chosen.url)}: {escape(result.verdict.reason)}")
    for target in result.target_results:
        stdout.print(f"{'updated' if target.changed else 'already current'}: {target.path}")
    for message in result.target_errors:
        error(message)


def client_warnings(findings: list[Any]) -> None:
    """doctor's findings on the files just written: warnings here, as the write itself succeeded."""
    for finding in findings:
        warn(f"{finding.what}\n  at:  {finding.where}\n  fix: {finding.fix}")


def render_status(status: Status) -> None:
    chosen = status.choice.name if status.choice else None
    chat = any(entry.chat for entry in status.lines)
    headers = ("", "line", "samples", "success", "p50", "tail", "score", "last outcome") + (("ttft", "tok/s") if chat else ())
    table = _table(f"last {status.window_s / 60:g} min", headers)
    notes = []
    for entry in status.lines:
        table.add_row(
            "▶" if entry.line.name == chosen else "",
            escape(entry.line.name) + (" [bold red](insecure)[/]" if entry.line.insecure else ""),
            str(entry.stats.samples),
            _rate(entry.stats.success_rate),
            *_wait_cells(entry.judgement, entry.stats),
            _score(entry.judgement),
            escape(entry.last.outcome if entry.last else "never probed"),
            *(_chat_cells(entry.chat) if chat else ()),
            style="bold green" if entry.line.name == chosen else ("" if entry.judgement.eligible else "dim"),
        )
        notes.append((entry.line.name, (entry.last and entry.last.error) or entry.judgement.why_not))
    stdout.print(table)
    _notes(notes)
    _insecure_notes(entry.line for entry in status.lines)
    stdout.print("[dim]p50, tail: the median wait in ms and half its spread to p90; score adds failures and thin evidence (--json: score_parts)[/]")
    if status.choice:
        stdout.print(
            f"[bold]chosen: {escape(status.choice.name)}[/] {escape(status.choice.url)} since {iso_time(status.choice.decided_at)}: {escape(status.choice.reason)}"
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


def doctor_reports(diagnoses: list[tuple[str, Any]], as_json: bool, named: bool) -> None:
    """Each relay's findings under its name; a one-relay file prints exactly what `doctor` always did."""
    if not named:
        [(_, diagnosis)] = diagnoses
        doctor_report(diagnosis, as_json, relay=diagnoses[0][0])
        return
    if as_json:
        documents = [(relay, _doctor_json(diagnosis)) for relay, diagnosis in diagnoses]
        data = documents_with_relays(documents)
        data["findings"] = [finding for _, document in documents for finding in document["findings"]]
        data["checked"] = list(dict.fromkeys(path for _, document in documents for path in document["checked"]))
        print_json(data)
        return
    for relay, diagnosis in diagnoses:
        stdout.rule(f"[bold]relay {escape(relay)}[/]", align="left")
        _doctor_text(diagnosis, summary=False)
    findings = [finding for _, diagnosis in diagnoses for finding in diagnosis.findings]
    _doctor_summary(findings, list(dict.fromkeys(path for _, diagnosis in diagnoses for path in diagnosis.checked)))


def _doctor_json(diagnosis: Any) -> dict[str, Any]:
    choice = diagnosis.choice
    return {"chosen": {"name": choice.name, "url": choice.url} if choice else None, "findings": [vars(f) for f in diagnosis.findings], "checked": diagnosis.checked}


def doctor_report(diagnosis: Any, as_json: bool, relay: str | None = None) -> None:
    if as_json:
        print_json(documents_with_relays([(relay, _doctor_json(diagnosis))]) if relay else _doctor_json(diagnosis))
        return
    _doctor_text(diagnosis, summary=True)


def _doctor_text(diagnosis: Any, summary: bool) -> None:
    choice = diagnosis.choice
    if choice:
        stdout.print(f"chosen: [bold]{escape(choice.name)}[/] {escape(choice.url)}")
    for finding in diagnosis.findings:
        colour = "red" if finding.severity == "error" else "yellow"
        stdout.print(f"[{colour}]{finding.severity}:[/] {escape(finding.what)}")
        stdout.print(f"  at:  {escape(finding.where)}")
        stdout.print(f"  fix: {escape(finding.fix)}")
    if summary:
        _doctor_summary(diagnosis.findings, diagnosis.checked)


def _doctor_summary(findings: list[Any], checked: list[str]) -> None:
    if findings:
        errors = sum(1 for f in findings if f.severity == "error")
        stdout.print(f"{counted(len(findings), 'problem')} ({counted(errors, 'error')})")
    else:
        stdout.print("no problems found")
        note("checked the environment" + "".join(f", {path}" for path in checked))


def config_written(path: Any, in_force: Any, plain_run_reads: Any, as_json: bool) -> None:
    """Where the file went, and the first steps after it, the start-up line naming the user's shell."""
    import shlex

    from ..clientenv import RC_LINES, detect_shell

    if as_json:
        print_json({"path": str(path), "in_force": str(in_force)})
        return
    stdout.print(f"wrote {escape(str(path))}: edit it, or use linepicker add/remove")
    if in_force != path:
        warn(f"{in_force} is read first, so the new file is not used while that one exists")
    flag = "" if plain_run_reads == path else f" --config {shlex.quote(str(path))}"
    rc_file, rc_line = RC_LINES[detect_shell()]
    steps = (
        (f"linepicker add{flag} NAME URL", "once per line (BaseURL) your relay publishes"),
        (f"linepicker pick{flag}", "probe them and choose one"),
        (rc_line, f"at the end of {rc_file}: every new shell gets the choice"),
    )
    width = max(len(step) for step, _ in steps)
    stdout.print("next:")
    for step, why in steps:
        stdout.print(f"  {escape(step.ljust(width))}  [dim]# {escape(why)}[/]")


def config_edited(edit: Any, action: str, as_json: bool) -> None:
    if as_json:
        relay = {"relay": edit.relay} if edit.relay else {}
        print_json({"action": action, "config": str(edit.path), "name": edit.name, "url": edit.url, "notes": list(edit.notes), **relay})
        return
    name = f"{edit.relay}/{edit.name}" if edit.relay else edit.name
    what = f"{name} {edit.url}" if edit.url else name
    stdout.print(f"{action} {escape(what)} {'to' if action == 'added' else 'from'} {escape(str(edit.path))}")
    for text in edit.notes:
        note(text)


SPARKS = "▁▂▃▄▅▆▇█"
OUTLIER = "▲"  # a median above the sparklines' scale


def sparklines(buckets: list[Any], high: float) -> tuple[Any, Any]:
    """Median latency from 0 to `high` (one scale for every line, so they compare at a glance; series.robust_top
    keeps a lone spike from setting it), coloured by failure share, ▲ above the scale; and the failure share itself."""
    from rich.text import Text

    from .svg import loss_colour

    latency, failures = Text(), Text()
    for bucket in buckets:
        if not bucket.samples:
            latency.append(" ")
            failures.append(" ")
            continue
        if bucket.samples == bucket.failures:
            latency.append("✗", style="bold red")
        elif bucket.p50 > high:
            latency.append(OUTLIER, style=f"bold {loss_colour(bucket.failed_share)}")
        else:
            level = min(len(SPARKS) - 1, int(bucket.p50 / high * len(SPARKS))) if high > 0 else 0
            latency.append(SPARKS[level], style=loss_colour(bucket.failed_share))
        share = bucket.failed_share
        failures.append(SPARKS[min(len(SPARKS) - 1, int(share * len(SPARKS)))] if share else " ", style="red")
    return latency, failures


def render_history(history: Any) -> None:
    from .series import robust_top, span_text

    span = history.until - history.since
    medians = [b.p50 for e in history.lines for b in e.series.buckets if b.samples > b.failures]
    high = robust_top(medians)
    above = f"; {OUTLIER} above {high:.0f} ms, up to {max(medians):.0f}" if medians and max(medians) > high else ""
    stdout.print(
        f"[bold]last {span_text(span)}[/], one mark per {span_text(history.bucket_s)}: median time to first byte "
        f"(▁ 0 … █ {high:.0f} ms{above}; [red]✗[/] every sample failed), share of failures below"
    )
    for entry in history.lines:
        buckets = entry.series.buckets
        medians = [b.p50 for b in buckets if b.samples > b.failures]
        samples = sum(b.samples for b in buckets)
        failed = sum(b.failures for b in buckets)
        latency, failures = sparklines(buckets, high)
        figures = f"{min(medians):.0f}–{max(medians):.0f} ms" if medians else "no success"
        share = f"{failed / samples:.0%} failed" if samples else "never probed"
        stdout.print(f"[bold]{escape(entry.line.name)}[/] {escape(entry.line.url)}  {figures}, {share} of {samples}")
        stdout.print("  ", latency, sep="")
        if failed:
            stdout.print("  ", failures, sep="")
    if not history.decisions:
        stdout.print("no switches in this period")
        return
    table = _table(counted(len(history.decisions), "decision"), ("when", "change", "why"))
    for decision in history.decisions:
        table.add_row(iso_time(decision.decided_at), f"{escape(decision.previous or '–')} → {escape(decision.name)}", escape(decision.reason))
    stdout.print(table)


def report_written(path: Any, histories: list[tuple[str | None, Any]], as_json: bool) -> None:
    """`histories`: each relay's (its name, or None in a one-relay file) history, as the report shows them."""
    from .series import span_text

    history = histories[0][1]
    if as_json:
        documents = [(relay or DEFAULT_RELAY, {"lines": [e.line.name for e in h.lines]}) for relay, h in histories]
        print_json({"path": str(path), "since": iso_time(history.since), "until": iso_time(history.until), **documents_with_relays(documents)})
        return
    lines = sum(len(h.lines) for _, h in histories)
    decisions = sum(len(h.decisions) for _, h in histories)
    relays = f" in {len(histories)} relays" if histories[0][0] else ""
    stdout.print(f"wrote {escape(str(path))}: {counted(lines, 'line')}{relays}, {counted(decisions, 'decision')}, last {span_text(history.until - history.since)}")
