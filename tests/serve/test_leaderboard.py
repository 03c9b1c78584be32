"""Elo, Bradley–Terry, intervals and the win-rate matrix against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from kindchat.feedback.models import BattleOutcome, FeedbackStats, ThumbsStat, VoteTally
from kindchat.serve.leaderboard import (
    LEADERBOARDS,
    Evidence,
    bradley_terry,
    elo_ratings,
    pairwise,
    rating_intervals,
)


def battles(*rows: tuple[str, str, str, int]) -> list[BattleOutcome]:
    """(model_a, model_b, winner, times) -> that many outcomes, in order."""
    return [BattleOutcome(model_a=a, model_b=b, winner=w) for a, b, w, n in rows for _ in range(n)]


class TestElo:
    def test_one_win_between_equals_moves_each_by_half_k(self) -> None:
        # E = 1/2, so A gains K * (1 - 1/2) = 2 and B loses 2.
        assert elo_ratings(battles(("A", "B", "a", 1))) == {"A": 1002.0, "B": 998.0}

    def test_second_battle_uses_the_updated_ratings(self) -> None:
        # After A>B: A=1002, B=998. Then B beats A (B is side a):
        # E_B = 1 / (1 + 10**((1002 - 998) / 400)) = 1 / (1 + 10**0.01) = 0.4942437...
        # B += 4 * (1 - 0.4942437) = 2.0230251 -> 1000.0230251; A = 999.9769749.
        ratings = elo_ratings(battles(("A", "B", "a", 1), ("B", "A", "a", 1)))
        expected_b = 1.0 / (1.0 + 10**0.01)
        assert ratings["B"] == pytest.approx(998 + 4 * (1 - expected_b))
        assert ratings["B"] == pytest.approx(1000.0230251, abs=1e-6)
        assert ratings["A"] == pytest.approx(999.9769749, abs=1e-6)

    def test_ties_and_both_bad_are_half_a_win(self) -> None:
        # Equal ratings and S = 1/2: nothing moves.
        assert elo_ratings(battles(("A", "B", "tie", 1), ("A", "B", "both_bad", 1))) == {
            "A": 1000.0,
            "B": 1000.0,
        }
        # After A>B (1002/998), a tie pulls them together: E_A = 1/(1+10**(-0.01)) = 0.5057563;
        # A += 4 * (0.5 - 0.5057563) = -0.0230251.
        ratings = elo_ratings(battles(("A", "B", "a", 1), ("A", "B", "tie", 1)))
        assert ratings["A"] == pytest.approx(1001.9769749, abs=1e-6)

    def test_k_and_base_are_parameters_and_the_sum_is_kept(self) -> None:
        ratings = elo_ratings(battles(("A", "B", "a", 3), ("B", "C", "b", 2)), k=32, base=1500)
        assert ratings["A"] > 1500 > ratings["B"] and ratings["C"] > 1500
        assert sum(ratings.values()) == pytest.approx(3 * 1500)  # every update is zero-sum
        assert elo_ratings(battles(("A", "B", "a", 1)), k=32, base=1500)["A"] == 1516.0


class TestBradleyTerry:
    def test_two_models_three_to_one_is_a_factor_of_three(self) -> None:
        # MLE: p_A / p_B = wins ratio = 3; ratings 1000 ± 200 * log10(3) = 1000 ± 95.424.
        ratings = bradley_terry(battles(("A", "B", "a", 3), ("A", "B", "b", 1)), prior=0)
        assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)
        assert ratings["A"] == pytest.approx(1095.4243, abs=1e-3)
        assert ratings["A"] + ratings["B"] == pytest.approx(2000)

    def test_three_models_recover_consistent_strengths(self) -> None:
        # Strengths 4 : 2 : 1 with every pair's win fraction equal to p_i / (p_i + p_j):
        # A-B 2:1, B-C 2:1, A-C 4:1. The score equations hold exactly at (4, 2, 1), so the MLE
        # is 1000 + 400 * log10(p / 2): A = 1120.412, B = 1000, C = 879.588.
        outcomes = battles(
            ("A", "B", "a", 2),
            ("A", "B", "b", 1),
            ("B", "C", "a", 2),
            ("C", "B", "a", 1),
            ("A", "C", "a", 4),
            ("C", "A", "a", 1),
        )
        ratings = bradley_terry(outcomes, prior=0)
        assert ratings["A"] == pytest.approx(1000 + 400 * math.log10(2), abs=1e-4)
        assert ratings["B"] == pytest.approx(1000.0, abs=1e-4)
        assert ratings["C"] == pytest.approx(1000 - 400 * math.log10(2), abs=1e-4)

    def test_order_does_not_matter_and_ties_are_half_wins(self) -> None:
        forward = battles(("A", "B", "a", 2), ("A", "B", "tie", 2))
        assert bradley_terry(forward) == pytest.approx(bradley_terry(forward[::-1]))
        # 2 wins + 2 ties = 3 : 1 in half-win units, the same as the 3:1 case.
        plain = bradley_terry(forward, prior=0)
        assert plain["A"] - plain["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)

    def test_the_prior_keeps_an_unbeaten_record_finite(self) -> None:
        # One win with one virtual tie: 1.5 : 0.5 -> a factor of 3.
        ratings = bradley_terry(battles(("A", "B", "a", 1)), prior=1.0)
        assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)
        assert bradley_terry([]) == {}


def test_intervals_bracket_the_point_estimate_and_narrow_with_data() -> None:
    few = battles(("A", "B", "a", 3), ("A", "B", "b", 1))
    many = few * 25
    for rate in (elo_ratings, bradley_terry):
        small, large = rating_intervals(few, rate), rating_intervals(many, rate)
        for name in ("A", "B"):
            assert small[name].low <= small[name].value <= small[name].high
            assert large[name].low <= large[name].value <= large[name].high
        assert large["A"].value == rate(many)["A"]
        width = lambda e: e.high - e.low  # noqa: E731
        if rate is bradley_terry:  # Elo's K=4 steps keep small samples narrow, so BT only
            assert width(large["A"]) < width(small["A"])
        assert large["A"].low > large["B"].high  # 75 wins of 100 separate them
    assert rating_intervals([], elo_ratings) == {}


def test_pairwise_counts_both_directions() -> None:
    cells = {
        (c.model, c.opponent): c
        for c in pairwise(battles(("A", "B", "a", 2), ("B", "A", "a", 1), ("A", "B", "tie", 1)))
    }
    assert (cells[("A", "B")].wins, cells[("A", "B")].losses, cells[("A", "B")].ties) == (2, 1, 1)
    assert cells[("A", "B")].win_rate == pytest.approx(2 / 3)
    assert cells[("B", "A")].win_rate == pytest.approx(1 / 3)
    assert cells[("B", "A")].battles == 4


def test_method_table_ranks_with_tallies_and_thumbs() -> None:
    stats = FeedbackStats(
        conversations=1,
        messages=2,
        ratings=3,
        battles=4,
        voted_battles=4,
        messages_per_version_day=[],
        thumbs=[ThumbsStat(model_version="B", up=2, down=1, ratio=2 / 3)],
        votes=[
            VoteTally(model_version="A", battles=4, wins=1, losses=3, ties=0, both_bad=0),
            VoteTally(model_version="B", battles=4, wins=3, losses=1, ties=0, both_bad=0),
        ],
    )
    evidence = Evidence(stats, battles(("A", "B", "b", 3), ("A", "B", "a", 1)))
    assert set(LEADERBOARDS) == {"tallies", "elo", "bt"}
    for method in ("elo", "bt"):
        rows = LEADERBOARDS[method](evidence)
        assert [r.model for r in rows] == ["B", "A"]
        assert rows[0].rating is not None and rows[0].rating > 1000 > (rows[1].rating or 0)
        assert rows[0].thumbs_up == 2 and rows[0].wins == 3
    assert [r.model for r in LEADERBOARDS["tallies"](evidence)] == ["B", "A"]
