"""Fixtures of the retrain tests: feedback in the store without a server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.seed import read_rm


def add_voted_battles(settings: Settings, engine: Engine, n: int, offset: int = 0) -> int:
    """`n` battles (seed train prompts; chosen vs rejected answers), each voted for the chosen."""
    pairs = read_rm(settings.data_dir, "train")[offset : offset + n]
    with session_scope(engine) as session:
        for i, pair in enumerate(pairs):
            sid = f"user-{offset + i}"
            conv = store.create_conversation(session=session, session_id=sid)
            store.record_message(
                session=session, conversation_id=conv.id, role="user", content=pair.prompt
            )
            a, b = (
                store.record_message(
                    session=session,
                    conversation_id=conv.id,
                    role="assistant",
                    content=text,
                    model_alias=alias,
                    model_version=alias,
                )
                for text, alias in ((pair.chosen, "rlhf"), (pair.rejected, "sft"))
            )
            battle = store.create_battle(
                session=session,
                session_id=sid,
                context=[{"role": "user", "content": pair.prompt}],
                message_a_id=a.id,
                message_b_id=b.id,
            )
            store.vote(session=session, battle_id=battle.id, session_id=sid, winner="a")
    return len(pairs)


@pytest.fixture
def voted_battles() -> Callable[[Settings, Engine, int], int]:
    """`voted_battles(settings, engine, n)` stores n voted battles (seed chosen beats rejected)."""
    return add_voted_battles


def add_thumbs(settings: Settings, engine: Engine, n: int, offset: int = 0) -> int:
    """`n` one-answer chats, each rated once (👍 on seed chosen answers, 👎 on rejected ones):
    single thumbs with no sibling, what most real feedback looks like."""
    pairs = read_rm(settings.data_dir, "train")[offset : offset + n]
    with session_scope(engine) as session:
        for i, pair in enumerate(pairs):
            sid = f"thumb-{offset + i}"
            conv = store.create_conversation(session=session, session_id=sid)
            store.record_message(
                session=session, conversation_id=conv.id, role="user", content=pair.prompt
            )
            up = i % 2 == 0
            answer = store.record_message(
                session=session,
                conversation_id=conv.id,
                role="assistant",
                content=pair.chosen if up else pair.rejected,
                model_alias="rlhf",
            )
            store.rate(session=session, message_id=answer.id, session_id=sid, value=1 if up else -1)
    return len(pairs)


@pytest.fixture
def thumbs() -> Callable[[Settings, Engine, int], int]:
    """`thumbs(settings, engine, n)` stores n single ratings, alternating 👍 and 👎."""
    return add_thumbs
