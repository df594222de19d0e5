"""The choosing rules, on plain observations: what wins, what is kept, what is never chosen."""

from __future__ import annotations

import random
from dataclasses import replace

from linepicker.config import PolicySettings
from linepicker.policy import (
    LineStats,
    Observation,
    decide,
    judge,
    percentile,
    redistribute,
    summarize,
    weighted_quantile,
    wilson_upper,
)

SETTINGS = PolicySettings(min_success_rate=0.6, margin_relative=0.2, margin_ms=10, failure_penalty_ms=500, half_life=120)
NOW = 1_000_000.0


def rounds(
    wait: float | list[float],
    count: int = 10,
    samples: int = 3,
    every: float = 60.0,
    fail: set[int] = frozenset(),  # type: ignore[assignment]
    first_round: int = 0,
    end: float = NOW,
    tls: float = 0.0,
) -> list[Observation]:
    """`count` rounds of `samples` requests, the last round ending at `end`; requests numbered in `fail` fail."""
    waits = wait if isinstance(wait, list) else [wait] * (count * samples)
    found = []
    for index, ttfb in enumerate(waits):
        number = index // samples
        at = end - (count - 1 - number) * every + index % samples
        ok = index not in fail
        found.append(Observation(at, ok, setup_ms=0.5 + (tls if ok else 0), ttfb_ms=ttfb if ok else None, round=first_round + number))
    return found


def stats(name: str, observations: list[Observation], settings: PolicySettings = SETTINGS, up: bool = True) -> LineStats:
    return summarize(name, observations, settings, up)


def test_fastest_line_wins_on_first_choice() -> None:
    verdict = decide([stats("a", rounds(80)), stats("b", rounds(40)), stats("c", rounds(60))], None, SETTINGS)
    assert verdict.chosen == "b" and verdict.changed


def test_ties_go_to_config_order() -> None:
    assert decide([stats("a", rounds(50)), stats("b", rounds(50))], None, SETTINGS).chosen == "a"
    assert decide([stats("b", rounds(50)), stats("a", rounds(50))], None, SETTINGS).chosen == "b"


def test_the_score_is_what_a_fresh_connection_waits_for_unless_clients_keep_theirs() -> None:
    """A TLS handshake held back 100 ms costs every new connection; a kept-alive client never pays it."""
    slow_handshake = rounds(30, tls=100)
    plain = rounds(60, tls=5)
    fresh = decide([stats("held", slow_handshake), stats("plain", plain)], None, SETTINGS)
    assert fresh.chosen == "plain"
    parts = fresh.judgements["held"].parts
    assert parts is not None and 130 <= parts.p50_ms <= 131
    warm = replace(SETTINGS, latency="warm")
    assert decide([stats("held", slow_handshake, warm), stats("plain", plain, warm)], None, warm).chosen == "held"


def test_the_tail_counts_so_lost_syns_cost_what_they_cost() -> None:
    """One fresh connection in four pays a 1 s SYN retransmit: the median hides it, the score does not."""
    rng = random.Random(3)
    lossy = [40 + (1000 if rng.random() < 0.25 else 0) for _ in range(30)]
    verdict = decide([stats("lossy", rounds(lossy)), stats("steady", rounds(90))], None, SETTINGS)
    assert verdict.chosen == "steady"
    lossy_parts = verdict.judgements["lossy"].parts
    assert lossy_parts is not None and lossy_parts.p50_ms < 45 and lossy_parts.tail_ms > 100


def test_a_slowdown_one_request_in_twenty_meets_still_costs_what_it_costs() -> None:
    """A tail quantile (p90) would not see it at all; the average excess over the median does: 1 s x 5% = 50 ms."""
    waits = [40.0] * 60
    for index in range(0, 60, 20):
        waits[index + 7] = 1040.0
    parts = judge(stats("rare", rounds(waits, count=20, every=10)), replace(SETTINGS, half_life=10_000)).parts
    assert parts is not None and 45 < parts.tail_ms < 55


def test_score_parts_add_up_to_the_score() -> None:
    judgement = judge(stats("a", rounds(50, fail={4, 17})), SETTINGS)
    assert judgement.parts is not None and judgement.score is not None
    assert abs(judgement.parts.total - judgement.score) < 1e-9
    assert judgement.parts.failure_ms > 0 and judgement.parts.confidence_ms > 0


def test_failures_are_penalised_not_only_latency() -> None:
    flaky_fast = rounds(30, fail={1, 5, 7, 11, 14, 19, 22, 26, 28})  # 30% failures
    assert decide([stats("flaky", flaky_fast), stats("steady", rounds(90))], None, SETTINGS).chosen == "steady"


def test_three_lucky_answers_do_not_beat_a_long_steady_record() -> None:
    """A line failing one request in three answers three in a row a third of the time; that is no evidence."""
    lucky = rounds(30, count=1)
    steady = rounds(60, count=100, every=10)  # 300 of 300
    verdict = decide([stats("lucky", lucky), stats("steady", steady)], None, SETTINGS)
    assert verdict.chosen == "steady"
    assert verdict.judgements["lucky"].parts.confidence_ms > 100  # type: ignore[union-attr]
    assert verdict.judgements["steady"].parts.confidence_ms < 5  # type: ignore[union-attr]


def test_a_challenger_with_thin_evidence_needs_a_clearer_lead() -> None:
    current = stats("current", rounds(100, count=30))
    newcomer = stats("new", rounds(60, count=2))  # 40% faster, on six samples
    veteran = stats("old", rounds(60, count=30))  # as fast, on ninety
    assert decide([current, newcomer], "current", SETTINGS).chosen == "current"
    assert decide([current, veteran], "current", SETTINGS).chosen == "old"


def test_watching_the_chosen_line_more_often_does_not_make_it_better_proven() -> None:
    """The daemon re-probes the chosen line six times as often: that follows it closely, it is no extra evidence."""
    watched = rounds(30, count=10) + [replace(o, at=o.at + 10 * k, partial=True) for k in range(1, 6) for o in rounds(30, count=10)]
    challenger = rounds(5, count=10)
    verdict = decide([stats("current", watched), stats("fast", challenger)], "current", SETTINGS)
    assert verdict.chosen == "fast", verdict.reason
    assert stats("current", watched).evidence == stats("fast", challenger).evidence


def test_line_below_minimum_success_rate_is_never_chosen() -> None:
    verdict = decide([stats("fast", rounds(5, fail=set(range(0, 30, 2)))), stats("slow", rounds(300))], None, SETTINGS)
    assert verdict.chosen == "slow"
    assert "below the minimum" in (verdict.judgements["fast"].why_not or "")


def test_current_line_is_kept_when_challenger_is_within_the_relative_margin() -> None:
    verdict = decide([stats("cur", rounds(100, count=30)), stats("new", rounds(85, count=30))], "cur", SETTINGS)
    assert verdict.chosen == "cur" and not verdict.changed
    assert "needs 20%" in verdict.reason


def test_current_line_is_kept_when_challenger_is_within_the_absolute_margin() -> None:
    lenient = replace(SETTINGS, margin_relative=0.05)
    verdict = decide([stats("cur", rounds(20, count=30)), stats("new", rounds(12, count=30))], "cur", lenient)
    assert verdict.chosen == "cur" and not verdict.changed


def test_challenger_clearly_better_takes_over() -> None:
    verdict = decide([stats("cur", rounds(100, count=30)), stats("new", rounds(60, count=30))], "cur", SETTINGS)
    assert verdict.chosen == "new" and verdict.changed and verdict.previous == "cur"


def test_a_line_that_turns_slow_is_left_within_a_few_rounds() -> None:
    current = rounds([40.0] * 30 + [200.0] * 9, count=13)
    other = stats("other", rounds(90, count=13))
    left = [decide([stats("cur", current[: 30 + 3 * k]), other], "cur", SETTINGS).chosen for k in range(1, 4)]
    assert "other" in left


def test_recent_rounds_weigh_more() -> None:
    old_fast_new_slow = rounds([20.0] * 15 + [80.0] * 15, count=10)
    p50 = stats("x", old_fast_new_slow).wait_p50_ms
    assert p50 is not None and p50 > 60, "the newer half outweighs the older"


def test_dead_current_line_is_replaced_at_once_even_by_a_slower_line() -> None:
    verdict = decide([stats("cur", rounds(10), up=False), stats("slow", rounds(200))], "cur", SETTINGS)
    assert verdict.chosen == "slow" and verdict.changed
    assert "not eligible" in verdict.reason


def test_a_recovered_line_is_judged_by_how_it_does_while_up() -> None:
    """Down for six rounds, then two good ones (rise 2): the outage no longer counts, an older one still does."""
    before = rounds(40, count=3, end=NOW - 8 * 60)
    outage = rounds(40, count=6, first_round=3, end=NOW - 2 * 60, fail=set(range(18)))
    back = rounds(40, count=2, first_round=9)
    recovered = stats("a", before + outage + back)
    assert recovered.forgiven == 18 and recovered.failure_share == 0
    assert decide([recovered, stats("b", rounds(150, count=11))], "b", SETTINGS).chosen == "a"
    rising = stats("a", before + outage + back[:3])  # one good round: not up yet
    assert rising.forgiven == 0 and (rising.failure_share or 0) > 0.5


def test_random_failures_are_not_an_outage() -> None:
    rng = random.Random(5)
    fails = {i for i in range(60) if rng.random() < 1 / 3}
    assert stats("flaky", rounds(30, count=20, fail=fails)).forgiven == 0


def test_an_unanswered_request_counts_at_its_wait_so_far() -> None:
    """A blackholed line with a good record: the request left hanging shows, the record alone does not decide."""
    record = rounds(10, count=5)
    hanging = Observation(NOW + 30, None, waited_ms=2000, round=99)
    blackholed = stats("cur", record + [hanging, replace(hanging, at=NOW + 40, round=100)])
    judgement = judge(blackholed, SETTINGS)
    assert judgement.lower_bound and blackholed.unanswered == 2
    assert decide([blackholed, stats("other", rounds(60))], "cur", SETTINGS).chosen == "other"
    never_answered = stats("new", [hanging])
    assert not judge(never_answered, SETTINGS).eligible and "no answer yet" in (judge(never_answered, SETTINGS).why_not or "")


def test_a_request_cut_short_below_the_usual_wait_changes_nothing() -> None:
    """pick stops waiting for a line that cannot win; that its request had waited 10 ms is no news about a 50 ms line."""
    record = rounds(50, count=5)
    cut = [Observation(NOW + 60 + i, None, waited_ms=10, round=10 + i) for i in range(10)]
    assert stats("x", record + cut).wait_p50_ms == stats("x", record).wait_p50_ms
    assert redistribute([(10.0, 1.0, True), (20.0, 1.0, False), (40.0, 2.0, False)]) == [(20.0, 4 / 3), (40.0, 8 / 3)]
    assert redistribute([(20.0, 1.0, False), (90.0, 1.0, True)]) == [(20.0, 1.0), (90.0, 1.0)], "past every answer: a floor"


def test_the_best_case_counts_a_request_in_flight_as_a_success() -> None:
    in_flight = [Observation(NOW, None, waited_ms=50, round=1)]
    best = summarize("x", in_flight, SETTINGS, optimistic=True, pending=2)
    assert best.successes == 3 and best.failure_share == 0 and best.wait_p50_ms == 50
    assert judge(best, SETTINGS).eligible


def test_no_eligible_line_keeps_the_current_choice_in_force() -> None:
    verdict = decide([stats("a", rounds(50, fail=set(range(30)))), stats("b", rounds(50), up=False)], "a", SETTINGS)
    assert verdict.chosen is None and not verdict.changed
    assert "keeping a" in verdict.reason


def test_pin_wins_even_over_a_faster_line_and_warns_when_it_is_down() -> None:
    verdict = decide([stats("a", rounds(10)), stats("b", rounds(99), up=False)], "a", SETTINGS, pinned="b")
    assert verdict.chosen == "b"
    assert "pinned" in verdict.reason and "warning" in verdict.reason


def test_a_current_line_that_left_the_config_is_not_kept() -> None:
    verdict = decide([stats("a", rounds(50))], "gone", SETTINGS)
    assert verdict.chosen == "a" and verdict.previous is None


def test_summary_counts_failures_but_takes_latency_from_successes_only() -> None:
    found = [Observation(NOW, True, ttfb_ms=10.0), Observation(NOW, False), Observation(NOW, True, ttfb_ms=30.0), Observation(NOW, False, ttfb_ms=5.0)]
    summary = stats("x", found)
    assert summary.samples == 4 and summary.successes == 2
    assert summary.success_rate == 0.5 and summary.failure_share == 0.5
    assert summary.p50_ms == 20.0 and summary.wait_p50_ms == 20.0


def test_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 0.5) == 30.0
    assert percentile(list(map(float, range(1, 101))), 0.95) == 95.05
    assert weighted_quantile([(10.0, 1), (20.0, 1), (30.0, 1)], 0.5) == 20.0
    assert weighted_quantile([(10.0, 0.01), (20.0, 1.0)], 0.5) > 19.5, "a heavy value pulls the median to itself"
    assert wilson_upper(0, 3) == 0.25 and wilson_upper(0, 300) < 0.004
