"""Ranking the served models from stored votes and ratings.

`LEADERBOARDS` maps a method name to a function of :class:`FeedbackStats`; `tallies` (wins,
losses, ties, win rate) is the first. Elo / Bradley-Terry (issue 7) plug in as more entries.
"""

from __future__ import annotations

from collections.abc import Callable

from kindchat.feedback.models import FeedbackStats
from kindchat.serve.protocol import LeaderboardRow


def tally_leaderboard(stats: FeedbackStats) -> list[LeaderboardRow]:
    """Rows by win rate over decided battles (ties and both-bad count as battles, not wins)."""
    thumbs = {t.model_version: t for t in stats.thumbs}
    rows = []
    names = {v.model_version for v in stats.votes} | set(thumbs)
    by_version = {v.model_version: v for v in stats.votes}
    for name in names:
        vote = by_version.get(name)
        wins = vote.wins if vote else 0
        losses = vote.losses if vote else 0
        decided = wins + losses
        rows.append(
            LeaderboardRow(
                model=name or "unknown",
                battles=vote.battles if vote else 0,
                wins=wins,
                losses=losses,
                ties=vote.ties if vote else 0,
                both_bad=vote.both_bad if vote else 0,
                win_rate=wins / decided if decided else None,
                thumbs_up=thumbs[name].up if name in thumbs else 0,
                thumbs_down=thumbs[name].down if name in thumbs else 0,
            )
        )
    return sorted(rows, key=lambda r: (-(r.win_rate or 0.0), -r.battles, r.model))


LEADERBOARDS: dict[str, Callable[[FeedbackStats], list[LeaderboardRow]]] = {
    "tallies": tally_leaderboard,
}
