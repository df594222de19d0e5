"""Choose a line from its recent record, without flapping.

Pure functions over plain data: the same judgement serves a one-shot `pick`,
the daemon and the early stop of a round, and tests need no network. The
input is a list of `Observation`s per line, whatever measured them: probes
time a line and say whether it answers, and the gateway's real requests add
whether it served them.

A line's score is in milliseconds of what a client waits for (README, "How
the choice is made"): the recency-weighted median wait, plus how much waits
exceed it on average (so lost SYNs and jitter cost what they cost), plus the
expected cost of failures, plus an allowance for thin evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from .config import PolicySettings  # only its fields are read: the policy stays standard library alone

CONFIDENCE_Z = 1.0  # the failure share is judged at one standard error above what was seen (Wilson)


@dataclass(slots=True)  # not frozen: a frozen dataclass is four times slower to make, and a window holds 45,000
class Observation:
    """One request to a line, as the policy judges it.

    An unanswered request (`success` None: still waiting, or not waited for)
    counts as a wait of at least `waited_ms` (its ttfb: at least `ttfb_ms`), a
    censored observation: it can only make the line look slower than it is known to be.
    """

    at: float  # unix time the request started
    success: bool | None
    setup_ms: float | None = None  # dns + connect + tls: what a new connection costs before the request goes out
    ttfb_ms: float | None = None  # unanswered: the time since the request was sent, if it was
    waited_ms: float | None = None  # unanswered: the whole wait so far
    round: int | None = None  # the probe round that made it; None for requests outside rounds
    kind: str = "probe"
    partial: bool = False  # its round probed only some lines (a re-check, the chosen line's watch)

    def wait_ms(self, latency: str) -> float | None:
        """What a client waited for the answer: on a fresh connection everything up to the first
        byte, on a kept-alive one ("warm") the time to first byte alone. None for a failure."""
        if self.success is None:
            return (self.waited_ms or 0.0) if latency == "fresh" else (self.ttfb_ms or 0.0)
        if not self.success or self.ttfb_ms is None:
            return None
        if latency == "warm":
            return self.ttfb_ms
        return (self.setup_ms or 0.0) + self.ttfb_ms


@dataclass(frozen=True)
class LineStats:
    name: str
    samples: int  # answered samples in the window (unanswered ones excluded)
    successes: int
    p50_ms: float | None  # of the successful samples' time to first byte, unweighted: what the record shows
    p95_ms: float | None
    up: bool = True  # the caller's verdict on the latest evidence: a line that just died is not up
    model_error: str | None = None  # the latest chat probe failed: the API lists models but cannot answer
    # The policy's own figures: recency-weighted, in the configured latency, unanswered requests at their wait so far.
    wait_p50_ms: float | None = None
    wait_excess_ms: float | None = None  # how far waits exceed the median, on average (0 for the faster half)
    failure_share: float | None = None  # weighted share of the answered samples that failed
    evidence: float = 0.0  # effective number of answered samples of rounds over every line, after weighting (Kish)
    unanswered: int = 0  # requests counted at their wait so far
    forgiven: int = 0  # samples of an outage the line has since recovered from, left out

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.samples if self.samples else None


@dataclass(frozen=True)
class ScoreParts:
    """The score, in parts that add up to it, each in milliseconds."""

    p50_ms: float  # the median wait
    tail_ms: float  # the average excess of a wait over the median: what slow requests add
    failure_ms: float  # failure share x failure_penalty_ms
    confidence_ms: float  # the failure share's upper bound minus the share, x failure_penalty_ms: thin evidence costs

    @property
    def total(self) -> float:
        return self.p50_ms + self.tail_ms + self.failure_ms + self.confidence_ms


@dataclass(frozen=True)
class Judgement:
    score: float | None  # lower is better; None when not eligible
    eligible: bool
    why_not: str | None  # why a line is not eligible, in words
    parts: ScoreParts | None = None  # whenever the line has a wait to judge, eligible or not
    lower_bound: bool = False  # unanswered requests count at their wait so far: the score is at least this


@dataclass(frozen=True)
class Verdict:
    chosen: str | None  # None: nothing eligible, the previous choice stays in force
    previous: str | None
    changed: bool
    reason: str
    judgements: dict[str, Judgement]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, so p50 of two values is their mean."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def weighted_quantile(pairs: Iterable[tuple[float, float]], fraction: float) -> float | None:
    """Quantile of (value, weight) pairs: each value stands at the middle of its weight (Hazen),
    so one heavy new sample moves the median as far as its weight says, and equal weights give
    the ordinary median."""
    ordered = sorted((value, weight) for value, weight in pairs if weight > 0)
    if not ordered:
        return None
    total = sum(weight for _, weight in ordered)
    target = fraction * total
    below = 0.0
    previous: tuple[float, float] | None = None  # (value, its middle)
    for value, weight in ordered:
        middle = below + weight / 2
        if target <= middle:
            if previous is None:
                return value
            low, low_middle = previous
            return low + (value - low) * (target - low_middle) / (middle - low_middle)
        previous = (value, middle)
        below += weight
    return ordered[-1][0]


def redistribute(waits: Iterable[tuple[float, float, bool]]) -> list[tuple[float, float]]:
    """(value, weight) pairs from (value, weight, censored) ones, as Kaplan-Meier does (Efron's
    redistribution to the right): a censored wait says only "longer than this", so its weight goes
    to the longer waits seen, in proportion to theirs; with none longer it stays where it is, the
    least the wait can be. A request cut short at 10 ms on a 50 ms line then changes nothing, while
    one left hanging past everything the line ever answered in pulls its quantiles up."""
    ordered = sorted(waits, key=lambda item: (item[0], item[2]))  # at a tie, the answered wait comes first
    suffix = [0.0] * (len(ordered) + 1)
    for index in range(len(ordered) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + ordered[index][1]
    scale = 1.0  # every weight to the right of the position reached is multiplied by this
    result = []
    for index, (value, weight, censored) in enumerate(ordered):
        mass = weight * scale
        if censored and suffix[index + 1] > 0:
            scale += mass / suffix[index + 1]
            continue
        result.append((value, mass))
    return result


def mean_excess(masses: Sequence[tuple[float, float]], threshold: float) -> float:
    """The weighted mean of max(0, value - threshold): over the median, the extra wait slow requests
    cost, spread over all requests. Unlike a tail quantile it sees a slowdown one request in twenty
    meets, and grows smoothly with how often it happens rather than jumping when a share crosses a level."""
    total = sum(mass for _, mass in masses)
    return sum(mass * (value - threshold) for value, mass in masses if value > threshold) / total if total else 0.0


def wilson_upper(share: float, n: float, z: float = CONFIDENCE_Z) -> float:
    """Upper Wilson bound of a share seen over n trials: 0 of 3 failures still allows 25%, 0 of 300 only 0.3%."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = share + z2 / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


def recovered_outage(observations: Sequence[Observation], rise: int, fall: int, optimistic: bool = False) -> set[int]:
    """Rounds of the latest outage the line has recovered from: `fall` or more rounds in a row
    without an answer, followed by `rise` answered rounds in a row (the daemon's rise and fall).

    An outage says the line was down, not how often it fails while up; once the line is back,
    judging it by the outage would keep a recovered line out for as long as the window remembers.
    Only the latest one is forgiven, so a line that keeps going down still pays for the others.
    """
    answered: dict[int, bool] = {}  # round -> answered, in the order the rounds happened (observations come oldest first)
    for observation in observations:
        if observation.round is None:
            continue
        hit = observation.success is True or (optimistic and observation.success is None)
        answered[observation.round] = answered.get(observation.round, False) or hit
    order = list(answered)
    forgiven: set[int] = set()
    start = 0
    while start < len(order):
        if answered[order[start]]:
            start += 1
            continue
        end = start
        while end < len(order) and not answered[order[end]]:
            end += 1
        back = end
        while back < len(order) and answered[order[back]] and back - end < rise:
            back += 1
        if end - start >= fall and back - end >= rise:
            forgiven = set(order[start:end])
        start = end
    return forgiven


def summarize(
    name: str,
    observations: Sequence[Observation],
    settings: PolicySettings,
    up: bool = True,
    model_error: str | None = None,
    optimistic: bool = False,
    pending: int = 0,
) -> LineStats:
    """Fold a line's observations (oldest first) into the figures the policy judges by.

    Weights halve every `half_life` back from the newest observation, so a line
    that turns slow or recovers shows it within a few rounds. `optimistic`
    judges unanswered requests as if they will succeed (still no faster than
    their wait so far), with `pending` more successes still to come: the best
    the line can do this round, which is what the early stop compares.

    Evidence counts only samples of rounds over every line: the chosen line is
    watched more often than the others, and its extra samples follow it closely
    but must not make it look better proven than a challenger probed as often
    as the policy allows.
    """
    forgiven = recovered_outage(observations, settings.rise, settings.fall, optimistic)
    kept = [o for o in observations if o.round is None or o.round not in forgiven]
    newest = max((o.at for o in kept), default=0.0)
    latencies: list[tuple[float, float, bool]] = []
    ttfbs: list[float] = []
    answered = failed = counted = squares = 0.0
    samples = successes = unanswered = 0
    for observation in kept:
        weight = 0.5 ** ((newest - observation.at) / settings.half_life)
        wait = observation.wait_ms(settings.latency)
        if observation.success is None:
            unanswered += 1
            latencies.append((wait or 0.0, weight, True))
            if not optimistic:
                continue  # neither a success nor a failure yet
        elif observation.success:
            samples += 1
            if wait is not None:
                latencies.append((wait, weight, False))
            if observation.ttfb_ms is not None:
                ttfbs.append(observation.ttfb_ms)
        else:
            samples += 1
            failed += weight
        successes += observation.success is not False
        answered += weight
        if not observation.partial:
            counted += weight
            squares += weight * weight
    answered += pending
    counted += pending
    squares += pending
    masses = redistribute(latencies)
    median = weighted_quantile(masses, 0.5)
    return LineStats(
        name=name,
        samples=samples,
        successes=successes + pending,
        p50_ms=percentile(ttfbs, 0.5),
        p95_ms=percentile(ttfbs, 0.95),
        up=up,
        model_error=model_error,
        wait_p50_ms=median,
        wait_excess_ms=None if median is None else mean_excess(masses, median),
        failure_share=failed / answered if answered else None,
        evidence=counted * counted / squares if squares else 0.0,
        unanswered=unanswered,
        forgiven=len(observations) - len(kept),
    )


def score_parts(stats: LineStats, settings: PolicySettings) -> ScoreParts | None:
    if stats.wait_p50_ms is None or stats.wait_excess_ms is None:
        return None
    share = stats.failure_share or 0.0
    bound = wilson_upper(share, stats.evidence)
    return ScoreParts(
        p50_ms=stats.wait_p50_ms,
        tail_ms=stats.wait_excess_ms,
        failure_ms=share * settings.failure_penalty_ms,
        confidence_ms=(bound - share) * settings.failure_penalty_ms,
    )


def judge(stats: LineStats, settings: PolicySettings) -> Judgement:
    """Eligible lines are scored in milliseconds of a client's wait; the rest say why not."""
    parts = score_parts(stats, settings)
    lower = stats.unanswered > 0

    def not_eligible(why: str) -> Judgement:
        return Judgement(None, False, why, parts, lower)

    if stats.successes == 0 or stats.failure_share is None or parts is None:
        if stats.samples == 0 and stats.unanswered:
            return not_eligible(f"no answer yet: waited {stats.wait_p50_ms or 0:.0f} ms")
        return not_eligible("no successful sample in the window")
    if not stats.up:
        return not_eligible("down: failed its latest probes")
    if stats.model_error:
        return not_eligible(f"model calls fail: {stats.model_error}")
    rate = 1 - stats.failure_share
    if rate < settings.min_success_rate:
        return not_eligible(f"success {rate:.0%} is below the minimum {settings.min_success_rate:.0%}")
    return Judgement(parts.total, True, None, parts, lower)


def decide(
    stats: Sequence[LineStats],
    current: str | None,
    settings: PolicySettings,
    pinned: str | None = None,
) -> Verdict:
    """`stats` come in config order, which breaks ties."""
    judgements = {s.name: judge(s, settings) for s in stats}
    if current not in judgements:
        current = None
    if pinned is not None and pinned in judgements:
        note = "" if judgements[pinned].eligible else f" (warning: {judgements[pinned].why_not})"
        return Verdict(pinned, current, pinned != current, f"pinned by hand{note}", judgements)

    eligible = [s.name for s in stats if judgements[s.name].eligible]
    if not eligible:
        keep = f"; keeping {current}" if current else ""
        return Verdict(None, current, False, f"no line is eligible{keep}", judgements)
    best = min(eligible, key=lambda name: judgements[name].score or 0.0)
    best_score = judgements[best].score or 0.0

    if current is None:
        return Verdict(best, None, True, f"{best} has the best score ({best_score:.1f} ms)", judgements)
    if not judgements[current].eligible:
        return Verdict(best, current, True, f"{current} is not eligible ({judgements[current].why_not}); {best} is the best", judgements)
    if best == current:
        return Verdict(current, current, False, f"{current} is still the best ({best_score:.1f} ms)", judgements)

    current_score = judgements[current].score or 0.0
    gain_ms = current_score - best_score
    gain = gain_ms / current_score if current_score > 0 else 0.0
    figures = f"{best} scores {best_score:.1f} ms against {current_score:.1f} ms for {current}, {gain:.0%} ({gain_ms:.1f} ms) better"
    if gain >= settings.margin_relative and gain_ms >= settings.margin_ms:
        return Verdict(best, current, True, figures, judgements)
    needed = f"needs {settings.margin_relative:.0%} and {settings.margin_ms:g} ms"
    return Verdict(current, current, False, f"keeping {current}: {figures}, {needed}", judgements)
