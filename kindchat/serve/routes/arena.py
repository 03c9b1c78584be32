"""Arena: two anonymous answers side by side, a vote that reveals the models, a leaderboard."""

from __future__ import annotations

import asyncio
import random

from fastapi import APIRouter, Query

from kindchat.feedback import store
from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.deps import DbSessionDep, ManagerDep, ServiceDep
from kindchat.serve.errors import ConflictError, InvalidRequestError
from kindchat.serve.leaderboard import LEADERBOARDS
from kindchat.serve.protocol import (
    BattleAnswer,
    BattleRequest,
    BattleResponse,
    ChatMessage,
    Leaderboard,
    VoteRequest,
    VoteResponse,
)
from kindchat.serve.service import AnswerRequest

router = APIRouter(prefix="/v1", tags=["arena"])


def pick_models(body: BattleRequest, manager: ManagerDep) -> list[str]:
    """The two contestants: as asked, or the first two served names on different versions."""
    if body.models:
        names = [manager.resolve(name) for name in body.models]
    else:
        names, seen = [], set()
        for name in manager.names():
            if name.alias is not None and name.version not in seen:
                seen.add(name.version)
                names.append(name)
    if len(names) < 2 or names[0].version == names[1].version:
        raise ConflictError(
            "an arena battle needs two different model versions; only "
            f"{sorted({n.version for n in names})} served (promote an `rlhf` model or pass `models`)",
            param="models",
        )
    return [n.name for n in names[:2]]


@router.post("/arena/battles")
async def create_battle(
    body: BattleRequest, service: ServiceDep, manager: ManagerDep
) -> BattleResponse:
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give either `prompt` or `messages`", param="prompt")
    chat = body.messages or [ChatMessage(role="user", content=body.prompt or "")]
    messages = service.check_messages(chat)
    params = service.sampling(
        max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p
    )
    models = pick_models(body, manager)
    random.shuffle(models)  # anonymous, random sides
    requests = [
        AnswerRequest(m, messages, params, GenerationOptions(seed=body.seed), body.session_id)
        for m in models
    ]
    a, b = await asyncio.gather(*(service.generate(r) for r in requests))  # batched together
    battle_id = await service.store_battle(body.session_id, a, b)
    return BattleResponse(
        id=battle_id,
        a=BattleAnswer(message_id=a.id, content=a.text),
        b=BattleAnswer(message_id=b.id, content=b.text),
    )


@router.post("/arena/battles/{battle_id}/vote")
def vote(battle_id: str, body: VoteRequest, session: DbSessionDep) -> VoteResponse:
    battle = store.vote(
        session=session, battle_id=battle_id, session_id=body.session_id, winner=body.winner
    )
    return VoteResponse(
        id=battle.id,
        winner=body.winner,
        model_a=battle.model_a,
        version_a=battle.version_a,
        model_b=battle.model_b,
        version_b=battle.version_b,
    )


@router.get("/leaderboard")
def leaderboard(
    session: DbSessionDep, method: str = Query("tallies", description="Ranking method.")
) -> Leaderboard:
    if method not in LEADERBOARDS:
        raise InvalidRequestError(
            f"unknown leaderboard method {method!r}; choose from {sorted(LEADERBOARDS)}",
            param="method",
        )
    stats = store.feedback_stats(session=session)
    return Leaderboard(method=method, rows=LEADERBOARDS[method](stats))
