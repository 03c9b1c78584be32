"""`POST /v1/chat/completions`: OpenAI-compatible, streaming (SSE) or not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.deps import AnswersDep, GateDep
from kindchat.serve.errors import to_api_error
from kindchat.serve.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChunkChoice,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
)
from kindchat.serve.services import Answer, AnswerRequest, AnswerService

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"])


def answer_request(
    body: ChatCompletionRequest, service: AnswerService, session_id: str | None
) -> AnswerRequest:
    messages = service.check_messages(body.messages)
    params = service.sampling(
        max_tokens=body.requested_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
    )
    return AnswerRequest(
        model=body.model,
        messages=messages,
        params=params,
        options=GenerationOptions(
            seed=body.seed, min_tokens=body.min_tokens, stop=tuple(body.stop or ())
        ),
        session_id=session_id,
        regenerate=body.regenerate,
        conversation_id=body.conversation_id,
        edit_of=body.edit_of if body.conversation_id else None,
        follows=body.follows if body.conversation_id else None,
        continue_of=body.continue_of,
    )


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: AnswersDep, gate: GateDep
) -> ChatCompletionResponse | StreamingResponse:
    # `user` names the session (a token, or the caller's own); open mode chats without one,
    # but continuing or regenerating touches a stored conversation: its owner's session only
    stateful = any(x is not None for x in (body.conversation_id, body.regenerate, body.continue_of))
    caller = gate.caller(request, "chat", named=body.user, need_session=stateful)
    answer = await service.open(answer_request(body, service, caller.session_id))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse_chunks(answer, service, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(service.abandon, answer),  # runs after a disconnect too
        )
    if not await until_done_or_disconnected(request, collect(answer, service)):
        await service.abandon(answer)  # stored as far as it got, stop_by_user
    return ChatCompletionResponse(
        id=answer.id,
        model=answer.version,
        choices=[
            ChatChoice(
                message=ChatMessage(role="assistant", content=answer.text),
                finish_reason=answer.finish_reason,
            )
        ],
        usage=answer.usage,
        conversation_id=answer.conversation_id,
        user_message_id=answer.user_message_id,
    )


async def collect(answer: Answer, service: AnswerService) -> None:
    async with contextlib.aclosing(service.deltas(answer)) as pieces:
        async for _ in pieces:
            pass
    await service.store(answer)


async def until_done_or_disconnected(request: Request, work: Coroutine[Any, Any, None]) -> bool:
    """Await `work`; if the client goes away first, cancel it (which stops generation). True
    when the work finished."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            return True
        logger.info("client disconnected; generation stopped")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()


async def wait_for_disconnect(request: Request) -> None:
    """Return when the server reports the client gone (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def sse_chunks(
    answer: Answer, service: AnswerService, include_usage: bool
) -> AsyncIterator[str]:
    """`data: {chunk}` events, then `data: [DONE]`. Closing it (disconnect) stops generation."""

    def event(delta: DeltaMessage, finish: str | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=answer.id,
            model=answer.version,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
        )
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event(DeltaMessage(role="assistant", content=""))
    try:
        async with contextlib.aclosing(service.deltas(answer)) as pieces:
            async for piece in pieces:
                yield event(DeltaMessage(content=piece))
        await service.store(answer)
    except Exception as err:  # headers are sent: report in the stream, as OpenAI does
        api = to_api_error(err)
        if api is None:
            logger.exception("streaming %s failed", answer.id)
        body = ErrorBody(
            message=str(api or "internal server error; see the server log"),
            type=api.type if api else "server_error",
            param=api.param if api else None,
            code=api.code if api else None,
        )
        yield f"data: {ErrorResponse(error=body).model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield event(DeltaMessage(), answer.finish_reason)
    if include_usage:
        usage = ChatCompletionChunk(
            id=answer.id, model=answer.version, choices=[], usage=answer.usage
        )
        yield f"data: {usage.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"
