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
from .policy import LineStats, Observation, Verdict
from .store import ChatRow, Decision, LastSample, Store

if TYPE_CHECKING:
    from . import targets
    from .probe.chat import ChatSample
    from .probe.round import LineRun, Settled
    from .probe.timing import Stamps
    from .probe.sample import Sample


@dataclass(frozen=True)
class LineReport:
    line: Line
    samples: list[Sample]  # this round's
    stats: LineStats  # over the policy window, this round included
    chat: ChatSample | None = None  # this round's chat probe, when one ran

    @property
    def answered(self) -> list[Sample]:
        """This round's samples that got an answer (or failed): the ones whose phases are measurements."""
        return [s for s in self.samples if s.success is not None]

    @property
    def measured(self) -> bool:
        """Answered at least once this round; a line that was not is neither healthy nor unhealthy yet."""
        return bool(self.answered)


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


def observations(samples: list[Sample], round_id: int | None) -> list[Observation]:
    """A round's samples as the policy reads them; an unfinished one counts at the wait it had reached."""
    found = []
    for s in samples:
        answered = s.success is not None
        waited = None if answered else s.phases.total_ms
        setup = (s.phases.dns_ms or 0.0) + (s.phases.connect_ms or 0.0) + (s.phases.tls_ms or 0.0)
        found.append(Observation(s.started_at, s.success, setup, s.phases.ttfb_ms, waited, round_id))
    return found


def latest_round_answered(found: list[Observation]) -> bool:
    """Whether the newest round in a line's record got any answer from it (True for a line never probed)."""
    rounds = [o.round for o in found if o.round is not None]
    if not rounds:
        return True
    return any(o.success is not None for o in found if o.round == rounds[-1])


def answered_in_round(samples: list[Sample]) -> bool:
    """A line whose every finished sample this round failed is down, whatever its history says."""
    outcomes = [s.success for s in samples if s.success is not None]
    return not outcomes or any(outcomes)


class _Settled:
    """Tells a running round it can stop: waiting longer cannot change the choice, and every line has
    answered once or has kept a client waiting longer than a failure costs.

    Each unfinished line is judged at the best it can still do: its request in
    flight counts as a success that took at least as long as it has waited, its
    samples still to come as successes, its chat (if due) as one that will
    work. These are the statistics of the verdict itself, where the request
    left unanswered counts at its wait so far, so the verdict cannot contradict
    the stop. If even then the winner is a line that has finished (its chat
    included), the choice is settled.

    A line that can no longer win is still waited for until it answers once, up
    to policy.failure_penalty_ms: so a slow line is measured and recorded
    rather than shown unknown, while a hanging one does not hold `pick` to its
    timeout.
    """

    def __init__(
        self,
        config: Config,
        history: dict[str, list[Observation]],
        model_errors: dict[str, str],
        current: str | None,
        pinned: str | None,
        round_id: int | None = None,
    ):
        self.config = config
        self.history = history
        self.model_errors = model_errors  # recorded before the round: they stand for lines that do not chat in it
        self.current = current
        self.pinned = pinned
        self.round_id = round_id

    def __call__(self, runs: list[LineRun]) -> bool:
        verdict = policy.decide([self.best_case(run) for run in runs], self.current, self.config.policy, self.pinned)
        if verdict.chosen is None:
            return True
        if not next(run.done for run in runs if run.line.name == verdict.chosen):
            return False
        patience = self.config.policy.failure_penalty_ms
        return all(run.done or _answered(run) or _waited_ms(run) >= patience for run in runs)

    def best_case(self, run: LineRun) -> LineStats:
        settings = self.config.policy
        found = self.history[run.line.name] + observations(run.samples, self.round_id)
        if run.done:
            error = chat_error(run.chat) if run.chat else self.model_errors.get(run.line.name)
            return policy.summarize(run.line.name, found, settings, answered_in_round(run.samples), error)
        if run.inflight is not None:
            found.append(_in_flight(run.inflight, self.round_id))
        pending = 0 if run.sampled else max(0, self.config.probe.samples - len(run.samples) - (run.inflight is not None))
        up = answered_in_round(run.samples) if run.sampled else True
        return policy.summarize(run.line.name, found, settings, up, optimistic=True, pending=pending)


def _answered(run: LineRun) -> bool:
    return any(s.success is not None for s in run.samples)


def _waited_ms(run: LineRun) -> float:
    return (time.perf_counter() - run.inflight.start) * 1000 if run.inflight is not None else 0.0


def _in_flight(stamps: Stamps, round_id: int | None) -> Observation:
    """The request a line is waiting on, as a censored observation: its wait (and its ttfb, once
    the request is out) is at least as long as it has been so far."""
    phases = stamps.unanswered(time.perf_counter())
    waited = phases.total_ms or 0.0
    return Observation(time.time() - waited / 1000, None, ttfb_ms=phases.ttfb_ms, waited_ms=waited, round=round_id)


async def measure(
    config: Config,
    store: Store,
    kind: str,
    lines: tuple[Line, ...] | None = None,
    settle: Callable[[int], Settled] | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    line_ids: dict[str, int] | None = None,
) -> tuple[int, list[LineRun]]:
    """Probe the lines (all active ones by default) and record every sample under a new round.

    `settle`, given the new round's id, makes the early stop (see _Settled); `line_ids` may be passed
    by a caller that already looked them up for these lines.
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
    settled = settle(round_id) if settle else None
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
    settle = None
    previous = store.choice()
    if choose_line:
        errors = model_errors(config, store, line_ids)
        current, pinned = previous.name if previous else None, store.pinned()

        def settle(round_id: int) -> _Settled:
            return _Settled(config, history, errors, current, pinned, round_id)

    round_id, runs = await measure(config, store, kind, settle=settle, on_sample=on_sample, line_ids=line_ids)
    errors = model_errors(config, store, line_ids)
    reports = [
        LineReport(
            run.line,
            run.samples,
            policy.summarize(
                run.line.name,
                history[run.line.name] + observations(run.samples, round_id),
                config.policy,
                answered_in_round(run.samples),
                errors.get(run.line.name),
            ),
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
    measured: bool = True  # False: its latest round left it unanswered (pick did not wait), so it is neither healthy nor not


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
        found = window[line.name]
        stats = policy.summarize(line.name, found, config.policy, up.get(line.name, True), chat_error(chat))
        entries.append(LineStatus(line, stats, policy.judge(stats, config.policy), last.get(line.name), chat, latest_round_answered(found)))
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
