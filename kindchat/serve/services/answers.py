"""Answering: input checks, sampling parameters, generation through a lease, and storage.

Used by the chat and arena routes and tabs alike. An :class:`Answer` is opened (input checked,
model leased, first token awaited so that busy/too-long errors still become a proper 4xx/5xx),
then iterated (text deltas, stop strings, metrics) and finally stored in one transaction (its
conversation when new, the user's turn, the answer): the completion id is the stored message
id. Moderation runs before the transaction, never inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.errors import InvalidValueError, UnknownIdError
from kindchat.feedback.models import MessagePublic
from kindchat.feedback.moderation import CLEAN, ChainModerator, Verdict, refusal
from kindchat.models.backends.base import GenerationOptions, StopMatcher, TextDelta
from kindchat.models.generation import DEFAULT_SAMPLING, SamplingParams
from kindchat.models.manager import Lease, ModelManager, ModelName
from kindchat.serve.errors import InvalidRequestError, PayloadTooLargeError
from kindchat.serve.metrics import Metrics
from kindchat.serve.protocol import ChatMessage, FinishReason, Usage, completion_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerLimits:
    """The settings answering uses (`Settings.max_input_chars`, …), nothing else."""

    max_input_chars: int
    max_input_tokens: int | None
    max_tokens_limit: int
    default_max_tokens: int

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerLimits:
        return cls(
            max_input_chars=settings.max_input_chars,
            max_input_tokens=settings.max_input_tokens,
            max_tokens_limit=settings.max_tokens_limit,
            default_max_tokens=settings.default_max_tokens,
        )


@dataclass(frozen=True)
class AnswerRequest:
    """What one answer needs, whichever route asked for it."""

    model: str
    messages: list[dict[str, str]]
    params: SamplingParams
    options: GenerationOptions
    session_id: str | None = None
    regenerate: str | None = None
    arena: bool = False  # an arena side: may be the challenger
    conversation_id: str | None = None  # continue this stored conversation (else a new one)
    edit_of: str | None = None  # the stored user message the last message edits (a branch)
    user_message_id: str | None = None  # the id to store the last message under (continuing)
    follows: str | None = None  # the stored message the last message follows (its branch)
    continue_of: str | None = None  # a stored answer cut by length, to go on with (계속 생성)


STOP_BY_USER = "stop_by_user"  # an answer the user stopped (or left) before it ended


class RefusalLease:
    """What an answer refused by moderation holds instead of a model."""

    version = "moderation"

    def __init__(self, model: str) -> None:
        self.name = ModelName(name=model, version=self.version, alias=None)

    async def release(self) -> None:
        return None


async def _no_more() -> AsyncIterator[TextDelta]:
    return
    yield  # an async generator that ends at once


@dataclass
class Answer:
    """One answer being generated; iterate :meth:`deltas`, then read the totals."""

    id: str
    request: AnswerRequest
    lease: Lease | RefusalLease
    stream: AsyncIterator[TextDelta]
    first: TextDelta
    started: float
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    conversation_id: str | None = None
    user_message_id: str | None = None  # the stored user message this answers
    flag: Verdict | None = None  # moderation flagged the user's message: this is a refusal
    stored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.lease.version

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


class AnswerService:
    """Check, sample, generate and store answers (the chat and the arena both use it)."""

    def __init__(
        self,
        limits: AnswerLimits,
        manager: ModelManager,
        db: Engine,
        metrics: Metrics,
        moderator: ChainModerator,
    ) -> None:
        self.limits = limits
        self.manager = manager
        self.db = db
        self.metrics = metrics
        self.moderator = moderator

    # ---- what is served ---------------------------------------------------------------------
    def models(self) -> list[ModelName]:
        """The served names (aliases and versions), for pickers."""
        return list(self.manager.names())

    def default_model(self) -> str:
        """The name a chat answers with when none is chosen."""
        return self.manager.default_name()

    # ---- checks -----------------------------------------------------------------------------
    def check_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """Plain dicts for the template; empty/whitespace or over-long input -> 4xx."""
        total = 0
        for index, message in enumerate(messages):
            if message.role != "assistant" and not message.content.strip():
                raise InvalidRequestError(
                    f"messages[{index}].content is empty or whitespace; write something to answer",
                    param=f"messages.{index}.content",
                    code="empty_message",
                )
            total += len(message.content)
        if messages[-1].role != "user":
            raise InvalidRequestError(
                "the last message must come from the user",
                param="messages",
                code="invalid_messages",
            )
        if total > self.limits.max_input_chars:
            raise PayloadTooLargeError(
                f"the messages hold {total} characters, over the limit of "
                f"{self.limits.max_input_chars}; shorten the conversation",
                param="messages",
            )
        return [{"role": m.role, "content": m.content} for m in messages]

    def sampling(
        self,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
    ) -> SamplingParams:
        limit = self.limits.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}, over this server's limit of {limit}",
                param="max_tokens",
                code="invalid_value",
            )
        # what a request leaves out is the one sampler's default (DEFAULT_SAMPLING)
        temp = DEFAULT_SAMPLING.temperature if temperature is None else temperature
        return replace(
            DEFAULT_SAMPLING,
            max_new_tokens=max_tokens or self.limits.default_max_tokens,
            temperature=temp,
            top_p=DEFAULT_SAMPLING.top_p if top_p is None else top_p,
            top_k=top_k or DEFAULT_SAMPLING.top_k,
            repetition_penalty=repetition_penalty or DEFAULT_SAMPLING.repetition_penalty,
            do_sample=temp > 0,
        )

    # ---- generation -------------------------------------------------------------------------
    async def open(self, request: AnswerRequest) -> Answer:
        """Lease the model and await the first delta (so errors surface before any byte)."""
        if request.regenerate is not None and request.continue_of is not None:
            raise InvalidValueError(
                "regenerate and continue_of exclude each other: one answer at a time",
                field="continue_of",
            )
        conversation_id = None
        options = request.options
        if request.regenerate is not None:
            parent = await asyncio.to_thread(self._own_message, request, request.regenerate)
            conversation_id = parent.conversation_id
        elif request.continue_of is not None:
            cut = await asyncio.to_thread(self._own_message, request, request.continue_of)
            if cut.role != "assistant" or cut.flagged:
                raise InvalidValueError(
                    "continue_of must name an answer of the model (not a refusal)",
                    field="continue_of",
                )
            conversation_id = cut.conversation_id
            options = replace(options, prefix=cut.content)
        elif request.conversation_id is not None:
            await asyncio.to_thread(self._check_conversation, request)
        verdict = await asyncio.to_thread(self.moderator.check, request.messages[-1]["content"])
        if verdict.flagged:
            return self._refuse(request, verdict, conversation_id)
        started = time.perf_counter()
        lease = self.manager.acquire(request.model, arena=request.arena)
        try:
            stream = lease.backend.stream(
                request.messages,
                request.params,
                replace(options, max_input_tokens=self.limits.max_input_tokens),
            )
            try:
                first = await anext(stream)
            except BaseException:
                await _aclose(stream)
                raise
        except BaseException:
            await lease.release()
            raise
        self.metrics.ttft.labels(lease.version).observe(time.perf_counter() - started)
        answer = Answer(completion_id(), request, lease, stream, first, started)
        answer.conversation_id = conversation_id
        if lease.name.note:
            logger.info("%s: %s", request.model, lease.name.note)
        return answer

    def _refuse(
        self, request: AnswerRequest, verdict: Verdict, conversation_id: str | None
    ) -> Answer:
        """A kind refusal in place of a generation; the turn is stored flagged."""
        text = refusal(verdict)
        self.metrics.refusals.labels(verdict.category or "flagged").inc()
        logger.info("refused a message flagged %s", verdict.reason)
        first = TextDelta(text, 0, 0, "stop")
        answer = Answer(
            completion_id(),
            request,
            RefusalLease(request.model),
            _no_more(),
            first,
            time.perf_counter(),
        )
        answer.conversation_id = conversation_id
        answer.flag = verdict
        return answer

    def _check_conversation(self, request: AnswerRequest) -> None:
        """The conversation to continue must be this session's (404 otherwise); the messages
        an edit or a turn on an earlier branch names must be in it (before any generation)."""
        with session_scope(self.db) as session:
            store.owned_conversation(
                session=session,
                conversation_id=str(request.conversation_id),
                session_id=request.session_id,
            )
            for name, message_id in (("edit_of", request.edit_of), ("follows", request.follows)):
                if message_id is None:
                    continue
                message = store.get_message(session=session, message_id=message_id)
                if message.conversation_id != request.conversation_id:  # as for an unknown id
                    raise UnknownIdError("message", message_id, field=name)

    async def deltas(self, answer: Answer) -> AsyncGenerator[str, None]:
        """The answer's text pieces; totals are set on `answer` when it ends. Always releases."""
        stop = StopMatcher(answer.request.options.stop)
        try:
            delta: TextDelta | None = answer.first
            while delta is not None:
                answer.prompt_tokens = delta.prompt_tokens
                answer.completion_tokens = delta.completion_tokens
                final = delta.finish_reason is not None
                piece = stop.feed(delta.text, final=final)
                if piece:
                    answer.text += piece
                    yield piece
                if stop.stopped:
                    answer.finish_reason = "stop"
                    break
                if final:
                    answer.finish_reason = delta.finish_reason
                    break
                delta = await anext(answer.stream, None)
        finally:
            if answer.finish_reason is None:
                answer.finish_reason = STOP_BY_USER  # closed early: the user stopped or left
            await _aclose(answer.stream)
            await answer.lease.release()
            self.metrics.tokens.labels(answer.version).inc(answer.completion_tokens)
            self.metrics.prompt_tokens.labels(answer.version).inc(answer.prompt_tokens)

    async def generate(self, request: AnswerRequest) -> Answer:
        """Open and generate to the end (not stored yet)."""
        answer = await self.open(request)
        async with contextlib.aclosing(self.deltas(answer)) as pieces:
            async for _ in pieces:
                pass
        return answer

    async def complete(self, request: AnswerRequest) -> Answer:
        """Generate to the end and store; the finished answer."""
        answer = await self.generate(request)
        await self.store(answer)
        return answer

    async def abandon(self, answer: Answer) -> None:
        """Stop generating and release the model if nobody iterated the answer to its end; an
        answer cut short (stop button, closed tab, dropped connection) is stored as far as it
        got, with `finish_reason` `stop_by_user`."""
        await _aclose(answer.stream)
        await answer.lease.release()
        if not answer.stored:
            if answer.finish_reason is None:
                answer.finish_reason = STOP_BY_USER
            try:
                await self.store(answer)
            except Exception:  # the client is gone; keep serving the others
                logger.exception("storing the stopped answer %s failed", answer.id)

    # ---- storage ----------------------------------------------------------------------------
    async def store(self, answer: Answer) -> None:
        """Record the context (new conversations) and the answer, with `answer.id` as its id,
        in one transaction."""
        await asyncio.to_thread(self._store, answer)

    def _store(self, answer: Answer) -> None:
        if answer.stored:
            return
        answer.stored = True
        if answer.request.continue_of is not None:
            self._store_continuation(answer)
            return
        flag = self.answer_flag(answer)  # moderation first: no lock held while it runs
        with session_scope(self.db) as session:
            if answer.conversation_id is None and answer.request.conversation_id is not None:
                answer.conversation_id = answer.request.conversation_id
                answer.user_message_id = record_turn(session, answer)
            elif answer.conversation_id is None:
                answer.conversation_id, answer.user_message_id = record_context(
                    session, answer.request, answer.flag
                )
            self.record_answer(session, answer, flag)

    def answer_flag(self, answer: Answer, text: str | None = None) -> str | None:
        """How the stored answer is flagged: `refusal` (it answers a flagged turn), the
        moderation reason of its own text (`text`: the whole answer, when it went on from a
        stored one), or None. An answer about distress (to comfort, or to give the 109 line) is
        the answer we want: not flagged, it may train."""
        if answer.flag is not None:
            return "refusal"
        verdict = self.moderator.check(answer.text if text is None else text)
        if verdict.category == "self_harm":
            verdict = CLEAN
        if verdict.flagged:
            self.metrics.refusals.labels(f"answer:{verdict.category}").inc()
        return verdict.reason

    def record_answer(self, session: Session, answer: Answer, flag: str | None) -> MessagePublic:
        """Write `answer` into its conversation (flushed; the caller's transaction commits)."""
        request, params = answer.request, answer.request.params
        return store.record_message(
            session=session,
            conversation_id=str(answer.conversation_id),
            role="assistant",
            content=answer.text,
            session_id=request.session_id,
            model_alias=answer.lease.name.alias,
            model_version=answer.version,
            params={
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
                "repetition_penalty": params.repetition_penalty,
                "seed": request.options.seed,
                "finish_reason": answer.finish_reason,
                "backend": self.manager.backend_name,
            },
            latency_ms=int((time.perf_counter() - answer.started) * 1000),
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            parent_id=request.regenerate,
            follows_id=None if request.regenerate else answer.user_message_id,
            message_id=answer.id,
            flag_reason=flag,
            finish_reason=answer.finish_reason,
        )

    def _store_continuation(self, answer: Answer) -> None:
        """A continued answer (계속 생성) grows in place: the stored message gets the new text,
        the tokens and how it ended now; moderation reads the whole answer."""
        message_id = str(answer.request.continue_of)
        with session_scope(self.db) as session:
            before = store.get_message(session=session, message_id=message_id).content
        flag = self.answer_flag(answer, before + answer.text)
        with session_scope(self.db) as session:
            store.extend_message(
                session=session,
                message_id=message_id,
                more=answer.text,
                completion_tokens=answer.completion_tokens,
                finish_reason=answer.finish_reason,
                flag_reason=flag,
            )

    def _own_message(self, request: AnswerRequest, message_id: str) -> MessagePublic:
        """The stored answer `request` regenerates or continues; it must be in a conversation
        of the request's session (404 otherwise, as for an unknown id)."""
        with session_scope(self.db) as session:
            parent = store.get_message(session=session, message_id=message_id)
            store.owned_conversation(
                session=session,
                conversation_id=parent.conversation_id,
                session_id=request.session_id,
            )
            return parent


def record_context(
    session: Session, request: AnswerRequest, flag: Verdict | None
) -> tuple[str, str | None]:
    """A new conversation holding the request's messages; its id and the last message's."""
    messages = request.messages
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    conversation = store.create_conversation(
        session=session, session_id=request.session_id, system_prompt=system
    )
    last: str | None = None
    for index, message in enumerate(messages):
        final = index == len(messages) - 1
        last = store.record_message(
            session=session,
            conversation_id=conversation.id,
            role=message["role"],
            content=message["content"],
            session_id=request.session_id,
            flag_reason=flag.reason if final and flag is not None else None,
        ).id
    return conversation.id, last


def record_turn(session: Session, answer: Answer) -> str:
    """The request's last message, appended to its stored conversation (an edit: as the
    sibling of the message it edits); its id."""
    request = answer.request
    return store.record_message(
        session=session,
        conversation_id=str(request.conversation_id),
        role="user",
        content=request.messages[-1]["content"],
        session_id=request.session_id,
        parent_id=request.edit_of,
        follows_id=None if request.edit_of else request.follows,
        flag_reason=answer.flag.reason if answer.flag is not None else None,
        message_id=request.user_message_id,
    ).id


async def _aclose(stream: AsyncIterator[TextDelta]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
