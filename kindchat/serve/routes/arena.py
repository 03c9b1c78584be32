"""Arena: two anonymous answers side by side, a vote that reveals the models, a leaderboard."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.deps import AnswersDep, ArenaDep, GateDep
from kindchat.serve.errors import InvalidRequestError
from kindchat.serve.protocol import (
    BattleAnswer,
    BattleRequest,
    BattleResponse,
    ChatMessage,
    Leaderboard,
    VoteRequest,
    VoteResponse,
)
from kindchat.serve.services import AnswerRequest

router = APIRouter(prefix="/v1", tags=["arena"])


@router.post("/arena/battles")
async def create_battle(
    body: BattleRequest, request: Request, answers: AnswersDep, arena: ArenaDep, gate: GateDep
) -> BattleResponse:
    caller = gate.caller(request, "arena", named=body.session_id)
    session_id = str(caller.session_id)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give either `prompt` or `messages`", param="prompt")
    chat = body.messages or [ChatMessage(role="user", content=body.prompt or "")]
    messages = answers.check_messages(chat)
    params = answers.sampling(
        max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p
    )
    models = arena.battle_models(body.models)  # anonymous, random sides
    seeds = (body.seed, None if body.seed is None else body.seed + 1)  # two samples, never one
    requests = [
        AnswerRequest(m, messages, params, GenerationOptions(seed=seed), session_id, arena=True)
        for m, seed in zip(models, seeds, strict=True)
    ]
    a, b = await asyncio.gather(*(answers.generate(r) for r in requests))  # batched together
    battle_id = await arena.store_battle(session_id, a, b)
    return BattleResponse(
        id=battle_id,
        a=BattleAnswer(message_id=a.id, content=a.text),
        b=BattleAnswer(message_id=b.id, content=b.text),
    )


@router.post("/arena/battles/{battle_id}/vote")
async def vote(
    battle_id: str, body: VoteRequest, request: Request, arena: ArenaDep, gate: GateDep
) -> VoteResponse:
    caller = gate.caller(request, "arena", named=body.session_id)
    battle = await arena.vote(
        battle_id=battle_id, session_id=str(caller.session_id), winner=body.winner
    )
    return VoteResponse(
        id=battle.id,
        winner=body.winner,
        model_a=battle.model_a,
        version_a=battle.version_a,
        model_b=battle.model_b,
        version_b=battle.version_b,
        void_reason=battle.void_reason,
    )


@router.get("/challenger")
def challenger(arena: ArenaDep) -> dict[str, Any]:
    """The challenger being judged in the arena (its live record, the 95% interval of its win
    rate and what the votes say now), the promotion mode, and the decisions so far."""
    return arena.challenger()


@router.get("/leaderboard")
def leaderboard(
    arena: ArenaDep,
    method: str = Query("tallies", description="Ranking method: tallies, elo or bt."),
) -> Leaderboard:
    return arena.leaderboard(method)
