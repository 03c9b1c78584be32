"""One service per resource, built once in `create_app`'s lifespan (see :func:`build_services`).

- :class:`AnswerService` (answers: check, sample, generate, store): `routes/chat.py`,
  `routes/arena.py`; the chat and arena tabs.
- :class:`ConversationService` (history, share links): `routes/conversations.py`; the chat tab.
- :class:`FeedbackService` (👍/👎, reasons, better answers): `routes/feedback.py`; the chat tab.
- :class:`ArenaService` (battles, votes, the challenger phase, leaderboards): `routes/arena.py`;
  the arena and leaderboard tabs.
- :class:`AdminService` (the admin check, promote, rollback, retrain, the dashboard, the
  bootstrap's progress): `routes/admin.py`, `routes/health.py`; the dashboard tab, the banner.

Each takes only what it uses; a route or tab depends on the service it calls, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback.moderation import load_moderator
from kindchat.models.manager import ModelManager
from kindchat.retrain.background import BackgroundBootstrap
from kindchat.serve.gate import Gate
from kindchat.serve.metrics import Metrics
from kindchat.serve.services.admin import AdminService
from kindchat.serve.services.answers import (
    Answer,
    AnswerLimits,
    AnswerRequest,
    AnswerService,
)
from kindchat.serve.services.arena import ArenaService
from kindchat.serve.services.conversations import ConversationService
from kindchat.serve.services.feedback import FeedbackService

__all__ = [
    "AdminService",
    "Answer",
    "AnswerRequest",
    "AnswerService",
    "ArenaService",
    "ConversationService",
    "FeedbackService",
    "Services",
    "build_services",
]


@dataclass(frozen=True)
class Services:
    """The app's services (`app.state.services`), and the gate the page shares with the API."""

    answers: AnswerService
    conversations: ConversationService
    feedback: FeedbackService
    arena: ArenaService
    admin: AdminService
    gate: Gate


def build_services(
    settings: Settings,
    manager: ModelManager,
    db: Engine,
    metrics: Metrics,
    gate: Gate,
    background: BackgroundBootstrap | None = None,
) -> Services:
    moderator = load_moderator(
        settings.moderation_lexicon,
        settings.moderation_base_url,
        settings.moderation_api_key,
        settings.moderation_model,
    )
    answers = AnswerService(AnswerLimits.from_settings(settings), manager, db, metrics, moderator)
    arena = ArenaService(settings, answers, manager, db, metrics)
    return Services(
        answers=answers,
        conversations=ConversationService(db, settings.share_base()),
        feedback=FeedbackService(db, moderator, metrics),
        arena=arena,
        admin=AdminService(settings, manager, db, arena, background),
        gate=gate,
    )
