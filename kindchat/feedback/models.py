"""The feedback schema: SQLModel families `XBase` → `XCreate` / `X(table=True)` / `XPublic`.

Tables: `conversations`, `messages`, `ratings`, `battles`, `retrain_runs`, `challenges`. Every
schema change goes through an Alembic revision in `kindchat/feedback/migrations/versions/`.

Times are stored as naive UTC (`timestamp without time zone` on PostgreSQL) and read back as
timezone-aware UTC datetimes; a naive datetime passed in is taken to be UTC.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    LargeBinary,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

Role = Literal["system", "user", "assistant"]
Winner = Literal["a", "b", "tie", "both_bad"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
WINNERS: tuple[str, ...] = ("a", "b", "tie", "both_bad")
# `challenging`: trained and guarded, its policy in the arena until the users decide.
RUN_STATUSES: tuple[str, ...] = (
    "queued",
    "running",
    "challenging",
    "succeeded",
    "failed",
    "refused",
    "skipped",
)
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "refused", "skipped"})
# A challenge is `open` while the users judge it, then closed once: `promoted` or `retired` by
# the votes (or the deadline), `abandoned` when it could not go on (its run died, the alias
# could not move).
CHALLENGE_STATUSES: tuple[str, ...] = ("open", "promoted", "retired", "abandoned")
RATING_VALUES: tuple[int, ...] = (1, -1)

ID_LENGTH = 64  # uuid4 hex (32) or an OpenAI-style "chatcmpl-…" id
NAME_LENGTH = 128  # session ids, model aliases and versions, stages, reasons


class _Clock:
    """UTC now, strictly increasing within the process (orders messages created back to back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        with self._lock:
            now = datetime.now(timezone.utc)
            if now <= self._last:
                now = self._last + timedelta(microseconds=1)
            self._last = now
            return now


utcnow = _Clock()


def new_id() -> str:
    """A fresh random id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return (
        value.replace(tzinfo=timezone.utc)
        if value.tzinfo is None
        else value.astimezone(timezone.utc)
    )


class UtcDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _time(*, index: bool = False, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UtcDateTime, index=index, nullable=True)
    return Field(default_factory=utcnow, sa_type=UtcDateTime, index=index, nullable=False)


# --- conversations --------------------------------------------------------------------------


class ConversationBase(SQLModel):
    session_id: str | None = Field(
        default=None, max_length=NAME_LENGTH, index=True, description="Browser/API session."
    )
    title: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = Field(
        default=None, sa_type=Text, description="The persona: the system message of every turn."
    )


class Conversation(ConversationBase, table=True):
    __tablename__ = "conversations"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_LENGTH)
    created_at: datetime = _time(index=True)
    updated_at: datetime | None = _time(index=True, nullable=True)
    deleted_at: datetime | None = _time(nullable=True)
    share_token: str | None = Field(default=None, max_length=ID_LENGTH, unique=True, index=True)
    shared_at: datetime | None = _time(nullable=True)  # the link shows what existed then


class ConversationPublic(ConversationBase):
    id: str
    created_at: datetime
    updated_at: datetime | None = None
    deleted_at: datetime | None = None
    share_token: str | None = None
    shared_at: datetime | None = None


# --- messages -------------------------------------------------------------------------------


class MessageBase(SQLModel):
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=ID_LENGTH)
    role: str = Field(max_length=16, description="system, user or assistant.")
    content: str = Field(sa_type=Text)
    model_alias: str | None = Field(default=None, max_length=NAME_LENGTH)
    model_version: str | None = Field(default=None, max_length=NAME_LENGTH, index=True)
    params: dict[str, Any] | None = Field(
        default=None, sa_type=JSON, description="Generation parameters (temperature, top_p, …)."
    )
    latency_ms: int | None = Field(default=None, ge=0)
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    parent_id: str | None = Field(
        default=None,
        foreign_key="messages.id",
        index=True,
        max_length=ID_LENGTH,
        description=(
            "The message this one replaces: an answer it regenerates, or a user message it "
            "edits (same conversation, same context; the old branch stays stored)."
        ),
    )
    follows_id: str | None = Field(
        default=None,
        foreign_key="messages.id",
        max_length=ID_LENGTH,
        description=(
            "The message this one follows when that is not the conversation's latest branch "
            "(a new turn after going back to an older branch, ‹1/2›)."
        ),
    )
    session_id: str | None = Field(default=None, max_length=NAME_LENGTH, index=True)
    flagged: bool = Field(default=False, index=True, description="Moderation flagged it.")
    flag_reason: str | None = Field(default=None, max_length=NAME_LENGTH)
    finish_reason: str | None = Field(
        default=None, max_length=32, description="stop, length, or stop_by_user."
    )


class Message(MessageBase, table=True):
    __tablename__ = "messages"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_LENGTH)
    created_at: datetime = _time(index=True)


class MessagePublic(MessageBase):
    id: str
    created_at: datetime


# --- ratings --------------------------------------------------------------------------------


class RatingBase(SQLModel):
    message_id: str = Field(foreign_key="messages.id", index=True, max_length=ID_LENGTH)
    value: int = Field(description="+1 (thumbs up) or -1 (thumbs down).")
    reason: str | None = Field(default=None, max_length=NAME_LENGTH)
    comment: str | None = Field(default=None, sa_type=Text)
    better_answer: str | None = Field(
        default=None,
        sa_type=Text,
        description="The answer the user would have liked instead (a pair and an SFT example).",
    )


class Rating(RatingBase, table=True):
    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("message_id", "session_id", name="uq_ratings_message_session"),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(max_length=NAME_LENGTH)
    created_at: datetime = _time()
    updated_at: datetime = _time(index=True)


class RatingPublic(RatingBase):
    id: int
    session_id: str
    created_at: datetime
    updated_at: datetime


# --- arena battles --------------------------------------------------------------------------


class BattleBase(SQLModel):
    session_id: str = Field(max_length=NAME_LENGTH, index=True)
    context: list[dict[str, str]] = Field(
        sa_type=JSON, description="OpenAI-style messages both answers reply to (ends with user)."
    )
    prompt: str = Field(sa_type=Text, description="The last user message of `context`.")
    message_a_id: str = Field(foreign_key="messages.id", max_length=ID_LENGTH)
    message_b_id: str = Field(foreign_key="messages.id", max_length=ID_LENGTH)
    model_a: str | None = Field(default=None, max_length=NAME_LENGTH)
    version_a: str | None = Field(default=None, max_length=NAME_LENGTH)
    model_b: str | None = Field(default=None, max_length=NAME_LENGTH)
    version_b: str | None = Field(default=None, max_length=NAME_LENGTH)
    winner: str | None = Field(default=None, max_length=16, description="a, b, tie or both_bad.")
    void_reason: str | None = Field(
        default=None,
        max_length=NAME_LENGTH,
        description="Why the vote does not count (an answer gave its model away).",
    )


class Battle(BattleBase, table=True):
    __tablename__ = "battles"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_LENGTH)
    created_at: datetime = _time()
    voted_at: datetime | None = _time(index=True, nullable=True)


class BattlePublic(BattleBase):
    id: str
    created_at: datetime
    voted_at: datetime | None


# --- retrain runs ---------------------------------------------------------------------------


class RetrainRunBase(SQLModel):
    status: str = Field(default="queued", max_length=16, index=True)
    stage: str | None = Field(default=None, max_length=NAME_LENGTH)
    metrics: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    error: str | None = Field(default=None, sa_type=Text)
    produced_versions: list[str] | None = Field(default=None, sa_type=JSON)
    promoted: bool = False


class RetrainRun(RetrainRunBase, table=True):
    __tablename__ = "retrain_runs"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_LENGTH)
    created_at: datetime = _time(index=True)
    started_at: datetime | None = _time(nullable=True)
    finished_at: datetime | None = _time(nullable=True)


class RetrainRunPublic(RetrainRunBase):
    id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# --- challenges ------------------------------------------------------------------------------


class ChallengeOutcome(SQLModel):
    """A challenge's record in the arena and the decision, as stored when it closes."""

    wins: int | None = None  # counted votes the challenger won …
    losses: int | None = None  # … lost …
    ties: int | None = None  # … and tied (`tie` and `both_bad`)
    votes: int | None = None
    sessions: int | None = None  # distinct sessions whose votes count
    origins: int | None = None  # distinct origins (client addresses) whose votes count
    raw_votes: int | None = None  # votes cast, before the caps and the anomaly filter
    excluded_sessions: int | None = None  # sessions left out as anomalous
    win_rate: float | None = None
    win_rate_low: float | None = None  # the 95% interval
    win_rate_high: float | None = None


class ChallengeBase(ChallengeOutcome):
    """A challenger in the arena: whom it faces, the rules it is judged by (fixed when it
    opens), its status, and once closed, why and its record (the outcome fields, None while
    open). Written by :mod:`kindchat.retrain.challenger` alone (through
    :mod:`kindchat.feedback.challenges`)."""

    run_id: str = Field(foreign_key="retrain_runs.id", index=True, max_length=ID_LENGTH)
    challenger_version: str = Field(max_length=NAME_LENGTH, index=True)
    champion_alias: str = Field(
        max_length=NAME_LENGTH, description="The alias a promotion moves (e.g. `rlhf`)."
    )
    champion_alias_target: str | None = Field(
        default=None,
        max_length=NAME_LENGTH,
        description="What the alias pointed at when the challenge opened (None: nothing yet).",
    )
    champion_version: str = Field(
        max_length=NAME_LENGTH,
        description="The version the challenger faces (the alias's, else e.g. SFT's).",
    )
    promote_with: dict[str, str] = Field(
        default_factory=dict, sa_type=JSON, description="Other aliases a promotion moves."
    )
    # the rules
    share: float = Field(
        description="challenger_share when it opened (kept for the record; each server draws "
        "its battles with its own setting)."
    )
    rule: str = Field(
        default="fixed",
        max_length=16,
        sa_column_kwargs={"server_default": "fixed"},
        description="sequential (a test valid at every look) or fixed (the interval from "
        "min_votes on).",
    )
    min_votes: int = Field(ge=1)
    min_sessions: int = Field(ge=1)
    votes_per_session: int = Field(ge=1)
    min_origins: int = Field(ge=1)
    votes_per_origin: int = Field(ge=1)
    influence: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSON,
        description="The anomaly rule (an InfluenceConfig); None: no session left out.",
    )
    deadline: datetime = Field(sa_type=UtcDateTime)
    status: str = Field(default="open", max_length=16, index=True)
    reason: str | None = Field(default=None, sa_type=Text, description="Why it was closed.")


class Challenge(ChallengeBase, table=True):
    __tablename__ = "challenges"
    # one challenge at a time: at most one row is `open` (a partial unique index)
    __table_args__ = (
        Index(
            "uq_challenges_one_open",
            "status",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=ID_LENGTH)
    opened_at: datetime = _time(index=True)
    decided_at: datetime | None = _time(nullable=True)


class ChallengePublic(ChallengeBase):
    id: str
    opened_at: datetime
    decided_at: datetime | None = None


# --- the scheduler's job table --------------------------------------------------------------
# APScheduler's own schema (its SQLAlchemyJobStore reads and writes it); declared here so that
# the migrations create it and the schema check covers it. The scheduler finds it in place.
SCHEDULER_JOBS = Table(
    "apscheduler_jobs",
    SQLModel.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)


# --- statistics (not tables) ----------------------------------------------------------------


class VersionDayCount(SQLModel):
    model_version: str | None
    day: str  # YYYY-MM-DD (UTC)
    messages: int


class ThumbsStat(SQLModel):
    model_version: str | None
    up: int
    down: int
    ratio: float | None  # up / (up + down); None without ratings


class VoteTally(SQLModel):
    model_version: str | None
    battles: int  # voted battles this version took part in
    wins: int
    losses: int
    ties: int
    both_bad: int


class BattleOutcome(SQLModel):
    """One voted battle, as rankings read it: each side's version (alias if unknown)."""

    model_a: str
    model_b: str
    winner: str  # a, b, tie or both_bad
    voted_at: datetime | None = None
    session_id: str | None = None  # the voter


class DayFeedback(SQLModel):
    day: str  # YYYY-MM-DD (UTC)
    thumbs_up: int = 0  # ratings by the day of their last change
    thumbs_down: int = 0
    votes: int = 0  # arena votes by the day they were cast


class FeedbackStats(SQLModel):
    conversations: int
    messages: int
    ratings: int
    battles: int
    voted_battles: int
    messages_per_version_day: list[VersionDayCount]
    thumbs: list[ThumbsStat]
    votes: list[VoteTally]
