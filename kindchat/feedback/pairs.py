"""Every signal users give becomes training data — each rule here, and only here.

| signal                                  | becomes                                 | counted as        |
| --------------------------------------- | --------------------------------------- | ----------------- |
| arena vote `a` / `b`                    | a pair (winner > loser)                 | `battle`          |
| arena vote `both_bad`                   | two undesirable examples                | `battle_both_bad` |
| arena vote `tie`                        | nothing                                 | `battle_tie`      |
| 👍 and 👎 on answers to one context     | a pair per (👍, 👎)                     | `rating` (1)      |
| a 👍 with no 👎 sibling                 | a desirable example (KTO)               | `thumb_up`        |
| a 👎 with no 👍 sibling                 | an undesirable example (KTO)            | `thumb_down`      |
| a better answer written with a rating   | a pair (better > rated) + an SFT row    | `better_answer`   |
| 👍 after editing a message whose answer got 👎 | a pair (👍 > 👎) on the original message | `edit`       |

(1) `regeneration` when the 👍 answer regenerates the 👎 one.

Never training data (counted in `dropped`): a turn moderation flagged, and everything rated in
a conversation after it (`flagged`); a battle whose answer gave its model away (`battle_voided`).

An answer's verdict is the sum of its ratings over sessions (zero: `rating_mixed`, dropped).
Answers "to the same context" share every earlier message (whitespace-insensitive), across
conversations — a regeneration, the two sides of a battle, or two people asking the same thing.

Every example carries its conversation: `prompt` is the last user message, `context` the
messages before it (empty for a single turn), so the trainers build the same multi-turn input
that serving built when the answer was generated. `since` keeps only evidence that recent (a
vote, the later rating of a pair, a rating's last change). Every row names the sessions whose
votes made it; votes of `exclude` sessions (judged anomalous) are left out (`anomalous_session`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, select

from kindchat.feedback.models import Battle, Conversation, Message, Rating, as_utc
from kindchat.feedback.store import thread_members
from kindchat.seed import normalize_prompt

Context = list[dict[str, str]]


@dataclass(frozen=True)
class FeedbackPair:
    """One preference learned from users: `chosen` beat `rejected` as a reply to the context.

    `source` is the rule that made it: `battle`, `rating`, `regeneration` or `better_answer`.
    """

    id: str
    source: str
    prompt: str
    context: Context
    chosen: str
    rejected: str
    chosen_model: str | None
    rejected_model: str | None
    at: datetime  # when the evidence was last given (vote or latest rating)
    sessions: tuple[str, ...] = ()  # whose votes made it (the influence cap counts them)


@dataclass(frozen=True)
class FeedbackExample:
    """One answer with a verdict and no sibling: desirable (`label` true) or not.

    `source`: `thumb_up`, `thumb_down`, `battle_both_bad`, or `better_answer` for a user's own
    answer (a demonstration, used for SFT).
    """

    id: str
    source: str
    prompt: str
    context: Context
    completion: str
    label: bool
    model: str | None
    at: datetime
    sessions: tuple[str, ...] = ()


@dataclass
class MinedFeedback:
    """What the feedback gives for training, with a count per rule and per drop reason."""

    pairs: list[FeedbackPair] = field(default_factory=list)
    unpaired: list[FeedbackExample] = field(default_factory=list)  # KTO 👍/👎
    demonstrations: list[FeedbackExample] = field(default_factory=list)  # better answers (SFT)
    signals: Counter[str] = field(default_factory=Counter)  # rule -> pairs/examples it made
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> signals given no row

    def add_pair(self, pair: FeedbackPair) -> None:
        self.pairs.append(pair)
        self.signals[pair.source] += 1

    def add_unpaired(self, example: FeedbackExample) -> None:
        self.unpaired.append(example)
        self.signals[example.source] += 1

    def add_demonstration(self, example: FeedbackExample) -> None:
        """A user's own answer; counted with the pair it also made (`better_answer`)."""
        self.demonstrations.append(example)


def _split_prompt(context: Context) -> tuple[str, Context] | None:
    if not context or context[-1]["role"] != "user" or not context[-1]["content"].strip():
        return None
    return context[-1]["content"], context[:-1]


def _recent(at: datetime, since: datetime | None) -> bool:
    return since is None or as_utc(at) >= since


def _model(message: Message) -> str | None:
    return message.model_version or message.model_alias


# ---- arena ----------------------------------------------------------------------------------
def mine_battles(
    session: Session, since: datetime | None, out: MinedFeedback, exclude: frozenset[str]
) -> None:
    """`a`/`b` → a pair; `both_bad` → two undesirable examples; `tie`, unvoted → counted."""
    query = select(Battle).order_by(col(Battle.created_at), col(Battle.id))
    if since is not None:
        query = query.where((col(Battle.voted_at) >= since) | (col(Battle.created_at) >= since))
    battles = session.exec(query).all()
    in_battles = col(Message.id).in_(select(Battle.message_a_id)) | col(Message.id).in_(
        select(Battle.message_b_id)
    )
    messages = {m.id: m for m in session.exec(select(Message).where(in_battles))}
    flagged_conversations = set(
        session.exec(select(Message.conversation_id).where(col(Message.flagged)).distinct())
    )
    deleted_conversations = set(
        session.exec(select(Conversation.id).where(col(Conversation.deleted_at).isnot(None)))
    )
    for battle in battles:
        if battle.winner is None:
            out.dropped["battle_unvoted"] += 1
            continue
        if battle.void_reason is not None:
            out.dropped["battle_voided"] += 1  # an answer gave its model away: not blind
            continue
        if battle.session_id in exclude:
            out.dropped["anomalous_session"] += 1
            continue
        at = battle.voted_at or battle.created_at
        if not _recent(at, since):
            continue
        a, b = messages[battle.message_a_id], messages[battle.message_b_id]
        if a.conversation_id in deleted_conversations:
            out.dropped["deleted"] += 1  # its user deleted it: no longer training data
            continue
        if a.conversation_id in flagged_conversations or a.flagged or b.flagged:
            out.dropped["flagged"] += 1  # moderation flagged the prompt or an answer
            continue
        prompt, prior = battle.prompt, [dict(m) for m in battle.context[:-1]]
        if battle.winner == "tie":
            out.dropped["battle_tie"] += 1
        elif battle.winner == "both_bad":
            for side, message in (("a", a), ("b", b)):
                out.add_unpaired(
                    FeedbackExample(
                        id=f"battle:{battle.id}:{side}",
                        source="battle_both_bad",
                        prompt=prompt,
                        context=prior,
                        completion=message.content,
                        label=False,
                        model=_model(message),
                        at=at,
                        sessions=(battle.session_id,),
                    )
                )
        else:
            chosen, rejected = (a, b) if battle.winner == "a" else (b, a)
            out.add_pair(
                FeedbackPair(
                    id=f"battle:{battle.id}",
                    source="battle",
                    prompt=prompt,
                    context=prior,
                    chosen=chosen.content,
                    rejected=rejected.content,
                    chosen_model=_model(chosen),
                    rejected_model=_model(rejected),
                    at=at,
                    sessions=(battle.session_id,),
                )
            )


# ---- ratings --------------------------------------------------------------------------------
def _is_regeneration_of(message: Message, ancestor_id: str, by_id: Mapping[str, Message]) -> bool:
    seen: set[str] = set()
    current: Message | None = message
    while current is not None and current.parent_id is not None and current.id not in seen:
        if current.parent_id == ancestor_id:
            return True
        seen.add(current.id)
        current = by_id.get(current.parent_id)
    return False


@dataclass
class _Group:
    """Rated answers to one context."""

    prompt: str
    prior: Context
    ups: list[Message] = field(default_factory=list)
    downs: list[Message] = field(default_factory=list)


@dataclass
class _Ratings:
    net: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # message -> Σ votes
    last: dict[str, datetime] = field(default_factory=dict)  # message -> latest change
    voters: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # message ->
    # (message, text, at, rating id, session)
    better: list[tuple[str, str, datetime, int, str]] = field(default_factory=list)

    def sessions(self, *messages: str) -> tuple[str, ...]:
        return tuple(sorted(set().union(*(self.voters[m] for m in messages))))


def _read_ratings(session: Session, exclude: frozenset[str], out: MinedFeedback) -> _Ratings:
    ratings = _Ratings()
    query = select(
        Rating.id,
        Rating.message_id,
        Rating.value,
        Rating.updated_at,
        Rating.better_answer,
        Rating.session_id,
    ).order_by(col(Rating.updated_at), col(Rating.id))
    for rating_id, message_id, value, updated_at, better, voter in session.exec(query):
        if voter in exclude:
            out.dropped["anomalous_session"] += 1
            continue
        ratings.net[message_id] += value
        ratings.voters[message_id].add(voter)
        ratings.last[message_id] = max(updated_at, ratings.last.get(message_id, updated_at))
        if better is not None and better.strip():
            ratings.better.append((message_id, better, updated_at, int(rating_id), voter))
    return ratings


def mine_ratings(
    session: Session, since: datetime | None, out: MinedFeedback, exclude: frozenset[str]
) -> None:
    """Thumbs → pairs between siblings, KTO examples without; better answers → pair + SFT."""
    ratings = _read_ratings(session, exclude, out)
    if not ratings.net:
        return
    rated_conversations = (  # a conversation its user deleted no longer trains anything
        select(Message.conversation_id)
        .join(Rating, col(Rating.message_id) == col(Message.id))
        .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
        .where(col(Conversation.deleted_at).is_(None))
        .distinct()
    )
    by_id: dict[str, Message] = {}
    contexts: dict[str, Context] = {}
    tainted: set[str] = set()  # flagged, or answering a conversation with a flagged turn
    answers_to: dict[str, list[Message]] = defaultdict(list)  # user message -> its answers
    question_of: dict[str, Message] = {}  # answer -> the user message it replied to
    rated: list[Message] = []  # conversation by conversation, in thread order
    for messages in _conversations(session, rated_conversations):
        members, _ = thread_members(messages)
        for message in messages:
            context = members[message.id]
            contexts[message.id] = [{"role": m.role, "content": m.content} for m in context]
            if message.role == "assistant" and context and context[-1].role == "user":
                answers_to[context[-1].id].append(message)
                question_of[message.id] = context[-1]
            if message.flagged or any(m.flagged for m in members[message.id]):
                tainted.add(message.id)
        by_id.update((m.id, m) for m in messages)
        rated.extend(m for m in messages if m.id in ratings.net)
    deleted = sum(1 for message_id in ratings.net if message_id not in by_id)
    if deleted:  # ratings of answers in conversations their users deleted
        out.dropped["deleted"] += deleted
    groups: dict[str, _Group] = {}
    for message in rated:
        message_id, net = message.id, ratings.net[message.id]
        if message_id in tainted:
            out.dropped["flagged"] += 1
            continue
        if net == 0:
            out.dropped["rating_mixed"] += 1
            continue
        split = _split_prompt(contexts[message_id])
        if split is None:
            out.dropped["rating_no_prompt"] += 1
            continue
        key = json.dumps(
            [(m["role"], normalize_prompt(m["content"])) for m in contexts[message_id]],
            ensure_ascii=False,
        )
        group = groups.setdefault(key, _Group(*split))
        (group.ups if net > 0 else group.downs).append(message)
    for group in groups.values():
        _thumb_rows(group, ratings, by_id, since, out)
    _edit_rows(rated, ratings, by_id, contexts, question_of, answers_to, tainted, since, out)
    for message_id, better, at, rating_id, voter in ratings.better:
        if message_id in tainted or message_id not in by_id:
            continue  # counted with its rating (flagged, or in a deleted conversation)
        _better_answer_rows(by_id[message_id], contexts, better, at, rating_id, since, out, voter)


def _conversations(session: Session, ids: object) -> Iterator[list[Message]]:
    by_conversation: dict[str, list[Message]] = defaultdict(list)
    for message in session.exec(
        select(Message)
        .where(col(Message.conversation_id).in_(ids))  # type: ignore[arg-type]
        .order_by(col(Message.created_at), col(Message.id))
    ):
        by_conversation[message.conversation_id].append(message)
    yield from by_conversation.values()


def _ordered(messages: list[Message]) -> list[Message]:
    return sorted(messages, key=lambda m: (m.created_at, m.id))


def _thumb_rows(
    group: _Group,
    ratings: _Ratings,
    by_id: Mapping[str, Message],
    since: datetime | None,
    out: MinedFeedback,
) -> None:
    if group.ups and group.downs:
        for down in _ordered(group.downs):
            for up in _ordered(group.ups):
                at = max(ratings.last[up.id], ratings.last[down.id])
                if not _recent(at, since):
                    continue
                source = "regeneration" if _is_regeneration_of(up, down.id, by_id) else "rating"
                out.add_pair(
                    FeedbackPair(
                        id=f"rating:{up.id}>{down.id}",
                        source=source,
                        prompt=group.prompt,
                        context=[dict(m) for m in group.prior],
                        chosen=up.content,
                        rejected=down.content,
                        chosen_model=_model(up),
                        rejected_model=_model(down),
                        at=at,
                        sessions=ratings.sessions(up.id, down.id),
                    )
                )
        return
    for message in _ordered(group.ups or group.downs):
        at = ratings.last[message.id]
        if not _recent(at, since):
            continue
        source = "thumb_up" if group.ups else "thumb_down"
        out.add_unpaired(
            FeedbackExample(
                id=f"rating:{message.id}",
                source=source,
                prompt=group.prompt,
                context=[dict(m) for m in group.prior],
                completion=message.content,
                label=bool(group.ups),
                model=_model(message),
                at=at,
                sessions=ratings.sessions(message.id),
            )
        )


def _edit_rows(
    rated: list[Message],
    ratings: _Ratings,
    by_id: Mapping[str, Message],
    contexts: Mapping[str, Context],
    question_of: Mapping[str, Message],
    answers_to: Mapping[str, list[Message]],
    tainted: set[str],
    since: datetime | None,
    out: MinedFeedback,
) -> None:
    """A 👍 answer to an edited message beats a 👎 answer to the message before the edit.

    The user rephrased because the first answer missed; what they liked after the edit is what
    they wanted when they first asked. The pair takes the original message and its context."""
    for liked in rated:
        question = question_of.get(liked.id)
        if ratings.net[liked.id] <= 0 or liked.id in tainted or question is None:
            continue
        original = by_id.get(question.parent_id) if question.parent_id else None
        if original is None or original.role != "user":
            continue
        for disliked in answers_to.get(original.id, []):
            if ratings.net.get(disliked.id, 0) >= 0 or disliked.id in tainted:
                continue
            at = max(ratings.last[liked.id], ratings.last[disliked.id])
            split = _split_prompt(contexts[disliked.id])
            if split is None or not _recent(at, since):
                continue
            prompt, prior = split
            out.add_pair(
                FeedbackPair(
                    id=f"edit:{liked.id}>{disliked.id}",
                    source="edit",
                    prompt=prompt,
                    context=[dict(m) for m in prior],
                    chosen=liked.content,
                    rejected=disliked.content,
                    chosen_model=_model(liked),
                    rejected_model=_model(disliked),
                    at=at,
                    sessions=ratings.sessions(liked.id, disliked.id),
                )
            )


def _better_answer_rows(
    message: Message,
    contexts: Mapping[str, Context],
    better: str,
    at: datetime,
    rating_id: int,
    since: datetime | None,
    out: MinedFeedback,
    voter: str,
) -> None:
    if not _recent(at, since):
        return
    split = _split_prompt(contexts[message.id])
    if split is None:
        out.dropped["better_answer_no_prompt"] += 1
        return
    if normalize_prompt(better) == normalize_prompt(message.content):
        out.dropped["better_answer_unchanged"] += 1
        return
    prompt, prior = split
    out.add_pair(
        FeedbackPair(
            id=f"better:{rating_id}",
            source="better_answer",
            prompt=prompt,
            context=[dict(m) for m in prior],
            chosen=better,
            rejected=message.content,
            chosen_model="user",
            rejected_model=_model(message),
            at=at,
            sessions=(voter,),
        )
    )
    out.add_demonstration(
        FeedbackExample(
            id=f"better:{rating_id}",
            source="better_answer",
            prompt=prompt,
            context=[dict(m) for m in prior],
            completion=better,
            label=True,
            model="user",
            at=at,
            sessions=(voter,),
        )
    )


def mine_feedback(
    *,
    session: Session,
    since: datetime | None = None,
    exclude: Iterable[str] = (),
) -> MinedFeedback:
    """Every training row the feedback gives (battles first, then ratings), counted by rule;
    votes of the `exclude` sessions left out."""
    since = as_utc(since) if since is not None else None
    left_out = frozenset(exclude)
    out = MinedFeedback()
    mine_battles(session, since, out, left_out)
    mine_ratings(session, since, out, left_out)
    return out
