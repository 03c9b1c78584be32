"""Challenge records: one row per challenger the users judge in the arena (`challenges`): whom it
faces, the rules it is judged by, whether it is open, and how it was closed.

Only :mod:`kindchat.retrain.challenger` writes them (it moves the registry aliases in the same
step). These functions check and stage the change and `flush`; the caller commits, so that a
challenge and its retrain run change in one transaction. At most one challenge is `open` at a
time (checked here, and by a partial unique index in the database).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from kindchat.feedback.errors import InvalidValueError, StateConflictError
from kindchat.feedback.influence import InfluenceConfig
from kindchat.feedback.models import (
    CHALLENGE_STATUSES,
    TERMINAL_RUN_STATUSES,
    Challenge,
    ChallengeOutcome,
    ChallengePublic,
    RetrainRun,
    utcnow,
)
from kindchat.feedback.validation import (
    check_json,
    check_limit,
    check_optional_str,
    check_str,
    get_row,
    to_public,
)

OPEN = "open"
CLOSED_STATUSES: tuple[str, ...] = tuple(s for s in CHALLENGE_STATUSES if s != OPEN)


def _positive(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"{field} must be a whole number ≥ 1, got {value!r}", field=field)
    return value


def influence_config(challenge: ChallengePublic) -> InfluenceConfig | None:
    """The anomaly rule the challenge is judged by, as the config it was stored from (None:
    no session is left out, as in records older than the rule)."""
    return _influence(challenge.influence)


def _influence(value: Any) -> InfluenceConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidValueError("influence must be an object or null", field="influence")
    try:
        return InfluenceConfig(**value)
    except TypeError as err:  # unknown or missing fields
        raise InvalidValueError(
            f"influence is no InfluenceConfig: {err}", field="influence"
        ) from None


RULES: tuple[str, ...] = ("sequential", "fixed")  # how a challenge is decided (retrain.gates)


def _rule(value: object) -> str:
    if value not in RULES:
        raise InvalidValueError(f"rule must be one of {list(RULES)}, got {value!r}", field="rule")
    return str(value)


def create_challenge(
    *,
    session: Session,
    run_id: str,
    challenger_version: str,
    champion_alias: str,
    champion_alias_target: str | None,
    champion_version: str,
    promote_with: dict[str, str],
    share: float,
    min_votes: int,
    rule: str = "sequential",
    min_sessions: int,
    votes_per_session: int,
    min_origins: int,
    votes_per_origin: int,
    influence: InfluenceConfig | None,
    deadline: datetime,
) -> ChallengePublic:
    """Stage an `open` challenge of `challenger_version` against `champion_version` for run
    `run_id` (which must exist and not be finished); the caller commits.

    :class:`StateConflictError` when another challenge is open or the run has finished.
    """
    run = get_row(session, RetrainRun, run_id, "retrain run", "run_id")
    if run.status in TERMINAL_RUN_STATUSES:
        raise StateConflictError(
            f"run {run_id!r} finished as {run.status!r}; it cannot open a challenge",
            field="run_id",
        )
    current = get_open(session=session)
    if current is not None:
        raise StateConflictError(
            f"challenger {current.challenger_version} (run {current.run_id}) is being judged "
            "already; one challenge at a time",
            field="challenger_version",
        )
    if not isinstance(promote_with, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in promote_with.items()
    ):
        raise InvalidValueError(
            "promote_with must map aliases to version ids", field="promote_with"
        )
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise InvalidValueError(f"share must lie in [0, 1], got {share!r}", field="share")
    if not isinstance(deadline, datetime):
        raise InvalidValueError(f"deadline must be a datetime, got {deadline!r}", field="deadline")
    if influence is not None and not isinstance(influence, InfluenceConfig):
        raise InvalidValueError("influence must be an InfluenceConfig or None", field="influence")
    row = Challenge(
        run_id=run_id,
        challenger_version=check_str(challenger_version, "challenger_version"),
        champion_alias=check_str(champion_alias, "champion_alias"),
        champion_alias_target=check_optional_str(champion_alias_target, "champion_alias_target"),
        champion_version=check_str(champion_version, "champion_version"),
        promote_with=dict(check_json(promote_with, "promote_with")),
        share=float(share),
        rule=_rule(rule),
        min_votes=_positive(min_votes, "min_votes"),
        min_sessions=_positive(min_sessions, "min_sessions"),
        votes_per_session=_positive(votes_per_session, "votes_per_session"),
        min_origins=_positive(min_origins, "min_origins"),
        votes_per_origin=_positive(votes_per_origin, "votes_per_origin"),
        influence=None if influence is None else asdict(influence),
        deadline=deadline,
        status=OPEN,
    )
    if row.challenger_version == row.champion_version:
        raise InvalidValueError(
            f"{challenger_version} cannot challenge itself", field="challenger_version"
        )
    session.add(row)
    session.flush()
    return to_public(ChallengePublic, row)


def close_challenge(
    *,
    session: Session,
    challenge_id: str,
    status: str,
    reason: str,
    outcome: ChallengeOutcome | None = None,
) -> ChallengePublic:
    """Stage the end of an open challenge: `promoted`, `retired` or `abandoned`, why, and the
    record it had (`outcome`); stamps `decided_at`. The caller commits.

    :class:`StateConflictError` when the challenge is closed already (it closes once).
    """
    if status not in CLOSED_STATUSES:
        raise InvalidValueError(
            f"status must be one of {list(CLOSED_STATUSES)}, got {status!r}", field="status"
        )
    row = get_row(session, Challenge, challenge_id, "challenge", "challenge_id")
    if row.status != OPEN:
        raise StateConflictError(
            f"challenge {challenge_id!r} was closed already ({row.status})", field="status"
        )
    row.status = status
    row.reason = check_str(reason, "reason", max_len=4_000)
    row.decided_at = utcnow()
    if outcome is not None:
        for name, value in outcome.model_dump().items():
            setattr(row, name, value)
    session.add(row)
    session.flush()
    return to_public(ChallengePublic, row)


def get_open(*, session: Session) -> ChallengePublic | None:
    """The open challenge, or None."""
    row = session.exec(select(Challenge).where(Challenge.status == OPEN)).first()
    return None if row is None else to_public(ChallengePublic, row)


def get_challenge(*, session: Session, challenge_id: str) -> ChallengePublic:
    """The challenge, or :class:`UnknownIdError`."""
    return to_public(
        ChallengePublic, get_row(session, Challenge, challenge_id, "challenge", "challenge_id")
    )


def list_challenges(
    *,
    session: Session,
    status: str | None = None,
    run_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[ChallengePublic]:
    """Challenges, newest first (by opening), optionally of one status or run; `closed` as the
    status lists every closed one."""
    check_limit(limit, offset)
    query = select(Challenge)
    if status == "closed":
        query = query.where(col(Challenge.status).in_(CLOSED_STATUSES))
    elif status is not None:
        if status not in CHALLENGE_STATUSES:
            raise InvalidValueError(
                f"status must be one of {[*CHALLENGE_STATUSES, 'closed']}, got {status!r}",
                field="status",
            )
        query = query.where(Challenge.status == status)
    if run_id is not None:
        query = query.where(Challenge.run_id == run_id)
    query = (
        query.order_by(col(Challenge.opened_at).desc(), col(Challenge.id))
        .offset(offset)
        .limit(limit)
    )
    return [to_public(ChallengePublic, row) for row in session.exec(query)]
