"""Challenge records in the store (SQLite and PostgreSQL): one open at a time, closed once, the
rules typed and the anomaly rule read back as the config it was stored from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from kindchat.feedback import challenges, run_records
from kindchat.feedback.errors import InvalidValueError, StateConflictError, UnknownIdError
from kindchat.feedback.influence import InfluenceConfig
from kindchat.feedback.models import Challenge, ChallengeOutcome, utcnow


def opened(db: Session, run_id: str, **changes: Any) -> challenges.ChallengePublic:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "challenger_version": "policy-new",
        "champion_alias": "rlhf",
        "champion_alias_target": "policy-old",
        "champion_version": "policy-old",
        "promote_with": {"rm": "rm-new"},
        "share": 0.5,
        "min_votes": 200,
        "min_sessions": 20,
        "votes_per_session": 5,
        "min_origins": 10,
        "votes_per_origin": 20,
        "influence": InfluenceConfig(min_votes=12, burst_min=30),
        "deadline": utcnow() + timedelta(hours=24),
        **changes,
    }
    challenge = challenges.create_challenge(session=db, **fields)
    db.commit()
    return challenge


def running(db: Session) -> str:
    return run_records.create_run(session=db, status="running").id


def test_a_challenge_keeps_its_rules_typed(db: Session) -> None:
    run_id = running(db)
    made = opened(db, run_id)
    got = challenges.get_challenge(session=db, challenge_id=made.id)
    assert got.status == "open" and got.decided_at is None and got.run_id == run_id
    assert (got.min_votes, got.min_sessions, got.votes_per_session) == (200, 20, 5)
    assert (got.min_origins, got.votes_per_origin, got.share) == (10, 20, 0.5)
    assert got.promote_with == {"rm": "rm-new"} and got.champion_version == "policy-old"
    assert got.deadline.tzinfo is not None and got.deadline > got.opened_at
    assert challenges.influence_config(got) == InfluenceConfig(min_votes=12, burst_min=30)
    assert challenges.get_open(session=db) == got


def test_one_challenge_is_open_at_a_time(db: Session) -> None:
    first = opened(db, running(db))
    with pytest.raises(StateConflictError, match="policy-new"):
        opened(db, running(db), challenger_version="policy-other")
    db.rollback()
    # the database holds to it as well, whoever writes
    row = Challenge.model_validate(
        {**first.model_dump(exclude={"id", "opened_at", "decided_at"}), "run_id": running(db)}
    )
    db.add(row)
    with pytest.raises(IntegrityError):
        db.commit()
    db.rollback()
    challenges.close_challenge(
        session=db, challenge_id=first.id, status="retired", reason="users said no"
    )
    db.commit()
    assert opened(db, running(db)).status == "open"  # the next one may open


def test_a_challenge_closes_once_with_its_outcome(db: Session) -> None:
    made = opened(db, running(db))
    outcome = ChallengeOutcome(wins=30, losses=10, ties=2, votes=42, win_rate=0.74)
    closed = challenges.close_challenge(
        session=db,
        challenge_id=made.id,
        status="promoted",
        reason="users prefer it",
        outcome=outcome,
    )
    db.commit()
    assert closed.status == "promoted" and closed.decided_at is not None
    assert (closed.wins, closed.losses, closed.ties, closed.votes) == (30, 10, 2, 42)
    assert closed.reason == "users prefer it" and challenges.get_open(session=db) is None
    with pytest.raises(StateConflictError, match="closed already"):
        challenges.close_challenge(
            session=db, challenge_id=made.id, status="retired", reason="again"
        )
    with pytest.raises(InvalidValueError, match="status"):
        challenges.close_challenge(session=db, challenge_id=made.id, status="open", reason="x")
    [listed] = challenges.list_challenges(session=db, status="closed")
    assert listed.id == made.id
    assert challenges.list_challenges(session=db, status="open") == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_votes": 0}, "min_votes"),
        ({"votes_per_origin": True}, "votes_per_origin"),
        ({"share": 1.5}, "share"),
        ({"champion_version": "policy-new"}, "challenger_version"),
        ({"promote_with": {"rm": 3}}, "promote_with"),
        ({"influence": {"min_votes": 12}}, "influence"),
        ({"challenger_version": ""}, "challenger_version"),
    ],
)
def test_bad_rules_are_refused_by_name(db: Session, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        opened(db, running(db), **changes)
    assert caught.value.field == field


def test_a_challenge_needs_a_live_run(db: Session) -> None:
    with pytest.raises(UnknownIdError):
        opened(db, "no-such-run")
    finished = run_records.create_run(session=db, status="failed").id
    with pytest.raises(StateConflictError, match="finished"):
        opened(db, finished)


def test_a_stored_influence_that_is_no_config_is_refused(db: Session) -> None:
    made = opened(db, running(db))
    broken = made.model_copy(update={"influence": {"no_such_threshold": 1}})
    with pytest.raises(InvalidValueError, match="InfluenceConfig"):
        challenges.influence_config(broken)
    assert challenges.influence_config(made.model_copy(update={"influence": None})) is None
