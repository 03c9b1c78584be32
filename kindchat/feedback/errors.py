"""Typed errors of the feedback store, judge and augmentation: :class:`FeedbackError`s of the
kinds in :mod:`kindchat.errors` (the API and the CLI map the kinds once).

Where one input is at fault, `field` names it.
"""

from __future__ import annotations

from kindchat.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    KindchatError,
    NotFoundError,
    UnavailableError,
)


class FeedbackError(KindchatError):
    """Base of every error this package raises on purpose."""


class InvalidValueError(FeedbackError, InvalidError):
    """An argument has the right type but a value the store cannot accept."""


class UnknownIdError(FeedbackError, NotFoundError):
    """An id names no stored conversation, message, battle or run."""

    def __init__(self, kind: str, id_: str, *, field: str | None = None) -> None:
        super().__init__(f"no {kind} with id {id_!r}", field=field)
        self.kind = kind
        self.id = id_


class NotYoursError(FeedbackError, ForbiddenError):
    """The caller's session may not act on this object, e.g. vote on another's battle."""


class StateConflictError(FeedbackError, ConflictError):
    """The action clashes with the stored state, e.g. a second vote on a battle."""


class JudgeError(FeedbackError, UnavailableError):
    """The judge endpoint refused a request (bad key, unknown model, bad request)."""

    code = "judge_error"


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached or kept failing after every retry."""

    code = "judge_unavailable"


class JudgeReplyError(JudgeError):
    """The judge's reply held no usable scores, even after re-asking."""

    code = "judge_reply_unparseable"
