"""What rankings and the dashboard read from the store: battle outcomes, feedback per day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlmodel import Session

from kindchat.feedback import statistics, store


def _two_answers(db: Session) -> tuple[str, str]:
    conv = store.create_conversation(session=db, session_id="s1")
    store.record_message(session=db, conversation_id=conv.id, role="user", content="안녕?")
    ids = []
    for alias, version in (("rlhf", "v2"), ("sft", None)):
        reply = store.record_message(
            session=db,
            conversation_id=conv.id,
            role="assistant",
            content=f"{alias}의 답",
            model_alias=alias,
            model_version=version,
        )
        ids.append(reply.id)
    return ids[0], ids[1]


def test_battle_outcomes_in_vote_order_named_by_version_or_alias(db: Session) -> None:
    a, b = _two_answers(db)
    ctx = [{"role": "user", "content": "안녕?"}]
    opened = [
        store.create_battle(
            session=db, session_id="s1", context=ctx, message_a_id=x, message_b_id=y
        )
        for x, y in ((a, b), (b, a), (a, b))
    ]
    store.vote(session=db, battle_id=opened[1].id, session_id="s1", winner="a")
    store.vote(session=db, battle_id=opened[0].id, session_id="s1", winner="tie")
    outcomes = statistics.battle_outcomes(session=db)  # the third is unvoted: left out
    assert [(o.model_a, o.model_b, o.winner) for o in outcomes] == [
        ("sft", "v2", "a"),
        ("v2", "sft", "tie"),
    ]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert statistics.battle_outcomes(session=db, since=later) == []


def test_feedback_per_day_counts_thumbs_and_votes(db: Session) -> None:
    a, b = _two_answers(db)
    store.rate(session=db, message_id=a, session_id="u1", value=1)
    store.rate(session=db, message_id=a, session_id="u2", value=1)
    store.rate(session=db, message_id=b, session_id="u1", value=1)
    store.rate(session=db, message_id=b, session_id="u1", value=-1)  # changed: counts once, 👎
    battle = store.create_battle(
        session=db,
        session_id="s1",
        context=[{"role": "user", "content": "안녕?"}],
        message_a_id=a,
        message_b_id=b,
    )
    assert statistics.feedback_per_day(session=db)[0].votes == 0
    store.vote(session=db, battle_id=battle.id, session_id="s1", winner="b")
    today = datetime.now(timezone.utc).date().isoformat()
    days = statistics.feedback_per_day(session=db)
    assert [(d.day, d.thumbs_up, d.thumbs_down, d.votes) for d in days] == [(today, 2, 1, 1)]
    assert (
        statistics.feedback_per_day(session=db, since=datetime.now(timezone.utc) + timedelta(1))
        == []
    )
