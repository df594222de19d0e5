"""The choosing rules, on plain figures: what wins, what is kept, what is never chosen."""

from __future__ import annotations

from linepicker.config import PolicySettings
from linepicker.policy import LineStats, decide, percentile, summarize

SETTINGS = PolicySettings(min_success_rate=0.6, margin_relative=0.2, margin_ms=10, failure_penalty_ms=500)


def line(name: str, p50: float | None, successes: int = 10, samples: int = 10, up: bool = True) -> LineStats:
    return LineStats(name, samples, successes, p50, p50, up)


def test_fastest_eligible_line_wins_on_first_choice() -> None:
    verdict = decide([line("a", 80), line("b", 40), line("c", 60)], None, SETTINGS)
    assert verdict.chosen == "b" and verdict.changed


def test_ties_go_to_config_order() -> None:
    assert decide([line("a", 50), line("b", 50)], None, SETTINGS).chosen == "a"
    assert decide([line("b", 50), line("a", 50)], None, SETTINGS).chosen == "b"


def test_failures_are_penalised_not_only_latency() -> None:
    flaky_fast = line("flaky", 30, successes=7)  # 30 + 0.3 * 500 = 180
    steady = line("steady", 90)
    assert decide([flaky_fast, steady], None, SETTINGS).chosen == "steady"


def test_line_below_minimum_success_rate_is_never_chosen() -> None:
    verdict = decide([line("fast", 5, successes=5), line("slow", 300)], None, SETTINGS)
    assert verdict.chosen == "slow"
    assert "below the minimum" in verdict.judgements["fast"].why_not


def test_current_line_is_kept_when_challenger_is_within_the_relative_margin() -> None:
    verdict = decide([line("cur", 100), line("new", 85)], "cur", SETTINGS)  # 15% better, 15 ms
    assert verdict.chosen == "cur" and not verdict.changed
    assert "needs 20%" in verdict.reason


def test_current_line_is_kept_when_challenger_is_within_the_absolute_margin() -> None:
    verdict = decide([line("cur", 20), line("new", 12)], "cur", SETTINGS)  # 40% better but only 8 ms
    assert verdict.chosen == "cur" and not verdict.changed


def test_challenger_clearly_better_takes_over() -> None:
    verdict = decide([line("cur", 100), line("new", 70)], "cur", SETTINGS)  # 30%, 30 ms
    assert verdict.chosen == "new" and verdict.changed and verdict.previous == "cur"


def test_dead_current_line_is_replaced_at_once_even_by_a_slower_line() -> None:
    verdict = decide([line("cur", 10, up=False), line("slow", 200)], "cur", SETTINGS)
    assert verdict.chosen == "slow" and verdict.changed
    assert "not eligible" in verdict.reason


def test_no_eligible_line_keeps_the_current_choice_in_force() -> None:
    verdict = decide([line("a", None, successes=0), line("b", 50, up=False)], "a", SETTINGS)
    assert verdict.chosen is None and not verdict.changed
    assert "keeping a" in verdict.reason


def test_pin_wins_even_over_a_faster_line_and_warns_when_it_is_down() -> None:
    verdict = decide([line("a", 10), line("b", 99, up=False)], "a", SETTINGS, pinned="b")
    assert verdict.chosen == "b"
    assert "pinned" in verdict.reason and "warning" in verdict.reason


def test_a_current_line_that_left_the_config_is_not_kept() -> None:
    verdict = decide([line("a", 50)], "gone", SETTINGS)
    assert verdict.chosen == "a" and verdict.previous is None


def test_summary_counts_failures_but_takes_latency_from_successes_only() -> None:
    stats = summarize("x", [(True, 10.0), (False, None), (True, 30.0), (False, 5.0)])
    assert stats.samples == 4 and stats.successes == 2
    assert stats.success_rate == 0.5
    assert stats.p50_ms == 20.0


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 0.5) == 30.0
    assert percentile(list(map(float, range(1, 101))), 0.95) == 95.05
