"""The JSON documents linepicker hands to scripts: `--json` output and the daemon's /api/status.

Kept apart from the terminal rendering so the daemon serves the very same
documents without importing rich, and field names live in one place.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..config import BUNDLED, Config
from ..picker import LineReport, RoundResult, Status
from ..policy import Judgement, LineStats, judge
from ..probe.phases import median_phases
from ..store import Decision

if TYPE_CHECKING:
    from ..doctor import Finding
    from ..probe.sample import Sample


def last_error(samples: list[Sample]) -> str | None:
    return next((s.error for s in reversed(samples) if s.error), None)


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "seq": sample.seq,
        "started_at": iso_time(sample.started_at),
        "outcome": sample.outcome,
        "success": sample.success,
        "status": sample.status,
        "error": sample.error,
        "phases": vars(sample.phases),
    }


def _stats_json(stats: LineStats, judgement: Judgement, measured: bool = True) -> dict[str, Any]:
    """A line's figures over the policy window; `healthy` is null for a line not measured in its latest round."""
    parts = judgement.parts
    return {
        "healthy": judgement.eligible if measured else None,
        "p50_ms": None if stats.p50_ms is None else round(stats.p50_ms, 3),
        "p95_ms": None if stats.p95_ms is None else round(stats.p95_ms, 3),
        "success_rate": stats.success_rate,
        "samples_in_window": stats.samples,
        "score": None if judgement.score is None else round(judgement.score, 3),
        "score_parts": None if parts is None else {name: round(value, 3) for name, value in vars(parts).items()},
        "score_is_lower_bound": judgement.lower_bound,
        "evidence": round(stats.evidence, 2),
        "unanswered_in_window": stats.unanswered,
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
        "at": iso_time(chat.started_at),
    }


def decision_json(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "name": decision.name,
        "url": decision.url,
        "previous": decision.previous,
        "reason": decision.reason,
        "decided_at": iso_time(decision.decided_at),
    }


def judgement_of(result: RoundResult, report: LineReport, config: Config) -> Judgement:
    if result.verdict is not None:
        return result.verdict.judgements[report.line.name]
    return judge(report.stats, config.policy)


def no_eligible_hint(result: RoundResult, config: Config) -> str | None:
    """The likely cause when no line is eligible: what every failed sample of the round has in common.

    Seven lines all failing DNS is the network (or the URLs), not seven bad lines; the bundled
    example config means the user has not named their own relay yet.
    """
    from ..probe.outcomes import AUTH, DNS, MISSING_MODEL, NOT_API, REFUSED, RESET, TIMEOUT, TLS, UNREACHABLE

    finished = [sample for report in result.lines for sample in report.samples if sample.success is not None]
    kinds = {sample.outcome for sample in finished}
    causes = []
    if finished and not any(sample.success for sample in finished):
        if kinds == {DNS}:
            causes.append(f"no line's host name resolved: check the network, then the URLs in {config.source}")
        elif kinds <= {DNS, REFUSED, UNREACHABLE, RESET, TIMEOUT}:
            causes.append(f"no line could be reached ({', '.join(sorted(kinds))}): check the network, a firewall or the proxy (HTTPS_PROXY, or proxy: on a line)")
        elif kinds == {AUTH}:
            causes.append(f"every line refused the key in ${config.key_env}: check it on the relay's dashboard (all lines of a relay take the same key)")
        elif kinds == {NOT_API}:
            causes.append("every line answered with a page that is not the API (a block page, captive portal or login): this network blocks the relay; try a proxy (proxy: on a line) or another network")
        elif kinds == {TLS}:
            causes.append("every line failed TLS: something may intercept HTTPS (a corporate proxy: trust its CA with SSL_CERT_FILE)")
        elif kinds == {MISSING_MODEL}:
            causes.append(f"no line lists every model of probe.require_models ({', '.join(config.probe.require_models)})")
    if config.origin == BUNDLED:
        causes.append("this is linepicker's bundled example config: run 'linepicker init', then 'linepicker add NAME URL' for each line of your relay")
    return "; ".join(causes) or None


def round_json(result: RoundResult, config: Config, with_samples: bool, client_checks: Sequence[Finding] = ()) -> dict[str, Any]:
    lines = []
    for report in result.lines:
        entry = {"name": report.line.name, "url": report.line.url, "insecure": report.line.insecure}
        entry.update(_stats_json(report.stats, judgement_of(result, report, config), report.measured))
        entry["error"] = last_error(report.samples)
        entry["outcomes"] = [s.outcome for s in report.samples]
        entry["phases"] = vars(median_phases(report.answered))
        if config.probe.chat is not None:
            entry["chat"] = _chat_json(report.chat)
        if with_samples:
            entry["samples"] = [_sample_json(s) for s in report.samples]
        lines.append(entry)
    data: dict[str, Any] = {
        "config": str(config.source), "round_id": result.round_id, "elapsed_s": round(result.elapsed_s, 3), "latency": config.policy.latency,
    }
    if result.verdict is not None:
        chosen = result.chosen if result.verdict.chosen else None
        data["chosen"] = {"name": chosen.name, "url": chosen.url} if chosen else None
        data["changed"] = result.verdict.changed
        data["reason"] = result.verdict.reason
        data["kept"] = decision_json(result.chosen) if result.no_eligible else None
        data["hint"] = no_eligible_hint(result, config) if result.no_eligible else None
        data["targets"] = [{"kind": t.kind, "path": str(t.path), "changed": t.changed} for t in result.target_results]
        data["target_errors"] = result.target_errors
        data["client_checks"] = [vars(finding) for finding in client_checks]  # doctor's findings on the targets just written
    data["lines"] = lines
    return data


def status_json(status: Status, config: Config, line_extras: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """`status --json`; the daemon adds what only it knows about each line through `line_extras` (by name)."""
    lines = []
    for entry in status.lines:
        item = {"name": entry.line.name, "url": entry.line.url, "insecure": entry.line.insecure}
        item.update(_stats_json(entry.stats, entry.judgement, entry.measured))
        item["last_outcome"] = entry.last.outcome if entry.last else None
        item["error"] = entry.last.error if entry.last else None
        item["last_probed_at"] = iso_time(entry.last.at) if entry.last else None
        if config.probe.chat is not None:
            item["chat"] = _chat_json(entry.chat)
        item.update((line_extras or {}).get(entry.line.name, {}))
        lines.append(item)
    return {
        "config": str(config.source),
        "window_s": status.window_s,
        "latency": config.policy.latency,
        "chosen": {"name": status.choice.name, "url": status.choice.url} if status.choice else None,
        "choice": decision_json(status.choice),
        "pinned": status.pinned,
        "decisions": [decision_json(d) for d in status.decisions],
        "lines": lines,
    }


def with_relays(documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One document for several relays: the first relay's at the top, as before relays, and every relay's under `relays`.

    So a script written for one relay reads the same fields as ever, and with
    several relays the top level is the first one shown (the file's first
    relay, or the first --relay); `relays[]` holds each with its `name`.
    """
    top = dict(documents[0][1])
    top["relays"] = [{"name": name, **{key: value for key, value in document.items() if key != "config"}} for name, document in documents]
    return top


def bucket_json(bucket: Any) -> dict[str, Any]:
    ok = bucket.samples > bucket.failures
    return {
        "start": iso_time(bucket.start),
        "samples": bucket.samples,
        "failures": bucket.failures,
        "p50_ms": round(bucket.p50, 3) if ok else None,
        "p10_ms": round(bucket.p10, 3) if ok and not bucket.rolled_up else None,
        "p90_ms": round(bucket.p90, 3) if ok and not bucket.rolled_up else None,
        "rolled_up": bucket.rolled_up,
    }


def history_json(history: Any) -> dict[str, Any]:
    return {
        "since": iso_time(history.since),
        "until": iso_time(history.until),
        "bucket_s": round(history.bucket_s, 3),
        "lines": [
            {"name": entry.line.name, "url": entry.line.url, "buckets": [bucket_json(b) for b in entry.series.buckets]}
            for entry in history.lines
        ],
        "decisions": [decision_json(d) for d in history.decisions],
    }


