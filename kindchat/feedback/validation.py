"""Checks on what callers hand the feedback store: every bad value becomes an
:class:`~kindchat.feedback.errors.InvalidValueError` naming its field and the limit it broke
(the API returns it as 422, the CLI as one line), and unknown ids a UnknownIdError.

The store's write and read functions (:mod:`kindchat.feedback.store`), the statistics
(:mod:`kindchat.feedback.statistics`) and the retrain-run records (:mod:`kindchat.feedback.run_records`)
all check through here, so each limit has one home.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlmodel import Session, SQLModel

from kindchat.feedback.errors import InvalidValueError, UnknownIdError
from kindchat.feedback.models import NAME_LENGTH, ROLES, as_utc

MAX_CONTENT_CHARS = 200_000
MAX_BETTER_ANSWER_CHARS = 4_000  # a better answer a user writes: one reply, not a document
MAX_COMMENT_CHARS = 4_000  # a comment on a rating (the API and the page alike)
MAX_LIST_LIMIT = 10_000
P = TypeVar("P", bound=SQLModel)


def check_str(
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


def check_optional_str(value: Any, field: str, *, max_len: int = NAME_LENGTH) -> str | None:
    return None if value is None else check_str(value, field, max_len=max_len)


def check_count(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(f"{field} must be a whole number ≥ 0, got {value!r}", field=field)
    return value


def check_json(value: Any, field: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidValueError(f"{field} must be JSON-serialisable: {err}", field=field) from None
    return value


def check_limit(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidValueError(
            f"limit must lie in 1..{MAX_LIST_LIMIT}, got {limit!r}", field="limit"
        )
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidValueError(f"offset must be ≥ 0, got {offset!r}", field="offset")


def check_since(since: datetime | None) -> datetime | None:
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
        content = check_str(
            message.get("content"), f"{where}.content", max_len=MAX_CONTENT_CHARS, allow_empty=True
        )
        out.append({"role": str(role), "content": content})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise InvalidValueError(f"{field} must end with a non-empty user message", field=field)
    return out


def get_row(session: Session, model: type[Any], id_: Any, kind: str, field: str) -> Any:
    if not isinstance(id_, str | int) or isinstance(id_, bool) or id_ == "":
        raise InvalidValueError(f"{field} must be a non-empty id, got {id_!r}", field=field)
    row = session.get(model, id_)
    if row is None:
        raise UnknownIdError(kind, str(id_), field=field)
    return row


def to_public(model: type[P], row: SQLModel) -> P:
    return model.model_validate(row, from_attributes=True)
