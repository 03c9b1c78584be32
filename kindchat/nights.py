"""One simulated night of feedback, written straight into the store as serving would write it.

`simulate_night` lets a user plug-in (:mod:`kindchat.users`) use the served policy for a night:
half of the prompts go to the arena (two sampled answers, one vote), the other half to the chat
tab (an answer and a thumb; after a 👎 the user often regenerates and rates again; after a 👍
they sometimes ask a follow-up in the same conversation). Every answer is sampled from the
policy (on-policy), stored with its model version, conversation and parent as the server stores
it, and voted on by the plug-in — which sees only the prompt and the answers.

This is the offline twin of `kindchat simulate` (which drives a real server over HTTP): the
benchmark `bench/learn_per_vote.py` uses it so that every method learns from the same night.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from tqdm.auto import tqdm

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.models.generation import DEFAULT_SAMPLING, SamplingParams, generate_batch, row_seeds
from kindchat.models.loading import load_causal_lm
from kindchat.models.template import prompt_format

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class NightConfig:
    """How the simulated users spend the night."""

    votes: int = 500  # arena votes + chat ratings, about
    arena_share: float = 0.5  # of the prompts, the share that goes to the arena
    regenerate_after_down: float = 0.5  # chance to regenerate (and rate again) after a 👎
    follow_up_after_up: float = 0.25  # chance to ask a follow-up after a 👍
    max_new_tokens: int = 48
    # The server's default sampling, so the night's answers are drawn as users get them.
    temperature: float = DEFAULT_SAMPLING.temperature
    top_p: float = DEFAULT_SAMPLING.top_p
    top_k: int = DEFAULT_SAMPLING.top_k
    repetition_penalty: float = DEFAULT_SAMPLING.repetition_penalty
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.votes < 1:
            raise ValueError(f"votes must be >= 1, got {self.votes}")
        for name in ("arena_share", "regenerate_after_down", "follow_up_after_up"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


class Sampler:
    """The served policy, answering batches of conversations through the one sampler; the
    night's n-th answer is drawn with request seed `row_seeds(config.seed, …)[n]`."""

    def __init__(self, model_dir: Path, config: NightConfig) -> None:
        self.model, self.tokenizer = load_causal_lm(model_dir)
        self.format = prompt_format(self.tokenizer)
        self.params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            repetition_penalty=config.repetition_penalty,
        )
        self.batch_size = config.batch_size
        self.seed = config.seed
        self.drawn = 0  # answers drawn so far

    def answer(self, conversations: Sequence[Messages]) -> list[str]:
        out: list[str] = []
        seeds = row_seeds(self.seed, len(conversations), self.drawn)
        self.drawn += len(conversations)
        for start in range(0, len(conversations), self.batch_size):
            end = start + self.batch_size
            batch = [self.format.prompt(c) for c in conversations[start:end]]
            answers = generate_batch(
                self.model, self.tokenizer, batch, self.params, seeds[start:end]
            )
            out.extend(g.text for g in answers)
        return out


def _answer(session: Any, conv: str, text: str, version: str, sid: str, parent: str | None) -> str:
    return store.record_message(
        session=session,
        conversation_id=conv,
        role="assistant",
        content=text,
        model_alias="served",
        model_version=version,
        session_id=sid,
        parent_id=parent,
    ).id


def simulate_night(
    engine: Engine,
    model_dir: Path,
    version: str,
    users: Any,
    prompts: Sequence[str],
    config: NightConfig,
) -> Counter[str]:
    """Let `users` chat, rate and vote on `prompts` with the policy at `model_dir`; counts."""
    rng = random.Random(config.seed)  # with the sampler's seeds: the same night for every method
    sampler = Sampler(model_dir, config)
    pool = list(prompts)
    rng.shuffle(pool)
    n_arena = round(config.votes * config.arena_share)
    arena, chats = pool[:n_arena], pool[n_arena : config.votes]
    counts: Counter[str] = Counter()
    with tqdm(total=len(arena) + len(chats), desc="night", leave=False) as bar:
        for start in range(0, len(arena), config.batch_size):
            batch = arena[start : start + config.batch_size]
            _battles(engine, sampler, version, users, batch, start, counts)
            bar.update(len(batch))
        for start in range(0, len(chats), config.batch_size):
            batch = chats[start : start + config.batch_size]
            _chats(engine, sampler, version, users, batch, start, rng, pool, config, counts)
            bar.update(len(batch))
    logger.info("simulated night: %s", dict(counts))
    return counts


def _battles(
    engine: Engine,
    sampler: Sampler,
    version: str,
    users: Any,
    prompts: Sequence[str],
    offset: int,
    counts: Counter[str],
) -> None:
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    sides = sampler.answer(conversations + conversations)
    # the plug-in judges before the store is written: no write transaction waits on a user
    winners = [
        users.vote(prompt, sides[i], sides[len(prompts) + i]) for i, prompt in enumerate(prompts)
    ]
    with session_scope(engine) as s:
        for i, (prompt, winner) in enumerate(zip(prompts, winners, strict=True)):
            sid = f"night-arena-{offset + i}"
            conv = store.create_conversation(session=s, session_id=sid).id
            store.record_message(
                session=s, conversation_id=conv, role="user", content=prompt, session_id=sid
            )
            a = _answer(s, conv, sides[i], version, sid, None)
            b = _answer(s, conv, sides[len(prompts) + i], version, sid, None)
            battle = store.create_battle(
                session=s,
                session_id=sid,
                context=conversations[i],
                message_a_id=a,
                message_b_id=b,
            )
            store.vote(session=s, battle_id=battle.id, session_id=sid, winner=winner)
            counts[f"vote_{winner}"] += 1


def _chats(
    engine: Engine,
    sampler: Sampler,
    version: str,
    users: Any,
    prompts: Sequence[str],
    offset: int,
    rng: random.Random,
    pool: Sequence[str],
    config: NightConfig,
    counts: Counter[str],
) -> None:
    """One answer each, rated; then regenerations after 👎 and follow-ups after 👍, rated."""
    threads: list[tuple[str, str, Messages]] = []  # (session id, conversation id, messages)
    with session_scope(engine) as s:
        for i, prompt in enumerate(prompts):
            sid = f"night-chat-{offset + i}"
            conv = store.create_conversation(session=s, session_id=sid).id
            store.record_message(
                session=s, conversation_id=conv, role="user", content=prompt, session_id=sid
            )
            threads.append((sid, conv, [{"role": "user", "content": prompt}]))
    asked = [t[2] for t in threads]
    answers = sampler.answer(asked)
    ratings = _judge(users, asked, answers)
    again: list[tuple[str, str, Messages, str]] = []  # regenerate: … and the 👎 message id
    follow: list[tuple[str, str, Messages]] = []
    with session_scope(engine) as s:
        for (sid, conv, messages), text, rating in zip(threads, answers, ratings, strict=True):
            message = _answer(s, conv, text, version, sid, None)
            value = _rate(s, rating, message, sid, counts)
            if value == -1 and rng.random() < config.regenerate_after_down:
                again.append((sid, conv, messages, message))
            elif value == 1 and rng.random() < config.follow_up_after_up:
                follow_up = rng.choice(pool)
                store.record_message(
                    session=s, conversation_id=conv, role="user", content=follow_up, session_id=sid
                )
                follow.append(
                    (
                        sid,
                        conv,
                        [
                            *messages,
                            {"role": "assistant", "content": text},
                            {"role": "user", "content": follow_up},
                        ],
                    )
                )
    asked_again = [m for _, _, m, _ in again]
    asked_next = [m for _, _, m in follow]
    retries = sampler.answer(asked_again)
    follow_answers = sampler.answer(asked_next)
    retry_ratings = _judge(users, asked_again, retries)
    follow_ratings = _judge(users, asked_next, follow_answers)
    with session_scope(engine) as s:
        for (sid, conv, _, parent), text, rating in zip(again, retries, retry_ratings, strict=True):
            message = _answer(s, conv, text, version, sid, parent)
            _rate(s, rating, message, sid, counts)
            counts["regenerations"] += 1
        for (sid, conv, _), text, rating in zip(
            follow, follow_answers, follow_ratings, strict=True
        ):
            message = _answer(s, conv, text, version, sid, None)
            _rate(s, rating, message, sid, counts)
            counts["follow_ups"] += 1


def _judge(users: Any, asked: Sequence[Messages], answers: Sequence[str]) -> list[int | None]:
    """The plug-in's ratings of `answers` to the last messages of `asked`, in order."""
    return [users.rate(m[-1]["content"], a) for m, a in zip(asked, answers, strict=True)]


def _rate(
    session: Any, value: int | None, message_id: str, sid: str, counts: Counter[str]
) -> int | None:
    """Store the plug-in's rating (judged before the transaction began), if it gave one."""
    if value is None:
        counts["no_rating"] += 1
        return None
    store.rate(session=session, message_id=message_id, session_id=sid, value=value)
    counts["thumb_up" if value > 0 else "thumb_down"] += 1
    return int(value)
