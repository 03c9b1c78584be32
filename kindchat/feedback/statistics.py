"""Feedback statistics for the dashboard, the CLI and the retrain gate: totals, answers per
model version and day, 👍 ratios, arena tallies and outcomes, feedback per day. Read-only,
portable SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from kindchat.feedback.models import (
    Battle,
    BattleOutcome,
    Conversation,
    DayFeedback,
    FeedbackStats,
    Message,
    Rating,
    ThumbsStat,
    VersionDayCount,
    VoteTally,
)
from kindchat.feedback.validation import check_since


def _count(session: Session, model: type[Any], *where: Any) -> int:
    return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def feedback_stats(*, session: Session, since: datetime | None = None) -> FeedbackStats:
    """Totals; assistant messages per model version and UTC day; 👍 ratio and arena tallies per
    model version (a battle counts for the version of each side; alias when the version is
    unknown). `since` limits everything to rows created (ratings: changed, battles: voted) since.
    """
    since = check_since(since)
    msg_since = [col(Message.created_at) >= since] if since else []
    rating_since = [col(Rating.updated_at) >= since] if since else []
    battle_since = [col(Battle.created_at) >= since] if since else []
    voted_since = [col(Battle.voted_at) >= since] if since else []
    conv_since = [col(Conversation.created_at) >= since] if since else []

    day = func.date(Message.created_at)
    per_day = session.exec(
        select(Message.model_version, day, func.count())
        .where(Message.role == "assistant", *msg_since)
        .group_by(Message.model_version, day)
        .order_by(day, col(Message.model_version))
    ).all()

    up = func.sum(case((col(Rating.value) > 0, 1), else_=0))
    down = func.sum(case((col(Rating.value) < 0, 1), else_=0))
    thumbs_rows = session.exec(
        select(Message.model_version, up, down)
        .select_from(Rating)
        .join(Message, col(Message.id) == col(Rating.message_id))
        .where(*rating_since)
        .group_by(Message.model_version)
        .order_by(col(Message.model_version))
    ).all()
    thumbs = [
        ThumbsStat(
            model_version=version,
            up=int(u or 0),
            down=int(d or 0),
            ratio=(int(u or 0) / (int(u or 0) + int(d or 0))) if (u or d) else None,
        )
        for version, u, d in thumbs_rows
    ]

    sides = (
        col(Battle.version_a),
        col(Battle.model_a),
        col(Battle.version_b),
        col(Battle.model_b),
        col(Battle.winner),
    )
    battle_rows = session.execute(
        sa_select(*sides, func.count())
        .where(col(Battle.winner).isnot(None), col(Battle.void_reason).is_(None), *voted_since)
        .group_by(*sides)
    ).all()
    tallies: dict[str | None, Counter[str]] = defaultdict(Counter)
    for version_a, model_a, version_b, model_b, winner, n in battle_rows:
        for me, side in ((version_a or model_a, "a"), (version_b or model_b, "b")):
            tally = tallies[me]
            tally["battles"] += n
            if winner in ("a", "b"):
                tally["wins" if winner == side else "losses"] += n
            else:
                tally["ties" if winner == "tie" else "both_bad"] += n
    votes = [
        VoteTally(
            model_version=version,
            battles=t["battles"],
            wins=t["wins"],
            losses=t["losses"],
            ties=t["ties"],
            both_bad=t["both_bad"],
        )
        for version, t in sorted(tallies.items(), key=lambda kv: str(kv[0]))
    ]
    return FeedbackStats(
        conversations=_count(session, Conversation, *conv_since),
        messages=_count(session, Message, *msg_since),
        ratings=_count(session, Rating, *rating_since),
        battles=_count(session, Battle, *battle_since),
        voted_battles=_count(session, Battle, col(Battle.winner).isnot(None), *voted_since),
        messages_per_version_day=[
            VersionDayCount(model_version=v, day=str(d), messages=int(n)) for v, d, n in per_day
        ],
        thumbs=thumbs,
        votes=votes,
    )


def battle_outcomes(*, session: Session, since: datetime | None = None) -> list[BattleOutcome]:
    """Voted battles in the order they were voted (what Elo reads); each side named by its
    version, or its alias when the version is unknown. `since` by vote time. Voided battles
    (an answer gave its model away) do not count."""
    since = check_since(since)
    query = select(Battle).where(col(Battle.winner).isnot(None), col(Battle.void_reason).is_(None))
    if since is not None:
        query = query.where(col(Battle.voted_at) >= since)
    query = query.order_by(col(Battle.voted_at), col(Battle.id))
    return [
        BattleOutcome(
            model_a=row.version_a or row.model_a or "unknown",
            model_b=row.version_b or row.model_b or "unknown",
            winner=str(row.winner),
            voted_at=row.voted_at,
            session_id=row.session_id,
        )
        for row in session.exec(query)
    ]


def feedback_per_day(*, session: Session, since: datetime | None = None) -> list[DayFeedback]:
    """👍, 👎 (by the UTC day of a rating's last change) and arena votes per UTC day, oldest
    first; days without feedback are left out."""
    since = check_since(since)
    days: dict[str, DayFeedback] = {}
    rated = func.date(Rating.updated_at)
    # Grouped by the value itself (+1/-1): PostgreSQL cannot match `value > $1` in the select
    # list with `value > $2` in GROUP BY.
    rating_query = sa_select(rated, col(Rating.value), func.count()).group_by(
        rated, col(Rating.value)
    )
    if since is not None:
        rating_query = rating_query.where(col(Rating.updated_at) >= since)
    for day, value, n in session.execute(rating_query).all():
        row = days.setdefault(str(day), DayFeedback(day=str(day)))
        if value > 0:
            row.thumbs_up += int(n)
        else:
            row.thumbs_down += int(n)
    voted = func.date(Battle.voted_at)
    vote_query = (
        sa_select(voted, func.count()).where(col(Battle.winner).isnot(None)).group_by(voted)
    )
    if since is not None:
        vote_query = vote_query.where(col(Battle.voted_at) >= since)
    for day, n in session.execute(vote_query).all():
        days.setdefault(str(day), DayFeedback(day=str(day))).votes += int(n)
    return [days[day] for day in sorted(days)]
