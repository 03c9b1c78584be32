"""👍/👎 with reasons, comments and better answers (the API's `/v1/feedback` and the chat tab)."""

from __future__ import annotations

from sqlalchemy import Engine

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import RatingPublic
from kindchat.feedback.moderation import ChainModerator
from kindchat.serve.errors import InvalidRequestError
from kindchat.serve.metrics import Metrics


class FeedbackService:
    def __init__(self, db: Engine, moderator: ChainModerator, metrics: Metrics) -> None:
        self.db = db
        self.moderator = moderator
        self.metrics = metrics

    def rate(
        self,
        *,
        message_id: str,
        value: int,
        session_id: str,
        reason: str | None = None,
        comment: str | None = None,
        better_answer: str | None = None,
    ) -> RatingPublic:
        """👍 (1) / 👎 (-1) on an answer of the session's own conversations (404 otherwise: a
        shared answer is read-only for everyone else); one per (answer, session), rating again
        replaces it. Comments and better answers are moderated: a flagged one is refused."""
        for name, text in (("comment", comment), ("better_answer", better_answer)):
            if text:
                self.check_text(name, text)
        with session_scope(self.db) as session:
            store.check_rater(session=session, message_id=message_id, session_id=session_id)
            return store.rate(
                session=session,
                message_id=message_id,
                session_id=session_id,
                value=value,
                reason=reason,
                comment=comment,
                better_answer=better_answer,
            )

    def check_text(self, field: str, text: str) -> None:
        """A text a user writes that may train the model (a comment, a better answer): refused
        when moderation flags it, so it is never stored for training."""
        verdict = self.moderator.check(text)
        if verdict.flagged:
            self.metrics.refusals.labels(f"{field}:{verdict.category}").inc()
            raise InvalidRequestError(
                f"{field} was flagged by moderation ({verdict.category}) and cannot be stored "
                "as training data; write it without that",
                param=field,
                code="flagged_text",
            )
