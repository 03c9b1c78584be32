"""Answering: input checks, sampling parameters, generation through a lease, and storage.

Used by the chat and arena routes alike. An :class:`Answer` is opened (input checked, model
leased, first token awaited so that busy/too-long errors still become a proper 4xx/5xx), then
iterated (text deltas, stop strings, metrics) and finally stored through the feedback store:
the completion id is the stored message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session

from kindchat.config import Settings
from kindchat.errors import ConflictError
from kindchat.feedback import run_records, statistics, store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import (
    BattlePublic,
    ConversationPublic,
    MessagePublic,
    RatingPublic,
    RetrainRunPublic,
)
from kindchat.feedback.moderation import (
    CLEAN,
    ChainModerator,
    Verdict,
    load_moderator,
    refusal,
)
from kindchat.models.backends.base import GenerationOptions, StopMatcher, TextDelta
from kindchat.models.generation import DEFAULT_SAMPLING, SamplingParams
from kindchat.models.manager import Lease, ModelManager, ModelName, ReloadReport
from kindchat.models.registry import CHALLENGER_ALIAS
from kindchat.retrain import admin
from kindchat.retrain.background import BackgroundBootstrap
from kindchat.retrain.challenger import challenge_history, current_challenge, decide_challenge
from kindchat.serve.errors import (
    AdminDisabledError,
    AdminTokenError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from kindchat.serve.gate import Gate
from kindchat.serve.leaderboard import LEADERBOARDS, Evidence, pairwise
from kindchat.serve.metrics import Metrics
from kindchat.serve.protocol import (
    ChatMessage,
    Dashboard,
    FinishReason,
    Leaderboard,
    Usage,
    completion_id,
)

if TYPE_CHECKING:
    from kindchat.retrain.admin import AliasChange

logger = logging.getLogger(__name__)

# What a request that sets none gets: the sampler's defaults, which evaluation and nights share.
DEFAULT_TEMPERATURE = DEFAULT_SAMPLING.temperature
DEFAULT_TOP_P = DEFAULT_SAMPLING.top_p
DEFAULT_REPETITION_PENALTY = DEFAULT_SAMPLING.repetition_penalty


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


class ChatService:
    def __init__(
        self,
        settings: Settings,
        manager: ModelManager,
        db: Engine,
        metrics: Metrics,
        gate: Gate,
        background: BackgroundBootstrap | None = None,
    ) -> None:
        self.settings = settings
        self.gate = gate  # the API's gate: the UI counts its sessions on the same limits
        self.manager = manager
        self.db = db
        self.metrics = metrics
        self.background = background
        self.moderator: ChainModerator = load_moderator(
            settings.moderation_lexicon,
            settings.moderation_base_url,
            settings.moderation_api_key,
            settings.moderation_model,
        )

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
        if total > self.settings.max_input_chars:
            raise PayloadTooLargeError(
                f"the messages hold {total} characters, over the limit of "
                f"{self.settings.max_input_chars}; shorten the conversation",
                param="messages",
            )
        return [{"role": m.role, "content": m.content} for m in messages]

    def _check_text(self, field: str, text: str) -> None:
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

    def sampling(
        self,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
    ) -> SamplingParams:
        limit = self.settings.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}, over this server's limit of {limit}",
                param="max_tokens",
                code="invalid_value",
            )
        temp = DEFAULT_TEMPERATURE if temperature is None else temperature
        return SamplingParams(
            max_new_tokens=max_tokens or self.settings.default_max_tokens,
            temperature=temp,
            top_p=DEFAULT_TOP_P if top_p is None else top_p,
            top_k=top_k or 0,
            repetition_penalty=repetition_penalty or DEFAULT_REPETITION_PENALTY,
            do_sample=temp > 0,
        )

    # ---- generation -------------------------------------------------------------------------
    async def open(self, request: AnswerRequest) -> Answer:
        """Lease the model and await the first delta (so errors surface before any byte)."""
        conversation_id = None
        if request.regenerate is not None:
            parent = await asyncio.to_thread(self._own_message, request)
            conversation_id = parent.conversation_id
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
                replace(request.options, max_input_tokens=self.settings.max_input_tokens),
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
        """The conversation to continue must be this session's (404 otherwise)."""
        with session_scope(self.db) as session:
            store.owned_conversation(
                session=session,
                conversation_id=str(request.conversation_id),
                session_id=request.session_id,
            )

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
        """Record the context (new conversations) and the answer, with `answer.id` as its id."""
        await asyncio.to_thread(self._store, answer)

    def _store(self, answer: Answer) -> None:
        if answer.stored:
            return
        answer.stored = True
        with session_scope(self.db) as session:
            if answer.conversation_id is None and answer.request.conversation_id is not None:
                answer.conversation_id = answer.request.conversation_id
                answer.user_message_id = self._record_turn(session, answer)
            elif answer.conversation_id is None:
                answer.conversation_id, answer.user_message_id = self._record_context(
                    session, answer.request, answer.flag
                )
            self._record_answer(session, answer, answer.conversation_id)

    async def store_battle(self, session_id: str, a: Answer, b: Answer) -> str:
        """Store both answers to one context and open a battle between them; its id."""
        return await asyncio.to_thread(self._store_battle, session_id, a, b)

    def _store_battle(self, session_id: str, a: Answer, b: Answer) -> str:
        with session_scope(self.db) as session:
            conversation_id, _ = self._record_context(session, a.request, a.flag)
            for answer in (a, b):
                answer.stored = True
                answer.conversation_id = conversation_id
                self._record_answer(session, answer, conversation_id)
            leak = next(
                (name for x in (a, b) if (name := self.moderator.reveals_identity(x.text))), None
            )
            void = (
                f"flagged:{a.flag.category}"
                if a.flag is not None
                else (f"identity:{leak}" if leak else None)
            )
            if void:
                logger.info("battle voided (%s): the vote will not count", void)
            battle = store.create_battle(
                session=session,
                session_id=session_id,
                context=a.request.messages,
                message_a_id=a.id,
                message_b_id=b.id,
                void_reason=void,
            )
            return battle.id

    @staticmethod
    def _record_context(
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

    @staticmethod
    def _record_turn(session: Session, answer: Answer) -> str:
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
            flag_reason=answer.flag.reason if answer.flag is not None else None,
            message_id=request.user_message_id,
        ).id

    def _record_answer(self, session: Session, answer: Answer, conversation_id: str) -> None:
        request, params = answer.request, answer.request.params
        if answer.flag is not None:
            flag: str | None = "refusal"  # the answer to a flagged turn: never training data
        else:
            verdict = self.moderator.check(answer.text)
            if verdict.category == "self_harm":
                # An answer that talks about distress (to comfort, or to give the 109 line) is
                # the answer we want: not flagged, it may train.
                verdict = CLEAN
            flag = verdict.reason
            if verdict.flagged:
                self.metrics.refusals.labels(f"answer:{verdict.category}").inc()
        store.record_message(
            session=session,
            conversation_id=conversation_id,
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
            message_id=answer.id,
            flag_reason=flag,
            finish_reason=answer.finish_reason,
        )

    def _own_message(self, request: AnswerRequest) -> Any:
        """The answer `request` regenerates; it must be in a conversation of the request's
        session (404 otherwise, as for an unknown id)."""
        with session_scope(self.db) as session:
            parent = store.get_message(session=session, message_id=str(request.regenerate))
            store.owned_conversation(
                session=session,
                conversation_id=parent.conversation_id,
                session_id=request.session_id,
            )
            return parent

    # ---- conversation history (the API routes and the UI both call these) ------------------
    def start_conversation(self, session_id: str, system_prompt: str | None = None) -> str:
        """An empty stored conversation (the UI's chats continue it turn by turn); its id."""
        with session_scope(self.db) as session:
            return store.create_conversation(
                session=session, session_id=session_id, system_prompt=system_prompt
            ).id

    def conversations(self, session_id: str, limit: int = 50) -> list[ConversationPublic]:
        with session_scope(self.db) as session:
            return store.list_conversations(session=session, session_id=session_id, limit=limit)

    def conversation(
        self, conversation_id: str, session_id: str
    ) -> tuple[ConversationPublic, list[MessagePublic]]:
        """A conversation of `session_id` and its messages as the user last saw them."""
        with session_scope(self.db) as session:
            conversation = store.owned_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )
            return conversation, store.conversation_thread(
                session=session, conversation_id=conversation_id
            )

    def rename_conversation(
        self, conversation_id: str, session_id: str, title: str
    ) -> ConversationPublic:
        with session_scope(self.db) as session:
            return store.rename_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id, title=title
            )

    def delete_conversation(self, conversation_id: str, session_id: str, forget: bool) -> None:
        with session_scope(self.db) as session:
            store.delete_conversation(
                session=session,
                conversation_id=conversation_id,
                session_id=session_id,
                forget=forget,
            )

    def share_conversation(self, conversation_id: str, session_id: str) -> str:
        with session_scope(self.db) as session:
            return store.share_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )

    def share_url(self, token: str) -> str:
        """The link to a shared conversation, from `public_url` (never a request's headers)."""
        return f"{self.settings.share_base()}/shared/{token}"

    def shared(self, token: str) -> tuple[ConversationPublic, list[MessagePublic]]:
        with session_scope(self.db) as session:
            return store.shared_conversation(session=session, token=token)

    # ---- feedback, arena and rankings (the API routes and the UI both call these) ------------
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
                self._check_text(name, text)
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

    def battle_models(self, models: Sequence[str] | None = None) -> list[str]:
        """Two served names on different versions, in random order (anonymous sides): `models`
        as given; else, while a challenger is judged, challenger vs champion in a share
        (`challenger_share`) of battles; else the first two served aliases (SFT vs RLHF)."""
        if not models and (pair := self._challenge_pair()) is not None:
            random.shuffle(pair)
            return pair
        if models:
            names = [self.manager.resolve(name) for name in models]
        else:
            names, seen = [], set()
            for name in self.manager.names():
                if name.alias is not None and name.version not in seen:
                    seen.add(name.version)
                    names.append(name)
        if models and (len(names) < 2 or names[0].version == names[1].version):
            raise ConflictError(
                "an arena battle needs two different model versions; only "
                f"{sorted({n.version for n in names})} served (promote an `rlhf` model or pass "
                "`models`)",
                field="models",
            )
        if not names:
            raise ConflictError("no model is served", field="models")
        if len(names) < 2:
            # One version served: two independent samples of it (on-policy pairs, the data
            # online DPO wants); the leaderboard leaves such battles out.
            return [names[0].name, names[0].name]
        chosen = [n.name for n in names[:2]]
        random.shuffle(chosen)
        return chosen

    def _challenge_pair(self) -> list[str] | None:
        challenger = self.manager.challenger()
        if challenger is None or random.random() >= self.settings.challenger_share:
            return None
        champion = self.manager.resolve(self.manager.default_name())
        if champion.version == challenger.version:
            return None
        return [challenger.name, champion.name]

    async def vote(self, *, battle_id: str, session_id: str, winner: str) -> BattlePublic:
        """The verdict on a battle (a, b, tie, both_bad), once; the battle with its models.
        A vote on a challenger's battle may decide the challenge (promote or retire)."""
        battle = await asyncio.to_thread(self._vote, battle_id, session_id, winner)
        if CHALLENGER_ALIAS in (battle.model_a, battle.model_b):
            await self.decide_challenge()
        return battle

    def _vote(self, battle_id: str, session_id: str, winner: str) -> BattlePublic:
        with session_scope(self.db) as session:
            return store.vote(
                session=session, battle_id=battle_id, session_id=session_id, winner=winner
            )

    # ---- the challenger phase ---------------------------------------------------------------
    async def decide_challenge(self) -> Any:
        """Apply what the votes support now (promote / retire) and swap at once, before the
        next battle is drawn; None when undecided, or when another process is deciding."""

        decision = await asyncio.to_thread(
            decide_challenge, self.settings, self.db, self.manager.registry
        )
        if decision is not None:
            self.metrics.challenger_decisions.labels(decision.action).inc()
            await self.manager.reload(f"challenger {decision.action}")
        return decision

    def challenger(self) -> dict[str, Any]:
        """The challenge in progress (record, interval, what the votes say now) and history."""

        state = current_challenge(self.db, self.manager.registry)
        return {
            "active": state.as_dict() if state is not None else None,
            "share": self.settings.challenger_share,
            "promotion": self.settings.promotion,
            "history": challenge_history(self.db),
        }

    def bootstrap(self) -> dict[str, Any]:
        """The background bootstrap (`GET /v1/bootstrap`, the chat banner, the dashboard): its
        stages with progress and an estimate of the time left, and the served versions."""
        served = self.manager.status()["aliases"]
        if self.background is None:
            return {"active": False, "status": "off", "served": served}
        return {**self.background.view(), "served": served}

    def dashboard(self) -> Dashboard:
        """Feedback per day and per version, retrain runs, versions and aliases, the newest PPO
        curves, the challenge (blocking: call it in a thread)."""
        # lazy: retrain.ppo pulls in the training stack (TRL, peft), which serving never needs
        from kindchat.retrain.ppo import LOG_FILE as PPO_LOG_FILE
        from kindchat.retrain.ppo import read_log as read_ppo_log

        with session_scope(self.db) as session:
            stats = statistics.feedback_stats(session=session)
            per_day = statistics.feedback_per_day(session=session)
            runs = run_records.list_runs(session=session, limit=50)
        registry = self.manager.registry
        versions = registry.versions()
        data = Dashboard(
            stats=stats,
            per_day=per_day,
            runs=runs,
            versions=versions,
            aliases=registry.aliases(),
            challenger=self.challenger(),
            bootstrap=self.bootstrap(),
        )
        for manifest in reversed([m for m in versions if m.kind == "policy"]):
            directory = registry.root / manifest.version
            if (directory / PPO_LOG_FILE).is_file():
                data.ppo_version, data.ppo_log = manifest.version, read_ppo_log(directory)
                break
        return data

    def leaderboard(self, method: str = "tallies") -> Leaderboard:
        """Rows ranked by `method` (tallies, elo, bt) and the win-rate matrix's cells."""
        if method not in LEADERBOARDS:
            raise InvalidRequestError(
                f"unknown leaderboard method {method!r}; choose from {sorted(LEADERBOARDS)}",
                param="method",
            )
        with session_scope(self.db) as session:
            stats = statistics.feedback_stats(session=session)
            outcomes = [
                o for o in statistics.battle_outcomes(session=session) if o.model_a != o.model_b
            ]
        rows = LEADERBOARDS[method](Evidence(stats, outcomes))
        return Leaderboard(method=method, rows=rows, pairs=pairwise(outcomes))

    # ---- admin (the API's admin routes and the dashboard's buttons check here first) -------
    def check_admin(self, token: str | None) -> None:
        """The one admin check: AdminDisabledError when no admin token is configured,
        AdminTokenError when `token` is missing or is not it (compared in constant time)."""
        expected = self.settings.admin_token
        if expected is None:
            raise AdminDisabledError(
                "admin routes are off; set KINDCHAT_ADMIN_TOKEN to enable them"
            )
        if not token or not secrets.compare_digest(
            token.encode(), expected.get_secret_value().encode()
        ):
            raise AdminTokenError("the admin token is wrong")

    def is_admin(self, token: str | None) -> bool:
        """Whether :meth:`check_admin` lets `token` through."""
        try:
            self.check_admin(token)
        except (AdminDisabledError, AdminTokenError):
            return False
        return True

    async def promote(self, version: str, alias: str) -> tuple[AliasChange, ReloadReport]:
        """Point `alias` at `version` (:func:`kindchat.retrain.admin.promote`: kind checks,
        atomic) and hot-swap now; the change and what the swap loaded or failed to load."""

        change = await asyncio.to_thread(admin.promote, self.settings, version, alias)
        return change, await self.manager.reload("promote")

    async def rollback(self, alias: str) -> tuple[AliasChange, ReloadReport]:
        """Point `alias` back at its previous version and hot-swap now."""

        change = await asyncio.to_thread(admin.rollback, self.settings, alias)
        return change, await self.manager.reload("rollback")

    async def trigger_retrain(self, *, force: bool = False) -> RetrainRunPublic:
        """Queue one retrain cycle in a low-priority child process; the run (`queued`).
        `force` ignores the minimum of new feedback; a cycle already running -> 409."""

        return await asyncio.to_thread(
            admin.trigger_retrain, self.settings, engine=self.db, force=force
        )


async def _aclose(stream: AsyncIterator[TextDelta]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
