"""Ranking the served models from stored votes and ratings (pure functions, no I/O).

`LEADERBOARDS` maps a method name to a function of :class:`Evidence` (the feedback totals and
the voted battles in vote order):

* ``tallies`` — wins, losses, ties and win rate per version;
* ``elo`` — online Elo over the battles in the order they were voted (K=4, base 1000, scale
  400, as in FastChat's arena), with a 95% bootstrap interval;
* ``bt`` — Bradley–Terry maximum likelihood (Hunter's MM algorithm) on the same battles, on the
  Elo scale (mean rating 1000), with a 95% bootstrap interval. Order does not matter for BT.

Ties and both-bad verdicts count as half a win for each side in both ratings, and as neither
win nor loss in the tallies and the win-rate matrix.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kindchat.feedback.models import BattleOutcome, FeedbackStats
from kindchat.serve.protocol import LeaderboardRow, PairwiseRow
from kindchat.stats import Estimate, bootstrap

ELO_K = 4.0
BASE_RATING = 1000.0
SCALE = 400.0
BT_PRIOR = 1.0  # virtual ties per pair of models that met: keeps 3-0 records finite
BOOTSTRAP_RESAMPLES = 500

Ratings = dict[str, float]
RatingFn = Callable[[Sequence[BattleOutcome]], Ratings]


@dataclass(frozen=True)
class Evidence:
    """What a ranking reads: totals from the store and the voted battles in vote order."""

    stats: FeedbackStats
    outcomes: Sequence[BattleOutcome]


def score_a(winner: str) -> float:
    """Side A's score in a battle: 1 win, 0 loss, ½ for `tie` and `both_bad`."""
    return {"a": 1.0, "b": 0.0}.get(winner, 0.5)


def elo_ratings(
    outcomes: Sequence[BattleOutcome],
    *,
    k: float = ELO_K,
    base: float = BASE_RATING,
    scale: float = SCALE,
) -> Ratings:
    """Online Elo: every model starts at `base`; after each battle, in order,
    ``R_a += k * (S_a - E_a)`` with ``E_a = 1 / (1 + 10 ** ((R_b - R_a) / scale))``, and the
    mirror update for B."""
    ratings: dict[str, float] = defaultdict(lambda: base)
    for o in outcomes:
        ra, rb = ratings[o.model_a], ratings[o.model_b]
        expected_a = 1.0 / (1.0 + 10.0 ** ((rb - ra) / scale))
        delta = k * (score_a(o.winner) - expected_a)
        ratings[o.model_a] = ra + delta
        ratings[o.model_b] = rb - delta
    return dict(ratings)


def bradley_terry(
    outcomes: Sequence[BattleOutcome],
    *,
    prior: float = BT_PRIOR,
    iterations: int = 500,
    tol: float = 1e-10,
    base: float = BASE_RATING,
    scale: float = SCALE,
) -> Ratings:
    """Bradley–Terry strengths by MM (Hunter 2004), as Elo-scale ratings averaging `base`.

    Model: P(i beats j) = p_i / (p_i + p_j). With W_i the score of i (ties ½) and n_ij the
    battles of i and j, iterate ``p_i <- W_i / sum_j n_ij / (p_i + p_j)`` and renormalise to
    geometric mean 1 until the largest relative change is under `tol`. `prior` adds that many
    virtual ties to each pair that met (0: the plain MLE, which is infinite for a model that
    never lost). Rating_i = base + scale * log10(p_i).
    """
    names = sorted({o.model_a for o in outcomes} | {o.model_b for o in outcomes})
    if not names:
        return {}
    index = {name: i for i, name in enumerate(names)}
    wins = np.zeros((len(names), len(names)))  # wins[i, j]: score of i against j
    for o in outcomes:
        i, j, s = index[o.model_a], index[o.model_b], score_a(o.winner)
        wins[i, j] += s
        wins[j, i] += 1.0 - s
    games = wins + wins.T
    wins += (prior / 2.0) * (games > 0)
    games = wins + wins.T
    total = wins.sum(axis=1)
    p = np.ones(len(names))
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total / np.where(denom > 0, denom, 1.0), p)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.mean(np.log(new)))
        change = float(np.max(np.abs(new - p) / p))
        p = new
        if change < tol:
            break
    return {name: base + scale * float(np.log10(p[index[name]])) for name in names}


def rating_intervals(
    outcomes: Sequence[BattleOutcome],
    rate: RatingFn,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    base: float = BASE_RATING,
) -> dict[str, Estimate]:
    """`rate(outcomes)` per model with a 95% percentile-bootstrap interval over battles.

    Each resample draws battles with replacement (in random order, which Elo's order
    dependence needs). :func:`kindchat.stats.bootstrap` estimates one number, so it runs once per
    model with the same seed (hence the same resamples); a resample's ratings are computed once
    and reused. A model absent from a resample counts as `base`.
    """
    if not outcomes:
        return {}
    ratings_by_sample: dict[bytes, Ratings] = {}

    def rated(sample: np.ndarray) -> Ratings:
        key = hashlib.blake2b(sample.tobytes(), digest_size=16).digest()
        if key not in ratings_by_sample:
            ratings_by_sample[key] = rate([outcomes[int(i)] for i in sample])
        return ratings_by_sample[key]

    def statistic(name: str) -> Callable[[np.ndarray], float]:
        return lambda sample: rated(sample).get(name, base)

    positions = [float(i) for i in range(len(outcomes))]
    names = sorted(rated(np.asarray(positions)))
    return {
        name: bootstrap(positions, statistic(name), resamples=resamples, seed=seed)
        for name in names
    }


def pairwise(outcomes: Sequence[BattleOutcome]) -> list[PairwiseRow]:
    """Both directions of every pair of models that met: battles, wins, losses, ties."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for o in outcomes:
        for me, other, mine in ((o.model_a, o.model_b, "a"), (o.model_b, o.model_a, "b")):
            cell = counts[(me, other)]
            if o.winner in ("a", "b"):
                cell[0 if o.winner == mine else 1] += 1
            else:
                cell[2] += 1
    return [
        PairwiseRow(
            model=me,
            opponent=other,
            battles=w + lost + t,
            wins=w,
            losses=lost,
            ties=t,
            win_rate=w / (w + lost) if w + lost else None,
        )
        for (me, other), (w, lost, t) in sorted(counts.items())
    ]


def tally_leaderboard(evidence: Evidence) -> list[LeaderboardRow]:
    """Rows by win rate over decided battles (ties and both-bad count as battles, not wins)."""
    return sorted(_tally_rows(evidence.stats).values(), key=_by_win_rate)


def elo_leaderboard(evidence: Evidence) -> list[LeaderboardRow]:
    return _rated_rows(evidence, elo_ratings)


def bt_leaderboard(evidence: Evidence) -> list[LeaderboardRow]:
    return _rated_rows(evidence, bradley_terry)


def _by_win_rate(row: LeaderboardRow) -> tuple[float, int, str]:
    return (-(row.win_rate or 0.0), -row.battles, row.model)


def _tally_rows(stats: FeedbackStats) -> dict[str, LeaderboardRow]:
    thumbs = {t.model_version or "unknown": t for t in stats.thumbs}
    votes = {v.model_version or "unknown": v for v in stats.votes}
    rows = {}
    for name in set(votes) | set(thumbs):
        vote, thumb = votes.get(name), thumbs.get(name)
        wins = vote.wins if vote else 0
        losses = vote.losses if vote else 0
        rows[name] = LeaderboardRow(
            model=name,
            battles=vote.battles if vote else 0,
            wins=wins,
            losses=losses,
            ties=vote.ties if vote else 0,
            both_bad=vote.both_bad if vote else 0,
            win_rate=wins / (wins + losses) if wins + losses else None,
            thumbs_up=thumb.up if thumb else 0,
            thumbs_down=thumb.down if thumb else 0,
        )
    return rows


def _rated_rows(evidence: Evidence, rate: RatingFn) -> list[LeaderboardRow]:
    """Tally rows with a rating and its interval; unrated models (no battle) last."""
    rows = _tally_rows(evidence.stats)
    for name, estimate in rating_intervals(evidence.outcomes, rate).items():
        row = rows.get(name) or LeaderboardRow(
            model=name, battles=0, wins=0, losses=0, ties=0, both_bad=0, win_rate=None
        )
        rows[name] = row.model_copy(
            update={
                "rating": round(estimate.value, 2),
                "rating_low": round(estimate.low, 2),
                "rating_high": round(estimate.high, 2),
            }
        )
    return sorted(
        rows.values(), key=lambda r: (r.rating is None, -(r.rating or 0.0), *_by_win_rate(r))
    )


LEADERBOARDS: dict[str, Callable[[Evidence], list[LeaderboardRow]]] = {
    "tallies": tally_leaderboard,
    "elo": elo_leaderboard,
    "bt": bt_leaderboard,
}
