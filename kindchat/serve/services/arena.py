"""The arena: which models meet, storing a battle in one transaction, votes, the challenger
phase those votes decide, and the leaderboards."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.errors import ConflictError
from kindchat.feedback import statistics, store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import BattlePublic
from kindchat.models.manager import ModelManager
from kindchat.models.registry import CHALLENGER_ALIAS
from kindchat.retrain.challenger import (
    challenge_history,
    challenge_pair,
    current_challenge,
    decide_challenge,
)
from kindchat.retrain.gates import ChallengerDecision
from kindchat.serve.errors import InvalidRequestError
from kindchat.serve.leaderboard import LEADERBOARDS, Evidence, pairwise
from kindchat.serve.metrics import Metrics
from kindchat.serve.protocol import Leaderboard
from kindchat.serve.services.answers import Answer, AnswerService, record_context

logger = logging.getLogger(__name__)


class ArenaService:
    """Battles between two served models. `settings` is read for the challenger phase only
    (`challenger_share`, `promotion`, and the lock and rules :func:`decide_challenge` takes)."""

    def __init__(
        self,
        settings: Settings,
        answers: AnswerService,
        manager: ModelManager,
        db: Engine,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.answers = answers
        self.manager = manager
        self.db = db
        self.metrics = metrics

    def served_aliases(self) -> dict[str, str]:
        """Alias → version of what is served (the leaderboard's labels)."""
        return dict(self.manager.status()["aliases"])

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
        """Challenger vs the champion its record names (never the first served alias), in a
        share of battles; None otherwise."""
        pair = challenge_pair(self.db, self.manager, share=self.settings.challenger_share)
        return None if pair is None else list(pair)

    async def store_battle(self, session_id: str, a: Answer, b: Answer) -> str:
        """Store both answers to one context and open a battle between them, all in one
        transaction (a crash leaves the whole battle or none of it); its id."""
        return await asyncio.to_thread(self._store_battle, session_id, a, b)

    def _store_battle(self, session_id: str, a: Answer, b: Answer) -> str:
        # Moderation first: no database lock is held while it runs.
        flags = [self.answers.answer_flag(answer) for answer in (a, b)]
        leak = next(
            (name for x in (a, b) if (name := self.answers.moderator.reveals_identity(x.text))),
            None,
        )
        void = (
            f"flagged:{a.flag.category}"
            if a.flag is not None
            else (f"identity:{leak}" if leak else None)
        )
        if void:
            logger.info("battle voided (%s): the vote will not count", void)
        with session_scope(self.db) as session:
            conversation_id, _ = record_context(session, a.request, a.flag)
            for answer, flag in zip((a, b), flags, strict=True):
                answer.conversation_id = conversation_id
                self.answers.record_answer(session, answer, flag)
            battle = store.create_battle(
                session=session,
                session_id=session_id,
                context=a.request.messages,
                message_a_id=a.id,
                message_b_id=b.id,
                void_reason=void,
            )
        for answer in (a, b):
            answer.stored = True
        return battle.id

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
    async def decide_challenge(self) -> ChallengerDecision | None:
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

    # ---- rankings ---------------------------------------------------------------------------
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
