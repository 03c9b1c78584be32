"""The feedback store API used by serve, ui and retrain.

Conventions (every function):

* keyword-only arguments; `session` is the SQLModel/SQLAlchemy `Session` (one per thread or
  request); `session_id` is the *user's* browser/API session, an opaque string;
* each write function commits its own transaction — one call, one stored fact — and returns a
  `…Public` model that stays valid after the session closes;
* bad input raises a typed error from :mod:`kindchat.feedback.errors`, never a bare exception:
  :class:`NotFoundError` (404) for unknown ids, :class:`InvalidValueError` (422) for bad values,
  :class:`ForbiddenError` (403) and :class:`ConflictError` (409) for actions the state forbids;
* only portable SQL (SQLite and PostgreSQL by URL alone); races are settled by the database
  (a unique constraint for ratings, a conditional UPDATE for votes), not by reading first.

Typical serve flow::

    conv = create_conversation(session=s, session_id=sid)
    user = record_message(session=s, conversation_id=conv.id, role="user", content=text)
    answer = record_message(session=s, conversation_id=conv.id, role="assistant",
                            content=reply, model_alias="rlhf", model_version="v0007",
                            params={"temperature": 0.7}, latency_ms=840,
                            prompt_tokens=31, completion_tokens=57, session_id=sid)
    rate(session=s, message_id=answer.id, session_id=sid, value=-1, reason="unfriendly")
    again = record_message(..., role="assistant", parent_id=answer.id, ...)  # regeneration
"""

from __future__ import annotations

import enum
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import case, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from kindchat.feedback.errors import (
    ConflictError,
    ForbiddenError,
    InvalidValueError,
    NotFoundError,
)
from kindchat.feedback.models import (
    ID_LENGTH,
    NAME_LENGTH,
    RATING_VALUES,
    ROLES,
    RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    WINNERS,
    Battle,
    BattleOutcome,
    BattlePublic,
    Conversation,
    ConversationPublic,
    DayFeedback,
    FeedbackStats,
    Message,
    MessagePublic,
    Rating,
    RatingPublic,
    RetrainRun,
    RetrainRunPublic,
    ThumbsStat,
    VersionDayCount,
    VoteTally,
    as_utc,
    new_id,
    utcnow,
)

logger = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 200_000
MAX_BETTER_ANSWER_CHARS = 4_000  # a better answer a user writes: one reply, not a document
MAX_LIST_LIMIT = 10_000
P = TypeVar("P", bound=SQLModel)
M = TypeVar("M", Message, MessagePublic)


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET  # "leave this field as it is" in update_run


# --- checks ---------------------------------------------------------------------------------


def _check_str(
    value: Any, field: str, *, max_len: int = NAME_LENGTH, allow_empty: bool = False
) -> str:
    if not isinstance(value, str):
        raise InvalidValueError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    if not allow_empty and not value.strip():
        raise InvalidValueError(f"{field} must not be empty", field=field)
    if len(value) > max_len:
        raise InvalidValueError(
            f"{field} has {len(value)} characters, over the limit of {max_len}; shorten it",
            field=field,
        )
    return value


def _check_optional_str(value: Any, field: str, *, max_len: int = NAME_LENGTH) -> str | None:
    return None if value is None else _check_str(value, field, max_len=max_len)


def _check_count(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(f"{field} must be a whole number ≥ 0, got {value!r}", field=field)
    return value


def _check_json(value: Any, field: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidValueError(f"{field} must be JSON-serialisable: {err}", field=field) from None
    return value


def _check_limit(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidValueError(
            f"limit must lie in 1..{MAX_LIST_LIMIT}, got {limit!r}", field="limit"
        )
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidValueError(f"offset must be ≥ 0, got {offset!r}", field="offset")


def _check_since(since: datetime | None) -> datetime | None:
    if since is None:
        return None
    if not isinstance(since, datetime):
        raise InvalidValueError(f"since must be a datetime, got {since!r}", field="since")
    return as_utc(since)


def check_context(context: Any, field: str = "context") -> list[dict[str, str]]:
    """Validate OpenAI-style messages that end with a user message; return plain dicts."""
    if not isinstance(context, Sequence) or isinstance(context, str) or not context:
        raise InvalidValueError(f"{field} must be a non-empty list of messages", field=field)
    out: list[dict[str, str]] = []
    for index, message in enumerate(context):
        where = f"{field}[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidValueError(f"{where} must be an object with role and content", field=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidValueError(
                f"{where}.role must be one of {list(ROLES)}, got {role!r}", field=f"{where}.role"
            )
        content = _check_str(
            message.get("content"), f"{where}.content", max_len=MAX_CONTENT_CHARS, allow_empty=True
        )
        out.append({"role": str(role), "content": content})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise InvalidValueError(f"{field} must end with a non-empty user message", field=field)
    return out


def _get(session: Session, model: type[Any], id_: Any, kind: str, field: str) -> Any:
    if not isinstance(id_, str | int) or isinstance(id_, bool) or id_ == "":
        raise InvalidValueError(f"{field} must be a non-empty id, got {id_!r}", field=field)
    row = session.get(model, id_)
    if row is None:
        raise NotFoundError(kind, str(id_), field=field)
    return row


def _public(model: type[P], row: SQLModel) -> P:
    return model.model_validate(row, from_attributes=True)


# --- conversations and messages -------------------------------------------------------------


def create_conversation(
    *,
    session: Session,
    session_id: str | None = None,
    title: str | None = None,
    system_prompt: str | None = None,
) -> ConversationPublic:
    """Start a conversation (messages are added with :func:`record_message`)."""
    row = Conversation(
        session_id=_check_optional_str(session_id, "session_id"),
        title=_check_optional_str(title, "title", max_len=200),
        system_prompt=_check_optional_str(
            system_prompt, "system_prompt", max_len=MAX_CONTENT_CHARS
        ),
    )
    public = _public(ConversationPublic, row)
    session.add(row)
    session.commit()
    return public


def get_conversation(*, session: Session, conversation_id: str) -> ConversationPublic:
    """The conversation, or :class:`NotFoundError`."""
    row = _get(session, Conversation, conversation_id, "conversation", "conversation_id")
    return _public(ConversationPublic, row)


def owned_conversation(
    *, session: Session, conversation_id: str, session_id: str | None
) -> ConversationPublic:
    """The conversation if `session_id` started it and did not delete it; else NotFoundError
    (the same answer whether it does not exist or is someone else's)."""
    return _public(ConversationPublic, _owned(session, conversation_id, session_id))


def _owned(session: Session, conversation_id: str, session_id: str | None) -> Conversation:
    """The conversation if `session_id` started it and did not delete it; else 404 (the same
    answer whether it does not exist or is someone else's)."""
    row = session.get(Conversation, conversation_id)
    if row is None or row.session_id != session_id or row.deleted_at is not None:
        raise NotFoundError("conversation", conversation_id, field="conversation_id")
    return row


def list_conversations(
    *, session: Session, session_id: str, limit: int = 50, offset: int = 0
) -> list[ConversationPublic]:
    """The session's conversations that were not deleted, most recently active first."""
    _check_limit(limit, offset)
    _check_str(session_id, "session_id", max_len=NAME_LENGTH)
    query = (
        select(Conversation)
        .where(
            Conversation.session_id == session_id,
            col(Conversation.deleted_at).is_(None),
            col(Conversation.title).isnot(None),  # started, not empty
        )
        .order_by(
            func.coalesce(col(Conversation.updated_at), col(Conversation.created_at)).desc(),
            col(Conversation.id),
        )
        .offset(offset)
        .limit(limit)
    )
    return [_public(ConversationPublic, row) for row in session.exec(query)]


def conversation_thread(*, session: Session, conversation_id: str) -> list[MessagePublic]:
    """The conversation as its user sees it now: the latest branch (edits and regenerations
    replace what they replace; the old branches stay stored)."""
    _get(session, Conversation, conversation_id, "conversation", "conversation_id")
    rows = session.exec(
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(col(Message.created_at), col(Message.id))
    ).all()
    return [_public(MessagePublic, m) for m in thread_members(rows)[1]]


def rename_conversation(
    *, session: Session, conversation_id: str, session_id: str, title: str
) -> ConversationPublic:
    row = _owned(session, conversation_id, session_id)
    row.title = _check_str(title.strip(), "title", max_len=200)
    session.add(row)
    session.commit()
    return _public(ConversationPublic, row)


def delete_conversation(
    *, session: Session, conversation_id: str, session_id: str, forget: bool = False
) -> None:
    """Hide a conversation from its session. It stays training data unless `forget`: then its
    messages, their ratings and battles are removed for good."""
    row = _owned(session, conversation_id, session_id)
    if not forget:
        row.deleted_at = utcnow()
        row.share_token = None
        session.add(row)
        session.commit()
        return
    ids = list(session.exec(select(Message.id).where(Message.conversation_id == row.id)))
    if ids:
        battles = session.exec(
            select(Battle).where(
                col(Battle.message_a_id).in_(ids) | col(Battle.message_b_id).in_(ids)
            )
        ).all()
        for battle in battles:
            session.delete(battle)
        for rating in session.exec(select(Rating).where(col(Rating.message_id).in_(ids))).all():
            session.delete(rating)
        session.flush()
        session.exec(update(Message).where(col(Message.id).in_(ids)).values(parent_id=None))
        for message in session.exec(select(Message).where(col(Message.id).in_(ids))).all():
            session.delete(message)
        session.flush()
    session.delete(row)
    session.commit()


def share_conversation(*, session: Session, conversation_id: str, session_id: str) -> str:
    """A read-only link token for the conversation (the same one while it is shared)."""
    import secrets

    row = _owned(session, conversation_id, session_id)
    if row.share_token is None:
        row.share_token = secrets.token_urlsafe(24)
        session.add(row)
        session.commit()
    return str(row.share_token)


def shared_conversation(
    *, session: Session, token: str
) -> tuple[ConversationPublic, list[MessagePublic]]:
    """The conversation a share token names and its current branch; 404 once unshared."""
    row = session.exec(
        select(Conversation).where(
            Conversation.share_token == token, col(Conversation.deleted_at).is_(None)
        )
    ).first()
    if row is None or not token:
        raise NotFoundError("shared conversation", token, field="token")
    return _public(ConversationPublic, row), conversation_thread(
        session=session, conversation_id=row.id
    )


def record_message(
    *,
    session: Session,
    conversation_id: str,
    role: str,
    content: str,
    session_id: str | None = None,
    model_alias: str | None = None,
    model_version: str | None = None,
    params: dict[str, Any] | None = None,
    latency_ms: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    parent_id: str | None = None,
    message_id: str | None = None,
    flag_reason: str | None = None,
    finish_reason: str | None = None,
) -> MessagePublic:
    """Append a message to a conversation and return it (its `id` can be the completion id).

    `parent_id` marks a message as replacing an earlier one of the same role: an assistant
    message *regenerates* an answer (it answers the same context), a user message *edits* an
    earlier user message (a new branch from the same point; the old branch stays stored). The
    parent may sit in this conversation (then the thread continues from the replacement) or in
    another one (e.g. serve stores each stateless request as its own conversation, history
    included; the context is then this conversation's own messages). `message_id` lets the
    caller choose the id (e.g. an OpenAI-style `chatcmpl-…`); a new uuid4 hex is made otherwise.
    `flag_reason` marks the message flagged by moderation (never training data);
    `finish_reason` records how an answer ended (`stop_by_user` when the user stopped it).

    Raises NotFoundError (conversation or parent unknown), InvalidValueError (bad role, empty
    user message, negative counts, parent or message not an assistant message, …),
    ConflictError (`message_id` taken).
    """
    if role not in ROLES:
        raise InvalidValueError(f"role must be one of {list(ROLES)}, got {role!r}", field="role")
    _check_str(content, "content", max_len=MAX_CONTENT_CHARS, allow_empty=role == "assistant")
    if message_id is not None:
        _check_str(message_id, "message_id", max_len=ID_LENGTH)
    if params is not None and not isinstance(params, dict):
        raise InvalidValueError("params must be an object (dict) or null", field="params")
    conversation = _get(session, Conversation, conversation_id, "conversation", "conversation_id")
    if parent_id is not None:
        parent = _get(session, Message, parent_id, "message", "parent_id")
        if role == "system" or parent.role != role:
            raise InvalidValueError(
                "parent_id marks a regeneration or an edit: both messages must be assistant "
                "messages, or both user messages",
                field="parent_id",
            )
    row = Message(
        conversation_id=conversation_id,
        role=role,
        content=content,
        session_id=_check_optional_str(session_id, "session_id"),
        model_alias=_check_optional_str(model_alias, "model_alias"),
        model_version=_check_optional_str(model_version, "model_version"),
        params=_check_json(params, "params"),
        latency_ms=_check_count(latency_ms, "latency_ms"),
        prompt_tokens=_check_count(prompt_tokens, "prompt_tokens"),
        completion_tokens=_check_count(completion_tokens, "completion_tokens"),
        parent_id=parent_id,
        flagged=flag_reason is not None,
        flag_reason=_check_optional_str(flag_reason, "flag_reason"),
        finish_reason=_check_optional_str(finish_reason, "finish_reason", max_len=32),
    )
    if message_id is not None:
        row.id = message_id
    public = _public(MessagePublic, row)
    session.add(row)
    conversation.updated_at = utcnow()
    if conversation.title is None and role == "user":
        conversation.title = _title(content)
    session.add(conversation)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if message_id is not None and session.get(Message, message_id) is not None:
            raise ConflictError(
                f"a message with id {message_id!r} exists already", field="message_id"
            ) from None
        raise
    return public


def _title(text: str, limit: int = 40) -> str:
    """A conversation's title: its first user message, on one line, cut at `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def get_message(*, session: Session, message_id: str) -> MessagePublic:
    """The message, or :class:`NotFoundError`."""
    return _public(MessagePublic, _get(session, Message, message_id, "message", "message_id"))


def list_messages(
    *,
    session: Session,
    conversation_id: str | None = None,
    model_version: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[MessagePublic]:
    """Messages oldest first, optionally of one conversation / model version / since a time."""
    _check_limit(limit, offset)
    since = _check_since(since)
    query = select(Message)
    if conversation_id is not None:
        query = query.where(Message.conversation_id == conversation_id)
    if model_version is not None:
        query = query.where(Message.model_version == model_version)
    if since is not None:
        query = query.where(col(Message.created_at) >= since)
    query = query.order_by(col(Message.created_at), col(Message.id)).offset(offset).limit(limit)
    return [_public(MessagePublic, row) for row in session.exec(query)]


def thread_members(
    messages: Sequence[M],
) -> tuple[dict[str, list[M]], list[M]]:
    """For each message of ONE conversation, the messages it follows; and the thread as it
    stands after the last message (the latest branch). See :func:`thread_contexts`."""
    ordered = sorted(messages, key=lambda m: (m.created_at, m.id))
    thread: list[M] = []
    members: dict[str, list[M]] = {}
    for message in ordered:
        slot: int | None = None
        if message.parent_id is not None:
            slot = next((i for i, m in enumerate(thread) if m.id == message.parent_id), None)
        elif message.role == "assistant" and thread and thread[-1].role == "assistant":
            slot = len(thread) - 1
        if slot is not None:
            thread = thread[:slot]
        members[message.id] = list(thread)
        thread.append(message)
    return members, thread


def thread_contexts(messages: Sequence[Message | MessagePublic]) -> dict[str, list[dict[str, str]]]:
    """For each message of ONE conversation, the messages it follows (OpenAI-style dicts).

    Messages are taken in creation order. An assistant message that replaces another answers
    the same context and takes its place in the thread from then on (later messages of the old
    branch are left behind): explicitly, a regeneration (`parent_id` set); implicitly, an
    assistant message recorded right after another assistant message (an alternative answer,
    e.g. the second side of a battle).
    """
    members, _ = thread_members(messages)
    return {
        key: [{"role": m.role, "content": m.content} for m in thread]
        for key, thread in members.items()
    }


def message_context(*, session: Session, message_id: str) -> list[dict[str, str]]:
    """The messages (OpenAI-style dicts) that `message_id` replied to, oldest first."""
    target = _get(session, Message, message_id, "message", "message_id")
    rows = session.exec(
        select(Message).where(
            Message.conversation_id == target.conversation_id,
            col(Message.created_at) <= target.created_at,
        )
    ).all()
    return thread_contexts(rows)[target.id]


# --- ratings --------------------------------------------------------------------------------


def rate(
    *,
    session: Session,
    message_id: str,
    session_id: str,
    value: int,
    reason: str | None = None,
    comment: str | None = None,
    better_answer: str | None = None,
) -> RatingPublic:
    """Record 👍 (`value=1`) or 👎 (`value=-1`) on an assistant message for one user session.

    One rating per (message, session): rating again replaces value, reason, comment and better
    answer (the `created_at` of the first vote is kept, `updated_at` moves). `better_answer` is
    the reply the user would have liked instead (at most `MAX_BETTER_ANSWER_CHARS`); export turns
    it into a pair (better > this answer) and an SFT example.

    Raises NotFoundError (unknown message), InvalidValueError (value not ±1, not an assistant
    message, empty session id, reason over 128 characters).
    """
    if isinstance(value, bool) or value not in RATING_VALUES:
        raise InvalidValueError(f"value must be 1 (👍) or -1 (👎), got {value!r}", field="value")
    _check_str(session_id, "session_id")
    reason = _check_optional_str(reason, "reason")
    if comment is not None:
        _check_str(comment, "comment", max_len=MAX_CONTENT_CHARS, allow_empty=True)
    if better_answer is not None:
        _check_str(better_answer, "better_answer", max_len=MAX_BETTER_ANSWER_CHARS)
    message = _get(session, Message, message_id, "message", "message_id")
    if message.role != "assistant":
        raise InvalidValueError(
            f"only assistant messages can be rated; {message_id!r} is a {message.role} message",
            field="message_id",
        )
    for attempt in range(2):
        now = utcnow()
        row = session.exec(
            select(Rating).where(Rating.message_id == message_id, Rating.session_id == session_id)
        ).first()
        if row is None:
            row = Rating(message_id=message_id, session_id=session_id, value=value, created_at=now)
        row.value, row.reason, row.comment, row.updated_at = value, reason, comment, now
        row.better_answer = better_answer
        session.add(row)
        try:
            session.flush()  # assigns the id of a new rating
            public = _public(RatingPublic, row)
            session.commit()
            return public
        except IntegrityError:  # another writer inserted the same (message, session) first
            session.rollback()
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def list_ratings(
    *,
    session: Session,
    message_id: str | None = None,
    session_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[RatingPublic]:
    """Ratings by last change, oldest first; filters combine with AND."""
    _check_limit(limit, offset)
    since = _check_since(since)
    query = select(Rating)
    if message_id is not None:
        query = query.where(Rating.message_id == message_id)
    if session_id is not None:
        query = query.where(Rating.session_id == session_id)
    if since is not None:
        query = query.where(col(Rating.updated_at) >= since)
    query = query.order_by(col(Rating.updated_at), col(Rating.id)).offset(offset).limit(limit)
    return [_public(RatingPublic, row) for row in session.exec(query)]


# --- arena battles --------------------------------------------------------------------------


def create_battle(
    *,
    session: Session,
    session_id: str,
    context: Sequence[Mapping[str, str]],
    message_a_id: str,
    message_b_id: str,
    void_reason: str | None = None,
) -> BattlePublic:
    """Open a side-by-side battle of two stored assistant answers to the same `context`.

    `void_reason` says why its vote will not count (an answer gave its model away): the vote
    is still taken, but rankings, the challenger and the export leave it out.

    `context` is the OpenAI-style message list both answered (ending with the user message);
    the models (alias and version) are copied from the two messages. Only `session_id` may vote.

    Raises NotFoundError (unknown message), InvalidValueError (bad context, same message twice,
    a message that is not an assistant answer).
    """
    _check_str(session_id, "session_id")
    clean = check_context(context)
    if message_a_id == message_b_id:
        raise InvalidValueError(
            "message_a_id and message_b_id must be two different messages", field="message_b_id"
        )
    a = _get(session, Message, message_a_id, "message", "message_a_id")
    b = _get(session, Message, message_b_id, "message", "message_b_id")
    for message, name in ((a, "message_a_id"), (b, "message_b_id")):
        if message.role != "assistant":
            raise InvalidValueError(f"{name} must name an assistant message", field=name)
    row = Battle(
        session_id=session_id,
        context=clean,
        prompt=clean[-1]["content"],
        message_a_id=a.id,
        message_b_id=b.id,
        model_a=a.model_alias,
        version_a=a.model_version,
        model_b=b.model_alias,
        version_b=b.model_version,
        void_reason=_check_optional_str(void_reason, "void_reason"),
    )
    public = _public(BattlePublic, row)
    session.add(row)
    session.commit()
    return public


def get_battle(*, session: Session, battle_id: str) -> BattlePublic:
    """The battle, or :class:`NotFoundError`."""
    return _public(BattlePublic, _get(session, Battle, battle_id, "battle", "battle_id"))


def vote(*, session: Session, battle_id: str, session_id: str, winner: str) -> BattlePublic:
    """Record the verdict of a battle: `a`, `b`, `tie` or `both_bad`. Once per battle.

    Raises NotFoundError (unknown battle), InvalidValueError (bad winner), ForbiddenError (the
    battle belongs to another session), ConflictError (already voted).
    """
    if winner not in WINNERS:
        raise InvalidValueError(
            f"winner must be one of {list(WINNERS)}, got {winner!r}", field="winner"
        )
    _check_str(session_id, "session_id")
    battle = _get(session, Battle, battle_id, "battle", "battle_id")
    if battle.session_id != session_id:
        raise ForbiddenError("this battle belongs to another session; vote on your own battles")
    changed = session.execute(
        update(Battle)
        .where(col(Battle.id) == battle_id, col(Battle.winner).is_(None))
        .values(winner=winner, voted_at=utcnow())
    )
    session.commit()
    if getattr(changed, "rowcount", 0) != 1:
        raise ConflictError(f"battle {battle_id!r} has been voted on already", field="battle_id")
    session.refresh(battle)
    return _public(BattlePublic, battle)


def list_battles(
    *,
    session: Session,
    session_id: str | None = None,
    voted: bool | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[BattlePublic]:
    """Battles oldest first; `voted` True/False keeps only (un)voted ones; `since` by creation."""
    _check_limit(limit, offset)
    since = _check_since(since)
    query = select(Battle)
    if session_id is not None:
        query = query.where(Battle.session_id == session_id)
    if voted is not None:
        query = query.where(
            col(Battle.winner).isnot(None) if voted else col(Battle.winner).is_(None)
        )
    if since is not None:
        query = query.where(col(Battle.created_at) >= since)
    query = query.order_by(col(Battle.created_at), col(Battle.id)).offset(offset).limit(limit)
    return [_public(BattlePublic, row) for row in session.exec(query)]


# --- statistics -----------------------------------------------------------------------------


def _count(session: Session, model: type[Any], *where: Any) -> int:
    return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def feedback_stats(*, session: Session, since: datetime | None = None) -> FeedbackStats:
    """Totals; assistant messages per model version and UTC day; 👍 ratio and arena tallies per
    model version (a battle counts for the version of each side; alias when the version is
    unknown). `since` limits everything to rows created (ratings: changed, battles: voted) since.
    """
    since = _check_since(since)
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
    since = _check_since(since)
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
        )
        for row in session.exec(query)
    ]


def feedback_per_day(*, session: Session, since: datetime | None = None) -> list[DayFeedback]:
    """👍, 👎 (by the UTC day of a rating's last change) and arena votes per UTC day, oldest
    first; days without feedback are left out."""
    since = _check_since(since)
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


# --- retrain runs ---------------------------------------------------------------------------


def _check_status(status: Any) -> str:
    if status not in RUN_STATUSES:
        raise InvalidValueError(
            f"status must be one of {list(RUN_STATUSES)}, got {status!r}", field="status"
        )
    return str(status)


def create_run(
    *, session: Session, status: str = "queued", stage: str | None = None
) -> RetrainRunPublic:
    """Record a retrain run (issue 8's `run_retrain_cycle` creates one per cycle)."""
    row = RetrainRun(status=_check_status(status), stage=_check_optional_str(stage, "stage"))
    now = utcnow()
    if row.status != "queued":
        row.started_at = now
    if row.status in TERMINAL_RUN_STATUSES:
        row.finished_at = now
    public = _public(RetrainRunPublic, row)
    session.add(row)
    session.commit()
    return public


def update_run(
    *,
    session: Session,
    run_id: str,
    status: str | _Unset = UNSET,
    stage: str | None | _Unset = UNSET,
    metrics: dict[str, Any] | None | _Unset = UNSET,
    error: str | None | _Unset = UNSET,
    produced_versions: list[str] | None | _Unset = UNSET,
    promoted: bool | _Unset = UNSET,
) -> RetrainRunPublic:
    """Change the given fields of a run (omitted ones stay). `metrics` replaces the old dict.

    Moving to `running` stamps `started_at`; to a final status (succeeded, failed, refused,
    skipped) stamps `finished_at`. A finished run cannot change status again (ConflictError).
    """
    row = _get(session, RetrainRun, run_id, "retrain run", "run_id")
    now = utcnow()
    if not isinstance(status, _Unset):
        status = _check_status(status)
        if row.status in TERMINAL_RUN_STATUSES and status != row.status:
            raise ConflictError(
                f"run {run_id!r} finished as {row.status!r}; it cannot become {status!r}",
                field="status",
            )
        if status != "queued" and row.started_at is None:
            row.started_at = now
        if status in TERMINAL_RUN_STATUSES and row.finished_at is None:
            row.finished_at = now
        row.status = status
    if not isinstance(stage, _Unset):
        row.stage = _check_optional_str(stage, "stage")
    if not isinstance(metrics, _Unset):
        if metrics is not None and not isinstance(metrics, dict):
            raise InvalidValueError("metrics must be an object (dict) or null", field="metrics")
        row.metrics = _check_json(metrics, "metrics")
    if not isinstance(error, _Unset):
        if error is not None:
            _check_str(error, "error", max_len=MAX_CONTENT_CHARS, allow_empty=True)
        row.error = error
    if not isinstance(produced_versions, _Unset):
        if produced_versions is not None and (
            not isinstance(produced_versions, list)
            or not all(isinstance(v, str) and v for v in produced_versions)
        ):
            raise InvalidValueError(
                "produced_versions must be a list of version ids", field="produced_versions"
            )
        row.produced_versions = None if produced_versions is None else list(produced_versions)
    if not isinstance(promoted, _Unset):
        if not isinstance(promoted, bool):
            raise InvalidValueError(
                f"promoted must be true or false, got {promoted!r}", field="promoted"
            )
        row.promoted = promoted
    session.add(row)
    public = _public(RetrainRunPublic, row)
    session.commit()
    return public


def get_run(*, session: Session, run_id: str) -> RetrainRunPublic:
    """The run, or :class:`NotFoundError`."""
    return _public(RetrainRunPublic, _get(session, RetrainRun, run_id, "retrain run", "run_id"))


def list_runs(
    *, session: Session, status: str | None = None, limit: int = 50, offset: int = 0
) -> list[RetrainRunPublic]:
    """Runs, newest first, optionally of one status."""
    _check_limit(limit, offset)
    query = select(RetrainRun)
    if status is not None:
        query = query.where(RetrainRun.status == _check_status(status))
    query = (
        query.order_by(col(RetrainRun.created_at).desc(), col(RetrainRun.id))
        .offset(offset)
        .limit(limit)
    )
    return [_public(RetrainRunPublic, row) for row in session.exec(query)]


__all__ = [
    "UNSET",
    "battle_outcomes",
    "check_context",
    "create_battle",
    "create_conversation",
    "create_run",
    "feedback_per_day",
    "feedback_stats",
    "get_battle",
    "get_conversation",
    "get_message",
    "get_run",
    "list_battles",
    "list_messages",
    "list_ratings",
    "list_runs",
    "message_context",
    "new_id",
    "rate",
    "record_message",
    "thread_contexts",
    "update_run",
    "vote",
]
