"""One round: probe the lines, record every sample, decide, hand the choice out.

This is the core that the CLI and the daemon both call, so a `pick` and a
daemon round record and decide alike; it knows nothing of how results are shown.
Everything here works on one relay (`config.relay`): the store is seen from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import policy
from .config import Config, Line
from .errors import UnknownLine
from .gatewaylease import live_gateway
from .policy import LineStats, Verdict
from .store import ChatRow, Decision, LastSample, Store

if TYPE_CHECKING:
    from . import targets
    from .probe.chat import ChatSample
    from .probe.round import LineRun, Settled
    from .probe.sample import Sample


@dataclass(frozen=True)
class LineReport:
    line: Line
    samples: list[Sample]  # this round's
    stats: LineStats  # over the policy window, this round included
    chat: ChatSample | None = None  # this round's chat probe, when one ran


@dataclass(frozen=True)
class RoundResult:
    round_id: int
    lines: list[LineReport]
    elapsed_s: float
    verdict: Verdict | None = None  # None when the round only probed
    chosen: Decision | None = None  # the choice in force after the round
    target_results: list[targets.TargetResult] = field(default_factory=list)
    target_errors: list[str] = field(default_factory=list)

    @property
    def no_eligible(self) -> bool:
        return self.verdict is not None and self.verdict.chosen is None


def finished_outcomes(samples: list[Sample]) -> list[tuple[bool, float | None]]:
    """(success, ttfb_ms) of the samples that finished: an unfinished one counts neither way."""
    return [(bool(s.success), s.phases.ttfb_ms) for s in samples if s.success is not None]


def answered_in_round(samples: list[Sample]) -> bool:
    """A line whose every finished sample this round failed is down, whatever its history says."""
    outcomes = [s.success for s in samples if s.success is not None]
    return not outcomes or any(outcomes)


class _Settled:
    """Tells a running round it can stop: no unfinished line can change the choice any more.

    Each unfinished line is judged as if its remaining samples all succeeded
    with a latency equal to how long its current request has been waiting, and
    as if its chat, if one is due, will succeed. If even then the winner is a
    line that has finished (its chat included), waiting longer cannot change
    the verdict, so a hanging line does not hold `pick` to its timeout.
    """

    def __init__(
        self,
        config: Config,
        history: dict[str, list[tuple[bool, float | None]]],
        model_errors: dict[str, str],
        current: str | None,
        pinned: str | None,
    ):
        self.config = config
        self.history = history
        self.model_errors = model_errors  # recorded before the round: they stand for lines that do not chat in it
        self.current = current
        self.pinned = pinned

    def __call__(self, runs: list[LineRun]) -> bool:
        now = time.perf_counter()
        stats = []
        for run in runs:
            outcomes = self.history[run.line.name] + finished_outcomes(run.samples)
            if run.done:
                error = chat_error(run.chat) if run.chat else self.model_errors.get(run.line.name)
                stats.append(policy.summarize(run.line.name, outcomes, answered_in_round(run.samples), error))
                continue
            waited = (now - run.inflight_since) * 1000 if run.inflight_since else 0.0
            outcomes += [(True, waited)] * (self.config.probe.samples - len(run.samples))
            stats.append(policy.summarize(run.line.name, outcomes, True))
        verdict = policy.decide(stats, self.current, self.config.policy, self.pinned)
        if verdict.chosen is None:
            return True
        return next(run.done for run in runs if run.line.name == verdict.chosen)


async def measure(
    config: Config,
    store: Store,
    kind: str,
    lines: tuple[Line, ...] | None = None,
    settled: Settled | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    line_ids: dict[str, int] | None = None,
) -> tuple[int, list[LineRun]]:
    """Probe the lines (all active ones by default) and record every sample under a new round.

    `line_ids` may be passed by a caller that already looked them up for these lines.
    """
    from .probe.round import probe_round  # here, not at the top: asyncio, ssl and aiohttp cost `status` ≈ 40 ms

    store = store.scoped(config.relay)

    lines = config.active_lines if lines is None else lines
    line_ids = store.line_ids(lines) if line_ids is None else line_ids
    round_id = store.start_round(kind)
    key = config.api_key()
    follow_up = None
    if config.probe.chat is not None and key:  # without the key a chat proves nothing (Config.missing_key says so)
        from .probe import chat

        follow_up = chat.follow_up(config.probe, key, chat_due(config, store, line_ids))
    runs = await probe_round(lines, config.probe, key, settled=settled, on_sample=on_sample, follow_up=follow_up)
    for run in runs:
        store.add_samples(round_id, line_ids, run.samples)
    store.add_chats(round_id, line_ids, [run.chat for run in runs if run.chat is not None])
    return round_id, runs


def chat_due(config: Config, store: Store, line_ids: dict[str, int]) -> set[str]:
    """Lines to chat with this round: never asked this model, last answer failed (so a line recovers
    within a round), or probe.chat.every rounds since the last answer, this round included.

    Only lines that answer a sample this round are asked (chat.answered).
    """
    chat = config.probe.chat
    assert chat is not None
    latest = store.latest_chats(line_ids)
    return {
        name
        for name in line_ids
        if (row := latest.get(name)) is None or row.model != chat.model or not row.success or row.rounds_since + 1 >= chat.every
    }


def chats_in_force(config: Config, store: Store, line_ids: dict[str, int]) -> dict[str, ChatRow]:
    """The chat probe that speaks for each line now: of the configured model, within the policy window."""
    if config.probe.chat is None:
        return {}  # chat turned off: old failures no longer count
    rows = store.latest_chats(line_ids, time.time() - config.policy.window)
    return {name: row for name, row in rows.items() if row.model == config.probe.chat.model}


def model_errors(config: Config, store: Store, line_ids: dict[str, int]) -> dict[str, str]:
    """Lines whose latest chat probe failed, with why: they are not eligible however well /v1/models answers."""
    rows = chats_in_force(config, store, line_ids)
    return {name: error for name, row in rows.items() if (error := chat_error(row))}


def chat_error(row: ChatRow | ChatSample | None) -> str | None:
    if row is None or row.success:
        return None
    return f"{row.outcome}: {row.error}" if row.error else row.outcome


def choose(
    config: Config, store: Store, stats: list[LineStats], round_id: int | None, previous: Decision | None
) -> tuple[Verdict, Decision | None]:
    """Decide from per-line stats (in config order) and record the decision if the choice changed.

    `previous` is the choice in force before the round, as the caller read it.
    """
    store = store.scoped(config.relay)
    verdict = policy.decide(stats, previous.name if previous else None, config.policy, store.pinned())
    chosen = _record_choice(config, store, verdict, previous, round_id)
    if round_id is not None:
        store.finish_round(round_id, verdict.chosen, verdict.reason)
    return verdict, chosen


def hand_out(config: Config, verdict: Verdict, chosen: Decision | None, via: str | None = None) -> tuple[list[targets.TargetResult], list[str]]:
    """Bring the target files in line with a fresh choice; nothing is written when nothing is eligible.

    `via`: the URL of a live gateway, which the targets keep naming while it serves.
    """
    from . import targets  # here, not at the top: `status` writes no target

    if chosen is None or verdict.chosen is None:
        return [], []
    return targets.write_targets(config.targets, chosen.name, via or chosen.url, config.exports)


async def run_round(
    config: Config,
    store: Store,
    kind: str,
    choose_line: bool = True,
    on_sample: Callable[[Sample], None] | None = None,
) -> RoundResult:
    """A one-shot round: `pick` when choosing (and stopping as soon as the choice is settled), `probe` when not."""
    started = time.perf_counter()
    store = store.scoped(config.relay)
    line_ids = store.line_ids(config.active_lines)
    history = store.window(line_ids, time.time() - config.policy.window)
    settled = None
    previous = store.choice()
    if choose_line:
        errors = model_errors(config, store, line_ids)
        settled = _Settled(config, history, errors, previous.name if previous else None, store.pinned())
    round_id, runs = await measure(config, store, kind, settled=settled, on_sample=on_sample, line_ids=line_ids)
    errors = model_errors(config, store, line_ids)
    reports = [
        LineReport(
            run.line,
            run.samples,
            policy.summarize(run.line.name, history[run.line.name] + finished_outcomes(run.samples), answered_in_round(run.samples), errors.get(run.line.name)),
            run.chat,
        )
        for run in runs
    ]
    if not choose_line:
        store.finish_round(round_id, None, "probe only")
        return RoundResult(round_id, reports, time.perf_counter() - started)
    verdict, chosen = choose(config, store, [r.stats for r in reports], round_id, previous)
    results, errors = hand_out(config, verdict, chosen, via=live_gateway(str(store.path), store.relay))
    return RoundResult(round_id, reports, time.perf_counter() - started, verdict, chosen, results, errors)


def _record_choice(config: Config, store: Store, verdict: Verdict, previous: Decision | None, round_id: int | None) -> Decision | None:
    """Record a decision only when the chosen line (or its URL) differs from the one in force."""
    if verdict.chosen is None:
        return previous
    line = config.line(verdict.chosen)
    assert line is not None
    if previous and previous.name == line.name and previous.url == line.url:
        return previous
    store.record_decision(line.name, line.url, previous.name if previous else None, verdict.reason, round_id)
    return store.choice()


@dataclass(frozen=True)
class LineStatus:
    line: Line
    stats: LineStats
    judgement: policy.Judgement
    last: LastSample | None  # newest sample
    chat: ChatRow | None = None  # newest chat probe in the window, when probe.chat is on


@dataclass(frozen=True)
class Status:
    lines: list[LineStatus]
    choice: Decision | None
    pinned: str | None
    decisions: list[Decision]
    window_s: float


def status(config: Config, store: Store) -> Status:
    """The record as the policy sees it now, without probing."""
    store = store.scoped(config.relay)
    lines = config.active_lines
    line_ids = store.line_ids(lines)
    window = store.window(line_ids, time.time() - config.policy.window)
    up = store.latest_round_up(line_ids)
    last = store.last_samples(line_ids)
    chats = chats_in_force(config, store, line_ids)
    entries = []
    for line in lines:
        chat = chats.get(line.name)
        stats = policy.summarize(line.name, window[line.name], up.get(line.name, True), chat_error(chat))
        entries.append(LineStatus(line, stats, policy.judge(stats, config.policy), last.get(line.name), chat))
    return Status(entries, store.choice(), store.pinned(), store.decisions(10), config.policy.window)


def pin(config: Config, store: Store, name: str) -> tuple[Decision | None, list[targets.TargetResult], list[str]]:
    """Pinning takes effect at once: the choice, `env` and the target files all follow it now."""
    from . import targets

    store = store.scoped(config.relay)
    line = config.line(name)
    if line is None:
        known = ", ".join(line.name for line in config.lines)
        raise UnknownLine(f"no line named {name!r} in {config.source} (lines: {known})")
    store.set_pinned(name)
    previous = store.choice()
    if not previous or previous.name != line.name or previous.url != line.url:
        store.record_decision(line.name, line.url, previous.name if previous else None, "pinned by hand", None)
    results, errors = targets.write_targets(config.targets, line.name, live_gateway(str(store.path), store.relay) or line.url, config.exports)
    return store.choice(), results, errors
