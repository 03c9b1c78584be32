"""The feedback store: conversations, messages, ratings and arena battles — writes and reads.

Used by serve, ui and retrain. Beside it: :mod:`~kindchat.feedback.validation` (the checks and
limits), :mod:`~kindchat.feedback.statistics` (counts for the dashboard and the gates),
:mod:`~kindchat.feedback.run_records` (retrain runs), :mod:`~kindchat.feedback.pairs` (pair
mining for training).

Conventions (every function):

* keyword-only arguments; `session` is the SQLModel/SQLAlchemy `Session` (one per thread or
  request); `session_id` is the *user's* browser/API session, an opaque string;
* write functions only *flush* (ids and constraints are checked at once); the caller commits,
  normally by leaving :func:`kindchat.feedback.db.session_scope`, so that the writes of one
  request (a conversation, its messages, a battle) land together or not at all; each returns
  a `…Public` model that stays valid after the session closes;
* bad input raises a typed error from :mod:`kindchat.feedback.errors`, never a bare exception:
  :class:`UnknownIdError` (404) for unknown ids, :class:`InvalidValueError` (422) for bad values,
  :class:`NotYoursError` (403) and :class:`StateConflictError` (409) for actions the state forbids;
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

import logging
import re
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from kindchat.feedback.errors import (
    InvalidValueError,
    NotYoursError,
    StateConflictError,
    UnknownIdError,
)
from kindchat.feedback.models import (
    ID_LENGTH,
    NAME_LENGTH,
    RATING_VALUES,
    ROLES,
    WINNERS,
    Battle,
    BattlePublic,
    Conversation,
    ConversationPublic,
    Message,
    MessagePublic,
    Rating,
    RatingPublic,
    as_utc,
    utcnow,
)
from kindchat.feedback.validation import (
    MAX_BETTER_ANSWER_CHARS,
    MAX_COMMENT_CHARS,
    MAX_CONTENT_CHARS,
    check_context,
    check_count,
    check_json,
    check_limit,
    check_optional_str,
    check_since,
    check_str,
    get_row,
    to_public,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", Message, MessagePublic)


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
        session_id=check_optional_str(session_id, "session_id"),
        title=check_optional_str(title, "title", max_len=200),
        system_prompt=check_optional_str(system_prompt, "system_prompt", max_len=MAX_CONTENT_CHARS),
    )
    public = to_public(ConversationPublic, row)
    session.add(row)
    session.flush()
    return public


def get_conversation(*, session: Session, conversation_id: str) -> ConversationPublic:
    """The conversation, or :class:`UnknownIdError`."""
    row = get_row(session, Conversation, conversation_id, "conversation", "conversation_id")
    return to_public(ConversationPublic, row)


def owned_conversation(
    *, session: Session, conversation_id: str, session_id: str | None
) -> ConversationPublic:
    """The conversation if `session_id` started it and did not delete it; else UnknownIdError
    (the same answer whether it does not exist or is someone else's)."""
    return to_public(ConversationPublic, _owned(session, conversation_id, session_id))


def _owned(
    session: Session, conversation_id: str, session_id: str | None, *, deleted: bool = False
) -> Conversation:
    """The conversation if `session_id` started it and did not delete it (`deleted`: and did
    delete it); else 404 (the same answer whether it does not exist or is someone else's)."""
    row = session.get(Conversation, conversation_id)
    if row is None or row.session_id != session_id or (row.deleted_at is not None) != deleted:
        what = "deleted conversation" if deleted else "conversation"
        raise UnknownIdError(what, conversation_id, field="conversation_id")
    return row


def list_conversations(
    *,
    session: Session,
    session_id: str,
    limit: int = 50,
    offset: int = 0,
    search: str | None = None,
) -> list[ConversationPublic]:
    """The session's conversations that were not deleted, most recently active first; with
    `search`, those whose title or any user or assistant message contains it (case-blind for
    Latin letters). An arena battle's stored context is not a conversation of the chat: it
    stays out."""
    check_limit(limit, offset)
    check_str(session_id, "session_id", max_len=NAME_LENGTH)
    battles = select(Message.conversation_id).join(Battle, col(Battle.message_a_id) == Message.id)
    where = [
        Conversation.session_id == session_id,
        col(Conversation.deleted_at).is_(None),
        col(Conversation.title).isnot(None),  # started, not empty
        col(Conversation.id).not_in(battles),
    ]
    words = " ".join((search or "").split())
    if words:
        check_str(words, "search", max_len=NAME_LENGTH)
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", words) + "%"
        said = select(Message.conversation_id).where(
            col(Message.role).in_(("user", "assistant")),
            col(Message.content).ilike(pattern, escape="\\"),
        )
        where.append(
            col(Conversation.title).ilike(pattern, escape="\\") | col(Conversation.id).in_(said)
        )
    query = (
        select(Conversation)
        .where(*where)
        .order_by(
            func.coalesce(col(Conversation.updated_at), col(Conversation.created_at)).desc(),
            col(Conversation.id),
        )
        .offset(offset)
        .limit(limit)
    )
    return [to_public(ConversationPublic, row) for row in session.exec(query)]


def conversation_thread(
    *, session: Session, conversation_id: str, until: datetime | None = None
) -> list[MessagePublic]:
    """The conversation as its user sees it now: the latest branch (edits and regenerations
    replace what they replace; the old branches stay stored). `until`: as it was then (the
    messages stored by that time)."""
    get_row(session, Conversation, conversation_id, "conversation", "conversation_id")
    rows = session.exec(
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(col(Message.created_at), col(Message.id))
    ).all()
    if until is not None:
        rows = [m for m in rows if as_utc(m.created_at) <= as_utc(until)]
    return [to_public(MessagePublic, m) for m in thread_members(rows)[1]]


def conversation_branches(
    *, session: Session, conversation_id: str, through: str | None = None
) -> list[Branched[MessagePublic]]:
    """The conversation's thread to show (:func:`branch_view`): the latest branch, or the
    latest one through message `through`, with each message's place among its siblings."""
    rows = session.exec(select(Message).where(Message.conversation_id == conversation_id)).all()
    return [
        Branched(to_public(MessagePublic, b.message), b.siblings)
        for b in branch_view(rows, through)
    ]


def rename_conversation(
    *, session: Session, conversation_id: str, session_id: str, title: str
) -> ConversationPublic:
    row = _owned(session, conversation_id, session_id)
    row.title = check_str(title.strip(), "title", max_len=200)
    session.add(row)
    session.flush()
    return to_public(ConversationPublic, row)


def delete_conversation(
    *, session: Session, conversation_id: str, session_id: str, forget: bool = False
) -> None:
    """Delete a conversation for its session: it leaves the history, its share link stops,
    and it no longer trains anything (the export skips it); it can be restored
    (:func:`restore_conversation`) until retention removes it. With `forget` its messages,
    their ratings and battles are removed for good at once."""
    row = _owned(session, conversation_id, session_id)
    if not forget:
        row.deleted_at = utcnow()
        row.share_token = None
        session.add(row)
        session.flush()
        return
    remove_conversations(session=session, conversation_ids=[row.id])


def restore_conversation(*, session: Session, conversation_id: str, session_id: str) -> None:
    """Undo a delete (not a forget): the conversation is back in its session's history."""
    row = _owned(session, conversation_id, session_id, deleted=True)
    row.deleted_at = None
    session.add(row)
    session.flush()


PURGE_BATCH = 200  # conversations per statement batch (bounded IN lists, short write locks)


def remove_conversations(*, session: Session, conversation_ids: Sequence[str]) -> Counter[str]:
    """Remove conversations for good: their messages, the ratings of those and every battle
    one of them fought in (the other side's message stays in its own conversation). Bulk
    statements on subqueries, `PURGE_BATCH` conversations at a time. Returns what was removed
    per table."""
    removed: Counter[str] = Counter()
    for start in range(0, len(conversation_ids), PURGE_BATCH):
        chunk = list(conversation_ids[start : start + PURGE_BATCH])
        ids = select(Message.id).where(col(Message.conversation_id).in_(chunk))
        steps = (
            ("battles", delete(Battle).where(
                col(Battle.message_a_id).in_(ids) | col(Battle.message_b_id).in_(ids)
            )),
            ("ratings", delete(Rating).where(col(Rating.message_id).in_(ids))),
            # links within the conversations, and from regenerations elsewhere pointing here
            ("", update(Message).where(col(Message.parent_id).in_(ids)).values(parent_id=None)),
            ("", update(Message).where(col(Message.follows_id).in_(ids)).values(follows_id=None)),
            ("messages", delete(Message).where(col(Message.conversation_id).in_(chunk))),
            ("conversations", delete(Conversation).where(col(Conversation.id).in_(chunk))),
        )  # fmt: skip
        for table, statement in steps:
            result = session.exec(statement)  # type: ignore[call-overload]
            if table:
                removed[table] += max(result.rowcount or 0, 0)
        session.flush()
    return removed


def purge_expired(*, session: Session, before: datetime) -> Counter[str]:
    """Retention: remove every conversation whose last activity (its latest message, else
    its creation) is older than `before`, with its messages, ratings and battles; committed a
    batch at a time, so a long purge never holds the write lock for long."""
    last = func.coalesce(col(Conversation.updated_at), col(Conversation.created_at))
    ids = list(session.exec(select(Conversation.id).where(last < as_utc(before))))
    removed: Counter[str] = Counter()
    for start in range(0, len(ids), PURGE_BATCH):
        batch = ids[start : start + PURGE_BATCH]
        removed.update(remove_conversations(session=session, conversation_ids=batch))
        session.commit()
    if ids:
        logger.info("retention: removed %s (last active before %s)", dict(removed), before)
    return removed


def share_conversation(*, session: Session, conversation_id: str, session_id: str) -> str:
    """A read-only link token for the conversation: a snapshot of it as it is now (what is said
    later never shows there). The same token while it is shared."""

    row = _owned(session, conversation_id, session_id)
    if row.share_token is None:
        row.share_token = secrets.token_urlsafe(24)
        row.shared_at = utcnow()
        session.add(row)
        session.flush()
    return str(row.share_token)


def shared_conversation(
    *, session: Session, token: str
) -> tuple[ConversationPublic, list[MessagePublic]]:
    """The conversation a share token names, as it was when shared: the branch its user saw
    then, of the messages stored by then; 404 once unshared."""
    row = session.exec(
        select(Conversation).where(
            Conversation.share_token == token, col(Conversation.deleted_at).is_(None)
        )
    ).first()
    if row is None or not token:
        raise UnknownIdError("shared conversation", token, field="token")
    return to_public(ConversationPublic, row), conversation_thread(
        session=session, conversation_id=row.id, until=row.shared_at
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
    follows_id: str | None = None,
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
    `follows_id` names the message of this conversation that this one follows, for a turn on a
    branch that is not the latest (the user went back with ‹1/2›); without it a message
    follows the latest branch.

    Raises UnknownIdError (conversation or parent unknown), InvalidValueError (bad role, empty
    user message, negative counts, parent or message not an assistant message, …),
    StateConflictError (`message_id` taken).
    """
    if role not in ROLES:
        raise InvalidValueError(f"role must be one of {list(ROLES)}, got {role!r}", field="role")
    check_str(content, "content", max_len=MAX_CONTENT_CHARS, allow_empty=role == "assistant")
    if message_id is not None:
        check_str(message_id, "message_id", max_len=ID_LENGTH)
    if params is not None and not isinstance(params, dict):
        raise InvalidValueError("params must be an object (dict) or null", field="params")
    conversation = get_row(
        session, Conversation, conversation_id, "conversation", "conversation_id"
    )
    if parent_id is not None:
        parent = get_row(session, Message, parent_id, "message", "parent_id")
        if role == "system" or parent.role != role:
            raise InvalidValueError(
                "parent_id marks a regeneration or an edit: both messages must be assistant "
                "messages, or both user messages",
                field="parent_id",
            )
        _check_parent_owner(session, conversation, parent)
    if follows_id is not None:
        follows = get_row(session, Message, follows_id, "message", "follows_id")
        if follows.conversation_id != conversation_id:
            raise InvalidValueError(
                "follows_id must name a message of the same conversation", field="follows_id"
            )
    row = Message(
        conversation_id=conversation_id,
        role=role,
        content=content,
        session_id=check_optional_str(session_id, "session_id"),
        model_alias=check_optional_str(model_alias, "model_alias"),
        model_version=check_optional_str(model_version, "model_version"),
        params=check_json(params, "params"),
        latency_ms=check_count(latency_ms, "latency_ms"),
        prompt_tokens=check_count(prompt_tokens, "prompt_tokens"),
        completion_tokens=check_count(completion_tokens, "completion_tokens"),
        parent_id=parent_id,
        follows_id=follows_id,
        flagged=flag_reason is not None,
        flag_reason=check_optional_str(flag_reason, "flag_reason"),
        finish_reason=check_optional_str(finish_reason, "finish_reason", max_len=32),
    )
    if message_id is not None:
        if session.get(Message, message_id) is not None:
            raise StateConflictError(
                f"a message with id {message_id!r} exists already", field="message_id"
            )
        row.id = message_id
    public = to_public(MessagePublic, row)
    session.add(row)
    conversation.updated_at = utcnow()
    if conversation.title is None and role == "user":
        conversation.title = title_of(content)
    session.add(conversation)
    try:
        session.flush()
    except IntegrityError:  # another writer took `message_id` since the check: nothing stays
        session.rollback()
        if message_id is not None:
            raise StateConflictError(
                f"a message with id {message_id!r} exists already", field="message_id"
            ) from None
        raise
    return public


def extend_message(
    *,
    session: Session,
    message_id: str,
    more: str,
    completion_tokens: int | None = None,
    finish_reason: str | None = None,
    flag_reason: str | None = None,
) -> MessagePublic:
    """An answer that went on (계속 생성): `more` is added to its text, `completion_tokens`
    to its count, and it now ended with `finish_reason`; `flag_reason` flags it when moderation
    reads the whole answer as flagged (a flag once set stays). Raises UnknownIdError,
    InvalidValueError (not an assistant message, or over the length limit)."""
    row = get_row(session, Message, message_id, "message", "message_id")
    if row.role != "assistant":
        raise InvalidValueError("only an answer can go on", field="message_id")
    content = row.content + more
    check_str(content, "content", max_len=MAX_CONTENT_CHARS, allow_empty=True)
    row.content = content
    row.completion_tokens = (row.completion_tokens or 0) + (
        check_count(completion_tokens, "completion_tokens") or 0
    )
    row.finish_reason = check_optional_str(finish_reason, "finish_reason", max_len=32)
    if flag_reason is not None:
        row.flagged, row.flag_reason = True, check_optional_str(flag_reason, "flag_reason")
    session.add(row)
    conversation = session.get(Conversation, row.conversation_id)
    if conversation is not None:
        conversation.updated_at = utcnow()
        session.add(conversation)
    session.flush()
    return to_public(MessagePublic, row)


def title_of(text: str, limit: int = 40) -> str:
    """A conversation's title: its first user message, on one line, cut at `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def get_message(*, session: Session, message_id: str) -> MessagePublic:
    """The message, or :class:`UnknownIdError`."""
    return to_public(MessagePublic, get_row(session, Message, message_id, "message", "message_id"))


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
    check_limit(limit, offset)
    since = check_since(since)
    query = select(Message)
    if conversation_id is not None:
        query = query.where(Message.conversation_id == conversation_id)
    if model_version is not None:
        query = query.where(Message.model_version == model_version)
    if since is not None:
        query = query.where(col(Message.created_at) >= since)
    query = query.order_by(col(Message.created_at), col(Message.id)).offset(offset).limit(limit)
    return [to_public(MessagePublic, row) for row in session.exec(query)]


def thread_members(
    messages: Sequence[M],
) -> tuple[dict[str, list[M]], list[M]]:
    """For each message of ONE conversation, the messages it follows; and the thread as it
    stands after the last message (the latest branch). See :func:`thread_contexts`."""
    ordered = sorted(messages, key=lambda m: (m.created_at, m.id))
    by_id = {m.id: m for m in ordered}
    thread: list[M] = []
    members: dict[str, list[M]] = {}
    for message in ordered:
        follows = message.follows_id
        if message.parent_id is not None and message.parent_id in members:
            thread = list(members[message.parent_id])  # a replacement: its original's context
        elif follows is not None and follows in members:
            thread = [*members[follows], by_id[follows]]  # a turn on an earlier branch
        elif message.role == "assistant" and thread and thread[-1].role == "assistant":
            thread = thread[:-1]
        members[message.id] = list(thread)
        thread.append(message)
    return members, thread


@dataclass(frozen=True)
class Branched(Generic[M]):
    """A message of the thread on screen, and its place among its siblings (‹k/n›): the
    messages that answer or edit the same context (regenerations, edits)."""

    message: M
    siblings: tuple[str, ...]  # the ids of it and its siblings, oldest first

    @property
    def index(self) -> int:
        """Its place among its siblings, 1-based (the k of ‹k/n›)."""
        return self.siblings.index(self.message.id) + 1

    @property
    def count(self) -> int:
        return len(self.siblings)


def branch_view(messages: Sequence[M], through: str | None = None) -> list[Branched[M]]:
    """The thread to show of ONE conversation's messages: the latest branch, or, `through` a
    message, the latest branch that passes through it (what going to ‹k/n› shows); each
    message with its place among its siblings. Raises UnknownIdError for an unknown
    `through`."""
    members, thread = thread_members(messages)
    ordered = sorted(messages, key=lambda m: (m.created_at, m.id))
    context = {m.id: tuple(x.id for x in members[m.id]) for m in ordered}  # what it follows
    if through is not None:
        if through not in context:
            raise UnknownIdError("message", through, field="message_id")
        chosen = (*context[through], through)
        # the latest message of the branches through it (itself, when nothing followed it)
        last = [m for m in ordered if (*context[m.id], m.id)[: len(chosen)] == chosen][-1]
        thread = [*members[last.id], last]
    siblings: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for m in ordered:
        siblings.setdefault((context[m.id], m.role), []).append(m.id)
    return [Branched(m, tuple(siblings[(context[m.id], m.role)])) for m in thread]


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
    target = get_row(session, Message, message_id, "message", "message_id")
    rows = session.exec(
        select(Message).where(
            Message.conversation_id == target.conversation_id,
            col(Message.created_at) <= target.created_at,
        )
    ).all()
    return thread_contexts(rows)[target.id]


# --- ratings --------------------------------------------------------------------------------


def _check_parent_owner(session: Session, conversation: Conversation, parent: Message) -> None:
    """An edit stays in its conversation; a regeneration may answer a copy of its context in
    another conversation, but only one of the same session: nobody branches from, or
    regenerates into, someone else's conversation (404, as for an unknown id)."""
    if parent.conversation_id == conversation.id:
        return
    home = session.get(Conversation, parent.conversation_id)
    if parent.role == "user" or home is None or home.session_id != conversation.session_id:
        raise UnknownIdError("message", parent.id, field="parent_id")


def check_rater(*, session: Session, message_id: str, session_id: str) -> None:
    """What serving asks before a rating: a session rates only answers it was shown, those of
    its own conversations (an arena battle is stored as a conversation of the voter). Someone
    else's answer, a shared one included, is refused as unknown (404), so ids seen on a share
    page open nothing. (`rate` itself stays general: the store also records votes that other
    tools bring.)"""
    message = session.get(Message, message_id)
    home = session.get(Conversation, message.conversation_id) if message is not None else None
    if home is None or home.session_id is None or home.session_id != session_id:
        raise UnknownIdError("message", message_id, field="message_id")


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

    Raises UnknownIdError (unknown message), InvalidValueError (value not ±1, not an assistant
    message, empty session id, reason over 128 characters).
    """
    if isinstance(value, bool) or value not in RATING_VALUES:
        raise InvalidValueError(f"value must be 1 (👍) or -1 (👎), got {value!r}", field="value")
    check_str(session_id, "session_id")
    reason = check_optional_str(reason, "reason")
    if comment is not None:
        check_str(comment, "comment", max_len=MAX_COMMENT_CHARS, allow_empty=True)
    if better_answer is not None:
        check_str(better_answer, "better_answer", max_len=MAX_BETTER_ANSWER_CHARS)
    message = get_row(session, Message, message_id, "message", "message_id")
    if message.role != "assistant":
        raise InvalidValueError(
            f"only assistant messages can be rated; {message_id!r} is a {message.role} message",
            field="message_id",
        )
    now = utcnow()
    values = {
        "value": value,
        "reason": reason,
        "comment": comment,
        "better_answer": better_answer,
        "updated_at": now,
    }
    # One statement settles a race of two writers on the same (message, session): the second
    # updates the first's row (INSERT … ON CONFLICT DO UPDATE, on SQLite and PostgreSQL alike),
    # so nothing else in the caller's transaction is rolled back.
    insert = _dialect_insert(session)(Rating).values(
        message_id=message_id, session_id=session_id, created_at=now, **values
    )
    rating_id = session.execute(
        insert.on_conflict_do_update(
            index_elements=["message_id", "session_id"], set_=values
        ).returning(Rating.id)  # type: ignore[arg-type]
    ).scalar_one()
    row = session.exec(
        select(Rating).where(Rating.id == rating_id).execution_options(populate_existing=True)
    ).one()
    return to_public(RatingPublic, row)


def _dialect_insert(session: Session) -> Any:
    """The INSERT construct with ON CONFLICT of the session's database (SQLite or PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert
    return sqlite_insert


def session_ratings(
    *, session: Session, session_id: str, message_ids: Sequence[str]
) -> dict[str, int]:
    """message id -> the value `session_id` gave it (+1/-1), for the messages it rated."""
    if not message_ids:
        return {}
    query = select(Rating.message_id, Rating.value).where(
        Rating.session_id == session_id, col(Rating.message_id).in_(list(message_ids))
    )
    return {message_id: int(value) for message_id, value in session.exec(query)}


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
    check_limit(limit, offset)
    since = check_since(since)
    query = select(Rating)
    if message_id is not None:
        query = query.where(Rating.message_id == message_id)
    if session_id is not None:
        query = query.where(Rating.session_id == session_id)
    if since is not None:
        query = query.where(col(Rating.updated_at) >= since)
    query = query.order_by(col(Rating.updated_at), col(Rating.id)).offset(offset).limit(limit)
    return [to_public(RatingPublic, row) for row in session.exec(query)]


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

    Raises UnknownIdError (unknown message), InvalidValueError (bad context, same message twice,
    a message that is not an assistant answer).
    """
    check_str(session_id, "session_id")
    clean = check_context(context)
    if message_a_id == message_b_id:
        raise InvalidValueError(
            "message_a_id and message_b_id must be two different messages", field="message_b_id"
        )
    a = get_row(session, Message, message_a_id, "message", "message_a_id")
    b = get_row(session, Message, message_b_id, "message", "message_b_id")
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
        void_reason=check_optional_str(void_reason, "void_reason"),
    )
    public = to_public(BattlePublic, row)
    session.add(row)
    session.flush()
    return public


def get_battle(*, session: Session, battle_id: str) -> BattlePublic:
    """The battle, or :class:`UnknownIdError`."""
    return to_public(BattlePublic, get_row(session, Battle, battle_id, "battle", "battle_id"))


def vote(*, session: Session, battle_id: str, session_id: str, winner: str) -> BattlePublic:
    """Record the verdict of a battle: `a`, `b`, `tie` or `both_bad`. Once per battle.

    Raises UnknownIdError (unknown battle), InvalidValueError (bad winner), NotYoursError (the
    battle belongs to another session), StateConflictError (already voted).
    """
    if winner not in WINNERS:
        raise InvalidValueError(
            f"winner must be one of {list(WINNERS)}, got {winner!r}", field="winner"
        )
    check_str(session_id, "session_id")
    battle = get_row(session, Battle, battle_id, "battle", "battle_id")
    if battle.session_id != session_id:
        raise NotYoursError("this battle belongs to another session; vote on your own battles")
    changed = session.execute(
        update(Battle)
        .where(col(Battle.id) == battle_id, col(Battle.winner).is_(None))
        .values(winner=winner, voted_at=utcnow())
    )
    session.flush()
    if getattr(changed, "rowcount", 0) != 1:
        raise StateConflictError(
            f"battle {battle_id!r} has been voted on already", field="battle_id"
        )
    session.refresh(battle)
    return to_public(BattlePublic, battle)


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
    check_limit(limit, offset)
    since = check_since(since)
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
    return [to_public(BattlePublic, row) for row in session.exec(query)]
