"""The store API on a real SQLite file: happy paths, typed errors, stats, contexts, runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from sqlmodel import Session

from kindchat.errors import ConflictError, ForbiddenError, NotFoundError
from kindchat.feedback import pairs as pairs_mod
from kindchat.feedback import run_records, statistics, store
from kindchat.feedback.errors import FeedbackError, InvalidValueError
from kindchat.feedback.models import MessagePublic
from kindchat.serve.errors import to_api_error


def _exchange(
    db: Session, prompt: str = "안녕?", answer: str = "안녕하세요! 반가워요.", version: str = "v1"
) -> tuple[str, MessagePublic]:
    conv = store.create_conversation(session=db, session_id="s1")
    store.record_message(session=db, conversation_id=conv.id, role="user", content=prompt)
    reply = store.record_message(
        session=db,
        conversation_id=conv.id,
        role="assistant",
        content=answer,
        model_alias="rlhf",
        model_version=version,
        params={"temperature": 0.7},
        latency_ms=120,
        prompt_tokens=5,
        completion_tokens=9,
        session_id="s1",
    )
    return conv.id, reply


def test_record_and_read_back_a_message(db: Session) -> None:
    conv_id, reply = _exchange(db)
    got = store.get_message(session=db, message_id=reply.id)
    assert got == reply
    assert got.params == {"temperature": 0.7} and got.latency_ms == 120
    assert got.created_at.tzinfo is not None
    listed = store.list_messages(session=db, conversation_id=conv_id)
    assert [m.role for m in listed] == ["user", "assistant"]
    assert store.list_messages(session=db, model_version="v1") == [reply]


def test_caller_chosen_message_id_is_kept_and_unique(db: Session) -> None:
    conv = store.create_conversation(session=db)
    kept = store.record_message(
        session=db, conversation_id=conv.id, role="user", content="hi", message_id="chatcmpl-1"
    )
    assert kept.id == "chatcmpl-1"
    with pytest.raises(ConflictError):
        store.record_message(
            session=db, conversation_id=conv.id, role="user", content="x", message_id="chatcmpl-1"
        )


def test_second_rating_by_the_same_session_updates_it(db: Session) -> None:
    _, reply = _exchange(db)
    first = store.rate(session=db, message_id=reply.id, session_id="u1", value=1)
    second = store.rate(
        session=db, message_id=reply.id, session_id="u1", value=-1, reason="rude", comment="음…"
    )
    store.rate(session=db, message_id=reply.id, session_id="u2", value=1)
    assert second.id == first.id and second.created_at == first.created_at
    assert (second.value, second.reason, second.comment) == (-1, "rude", "음…")
    assert second.updated_at > first.updated_at
    ratings = store.list_ratings(session=db, message_id=reply.id)
    assert sorted((r.session_id, r.value) for r in ratings) == [("u1", -1), ("u2", 1)]


def test_battle_vote_once_by_its_own_session(db: Session) -> None:
    conv_id, a = _exchange(db, version="v1")
    b = store.record_message(
        session=db, conversation_id=conv_id, role="assistant", content="반가워요!",
        model_alias="sft", model_version="v0",
    )  # fmt: skip
    battle = store.create_battle(
        session=db,
        session_id="s1",
        context=[{"role": "user", "content": "안녕?"}],
        message_a_id=a.id,
        message_b_id=b.id,
    )
    assert (battle.model_a, battle.version_a, battle.model_b, battle.version_b) == (
        "rlhf", "v1", "sft", "v0",
    )  # fmt: skip
    assert battle.winner is None and battle.prompt == "안녕?"
    with pytest.raises(ForbiddenError):
        store.vote(session=db, battle_id=battle.id, session_id="someone-else", winner="a")
    voted = store.vote(session=db, battle_id=battle.id, session_id="s1", winner="b")
    assert voted.winner == "b" and voted.voted_at is not None
    with pytest.raises(ConflictError):
        store.vote(session=db, battle_id=battle.id, session_id="s1", winner="a")
    assert store.get_battle(session=db, battle_id=battle.id).winner == "b"
    assert store.list_battles(session=db, voted=False) == []


def _bad_calls(db: Session, conv_id: str, user_id: str, reply_id: str) -> list[Any]:
    ctx = [{"role": "user", "content": "안녕?"}]
    ends_with_answer = [*ctx, {"role": "assistant", "content": "x"}]
    msg = partial(store.record_message, session=db, conversation_id=conv_id)
    rate = partial(store.rate, session=db, session_id="u")
    battle = partial(store.create_battle, session=db, session_id="s", message_a_id=reply_id)
    return [
        (NotFoundError, lambda: store.get_message(session=db, message_id="nope")),
        (NotFoundError, lambda: store.get_conversation(session=db, conversation_id="nope")),
        (NotFoundError, lambda: msg(conversation_id="nope", role="user", content="x")),
        (NotFoundError, lambda: rate(message_id="nope", value=1)),
        (NotFoundError, lambda: battle(context=ctx, message_b_id="nope")),
        (
            NotFoundError,
            lambda: store.vote(session=db, battle_id="nope", session_id="s", winner="a"),
        ),
        (NotFoundError, lambda: run_records.get_run(session=db, run_id="nope")),
        (
            NotFoundError,
            lambda: run_records.update_run(session=db, run_id="nope", status="running"),
        ),
        (NotFoundError, lambda: msg(role="assistant", content="x", parent_id="nope")),
        (InvalidValueError, lambda: msg(role="robot", content="x")),
        (InvalidValueError, lambda: msg(role="user", content="  ")),
        (InvalidValueError, lambda: msg(role="user", content=None)),
        (InvalidValueError, lambda: msg(role="assistant", content="x", latency_ms=-1)),
        (InvalidValueError, lambda: msg(role="assistant", content="x", params={"x": object()})),
        (InvalidValueError, lambda: msg(role="assistant", content="x", params=[1])),
        (InvalidValueError, lambda: msg(role="user", content="x", parent_id=reply_id)),
        (InvalidValueError, lambda: msg(role="assistant", content="x", parent_id=user_id)),
        (InvalidValueError, lambda: msg(role="assistant", content="x", model_version="v" * 300)),
        (InvalidValueError, lambda: rate(message_id=reply_id, value=0)),
        (InvalidValueError, lambda: rate(message_id=reply_id, value=True)),
        (InvalidValueError, lambda: rate(message_id=reply_id, value=1, session_id="")),
        (InvalidValueError, lambda: rate(message_id=user_id, value=1)),
        (InvalidValueError, lambda: rate(message_id="", value=1)),
        (InvalidValueError, lambda: battle(context=[], message_b_id=user_id)),
        (
            InvalidValueError,
            lambda: battle(context=[{"role": "assistant", "content": "x"}], message_b_id=user_id),
        ),
        (InvalidValueError, lambda: battle(context=ends_with_answer, message_b_id=user_id)),
        (InvalidValueError, lambda: battle(context=ctx, message_b_id=reply_id)),
        (InvalidValueError, lambda: battle(context=ctx, message_b_id=user_id)),
        (
            InvalidValueError,
            lambda: store.vote(session=db, battle_id="any", session_id="s", winner="c"),
        ),
        (InvalidValueError, lambda: run_records.create_run(session=db, status="done")),
        (InvalidValueError, lambda: store.list_messages(session=db, limit=0)),
        (InvalidValueError, lambda: store.list_ratings(session=db, offset=-1)),
        (InvalidValueError, lambda: store.list_battles(session=db, since="yesterday")),
        (InvalidValueError, lambda: run_records.list_runs(session=db, status="weird")),
    ]


def test_every_bad_input_raises_its_typed_error(db: Session) -> None:
    conv_id, reply = _exchange(db)
    user_id = store.list_messages(session=db, conversation_id=conv_id)[0].id
    expected_status = {
        NotFoundError: 404,
        InvalidValueError: 422,
        ForbiddenError: 403,
        ConflictError: 409,
    }
    calls = _bad_calls(db, conv_id, user_id, reply.id)
    for index, (error, call) in enumerate(calls):
        with pytest.raises(error) as caught:
            call()
        assert isinstance(caught.value, FeedbackError), index
        api = to_api_error(caught.value)  # statuses live in serve/errors.py only
        assert api is not None and api.status_code == expected_status[error], index
        assert str(caught.value), index
    # nothing half-stored by the failed calls
    assert len(store.list_messages(session=db)) == 2
    assert store.list_ratings(session=db) == []


def test_regeneration_answers_the_parents_context(db: Session) -> None:
    conv = store.create_conversation(session=db)
    add = lambda role, content, **kw: store.record_message(  # noqa: E731
        session=db, conversation_id=conv.id, role=role, content=content, **kw
    )
    add("user", "첫 질문")
    a1 = add("assistant", "첫 답")
    add("user", "둘째 질문")
    a2 = add("assistant", "둘째 답")
    r2 = add("assistant", "둘째 답 다시", parent_id=a2.id)
    add("user", "셋째 질문")
    a3 = add("assistant", "셋째 답")
    expected_r2 = [
        {"role": "user", "content": "첫 질문"},
        {"role": "assistant", "content": "첫 답"},
        {"role": "user", "content": "둘째 질문"},
    ]
    assert store.message_context(session=db, message_id=a2.id) == expected_r2
    assert store.message_context(session=db, message_id=r2.id) == expected_r2
    # the thread continues from the regeneration, not from the replaced answer
    assert store.message_context(session=db, message_id=a3.id) == [
        *expected_r2,
        {"role": "assistant", "content": "둘째 답 다시"},
        {"role": "user", "content": "셋째 질문"},
    ]
    assert a1.id != a2.id


def test_branches_go_back_and_continue_where_the_user_chose(db: Session) -> None:
    """‹k/n›: regenerations and edits are siblings; going back to an older branch shows the
    latest turns under it, and a turn added there trains on that branch's context."""
    conv = store.create_conversation(session=db)
    add = lambda role, content, **kw: store.record_message(  # noqa: E731
        session=db, conversation_id=conv.id, role=role, content=content, **kw
    )
    u1 = add("user", "부산 여행 코스")
    a1 = add("assistant", "해운대부터 가요")
    u2 = add("user", "맛집도", follows_id=a1.id)
    a2 = add("assistant", "돼지국밥이요", follows_id=u2.id)
    r1 = add("assistant", "광안리부터 가요", parent_id=a1.id)  # regenerated: 2/2
    e1 = add("user", "제주 여행 코스", parent_id=u1.id)  # edited: a branch of its own
    b1 = add("assistant", "성산일출봉이요", follows_id=e1.id)

    def shown(through: str | None = None) -> list[tuple[str, int, int]]:
        view = store.conversation_branches(session=db, conversation_id=conv.id, through=through)
        return [(b.message.content, b.index, b.count) for b in view]

    assert shown() == [("제주 여행 코스", 2, 2), ("성산일출봉이요", 1, 1)]
    # back to the first question: its latest branch is the regenerated answer
    assert shown(u1.id) == [("부산 여행 코스", 1, 2), ("광안리부터 가요", 2, 2)]
    # back to the first answer: the turns that followed it come back
    assert shown(a1.id) == [
        ("부산 여행 코스", 1, 2),
        ("해운대부터 가요", 1, 2),
        ("맛집도", 1, 1),
        ("돼지국밥이요", 1, 1),
    ]
    # a turn on that older branch follows it (what the export trains on), not the latest one
    u3 = add("user", "숙소는?", follows_id=a2.id)
    assert store.message_context(session=db, message_id=u3.id)[-1]["content"] == "돼지국밥이요"
    assert [c for c, _, _ in shown()][-1] == "숙소는?"
    # a regeneration on an older branch answers its own context, not the latest branch's
    r2 = add("assistant", "밀면이요", parent_id=a2.id)
    assert [m["content"] for m in store.message_context(session=db, message_id=r2.id)] == [
        "부산 여행 코스",
        "해운대부터 가요",
        "맛집도",
    ]
    assert shown() == [
        ("부산 여행 코스", 1, 2),
        ("해운대부터 가요", 1, 2),
        ("맛집도", 1, 1),
        ("밀면이요", 2, 2),
    ]
    assert {r1.id, b1.id} <= {m.id for m in store.list_messages(session=db, limit=50)}
    with pytest.raises(FeedbackError):
        store.conversation_branches(session=db, conversation_id=conv.id, through="nope")
    other = store.create_conversation(session=db)
    with pytest.raises(InvalidValueError):
        store.record_message(
            session=db, conversation_id=other.id, role="user", content="x", follows_id=a1.id
        )


def test_search_finds_conversations_by_title_or_what_was_said(db: Session) -> None:
    def chat(session_id: str, *said: str) -> str:
        conv = store.create_conversation(session=db, session_id=session_id)
        for i, text in enumerate(said):
            role = "user" if i % 2 == 0 else "assistant"
            store.record_message(session=db, conversation_id=conv.id, role=role, content=text)
        return conv.id

    trip = chat("s1", "부산 여행 코스 알려줘", "해운대와 광안리를 추천해요")
    food = chat("s1", "김치찌개 레시피", "돼지고기와 묵은지를 준비해요 (100% 국산)")
    english = chat("s1", "Python list comprehension?", "[x for x in xs]")
    chat("s2", "부산 맛집", "돼지국밥이요")  # another session's: never found by s1

    def found(words: str) -> set[str]:
        return {c.id for c in store.list_conversations(session=db, session_id="s1", search=words)}

    assert found("부산") == {trip}  # the title
    assert found("광안리") == {trip}  # an answer
    assert found("돼지") == {food}
    assert found("PYTHON") == {english}  # Latin letters, case-blind
    assert found("100%") == {food} and found("%") == {food}  # a wildcard is a character
    assert found("x_for") == set() and found("_") == set()
    assert found("  ") == {trip, food, english}  # no words: everything
    assert found("없는 말") == set()


def test_stats_count_per_version_and_day_thumbs_and_votes(db: Session) -> None:
    conv_id, a = _exchange(db, version="v1")
    b = store.record_message(
        session=db,
        conversation_id=conv_id,
        role="assistant",
        content="또 다른 답",
        model_version="v2",
    )
    c = store.record_message(
        session=db,
        conversation_id=conv_id,
        role="assistant",
        content="세 번째 답",
        model_version="v2",
    )
    store.rate(session=db, message_id=a.id, session_id="u1", value=1)
    store.rate(session=db, message_id=a.id, session_id="u2", value=1)
    store.rate(session=db, message_id=b.id, session_id="u1", value=-1)
    store.rate(session=db, message_id=c.id, session_id="u1", value=1)
    ctx = [{"role": "user", "content": "안녕?"}]
    for winner in ("a", "a", "tie", "both_bad"):
        battle = store.create_battle(
            session=db, session_id="s1", context=ctx, message_a_id=a.id, message_b_id=b.id
        )
        store.vote(session=db, battle_id=battle.id, session_id="s1", winner=winner)
    store.create_battle(
        session=db, session_id="s1", context=ctx, message_a_id=a.id, message_b_id=b.id
    )

    stats = statistics.feedback_stats(session=db)
    today = datetime.now(timezone.utc).date().isoformat()
    assert (stats.conversations, stats.messages, stats.ratings) == (1, 4, 4)
    assert (stats.battles, stats.voted_battles) == (5, 4)
    per_day = {(r.model_version, r.day): r.messages for r in stats.messages_per_version_day}
    assert per_day == {("v1", today): 1, ("v2", today): 2}
    thumbs = {t.model_version: (t.up, t.down, t.ratio) for t in stats.thumbs}
    assert thumbs == {"v1": (2, 0, 1.0), "v2": (1, 1, 0.5)}
    votes = {
        v.model_version: (v.battles, v.wins, v.losses, v.ties, v.both_bad) for v in stats.votes
    }
    assert votes == {"v1": (4, 2, 0, 1, 1), "v2": (4, 0, 2, 1, 1)}
    later = statistics.feedback_stats(
        session=db, since=datetime.now(timezone.utc) + timedelta(hours=1)
    )
    assert (later.messages, later.ratings, later.voted_battles, later.thumbs) == (0, 0, 0, [])


def test_mined_pairs_since_keeps_only_recent_evidence(db: Session) -> None:
    conv_id, a = _exchange(db)
    b = store.record_message(
        session=db, conversation_id=conv_id, role="assistant", content="다시 쓴 답", parent_id=a.id
    )
    store.rate(session=db, message_id=a.id, session_id="u", value=-1)
    store.rate(session=db, message_id=b.id, session_id="u", value=1)
    cut = datetime.now(timezone.utc)
    assert [p.source for p in pairs_mod.mine_feedback(session=db).pairs] == ["regeneration"]
    assert pairs_mod.mine_feedback(session=db, since=cut).pairs == []
    store.rate(session=db, message_id=b.id, session_id="u2", value=1)  # fresh evidence
    pairs = pairs_mod.mine_feedback(session=db, since=cut).pairs
    assert [(p.chosen, p.rejected) for p in pairs] == [("다시 쓴 답", "안녕하세요! 반가워요.")]


def test_retrain_runs_lifecycle(db: Session) -> None:
    run = run_records.create_run(session=db)
    assert (run.status, run.started_at, run.finished_at, run.promoted) == (
        "queued",
        None,
        None,
        False,
    )
    running = run_records.update_run(session=db, run_id=run.id, status="running", stage="export")
    assert running.started_at is not None and running.stage == "export"
    done = run_records.update_run(
        session=db,
        run_id=run.id,
        status="succeeded",
        stage="ppo",
        metrics={"win_rate": 0.61},
        produced_versions=["v0008"],
        promoted=True,
    )
    assert done.finished_at is not None and done.metrics == {"win_rate": 0.61}
    assert run_records.update_run(session=db, run_id=run.id, error="note").stage == "ppo"
    with pytest.raises(ConflictError):
        run_records.update_run(session=db, run_id=run.id, status="running")
    with pytest.raises(InvalidValueError):
        run_records.update_run(session=db, run_id=run.id, promoted="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        run_records.update_run(session=db, run_id=run.id, produced_versions="v1")  # type: ignore[arg-type]
    skipped = run_records.create_run(session=db, status="skipped", stage="export")
    assert skipped.finished_at is not None
    assert [r.id for r in run_records.list_runs(session=db)] == [skipped.id, run.id]
    assert [r.id for r in run_records.list_runs(session=db, status="succeeded")] == [run.id]


def test_regeneration_across_stateless_requests_pairs_with_its_parent(db: Session) -> None:
    """serve stores each request as a conversation with its history; a regeneration names the
    answer of an earlier request as its parent."""
    first = store.create_conversation(session=db)
    store.record_message(session=db, conversation_id=first.id, role="user", content="안녕?")
    bad = store.record_message(
        session=db, conversation_id=first.id, role="assistant", content="뭐요."
    )
    second = store.create_conversation(session=db)
    store.record_message(session=db, conversation_id=second.id, role="user", content="안녕?")
    good = store.record_message(
        session=db,
        conversation_id=second.id,
        role="assistant",
        content="안녕하세요!",
        parent_id=bad.id,
    )
    store.rate(session=db, message_id=bad.id, session_id="u", value=-1)
    store.rate(session=db, message_id=good.id, session_id="u", value=1)
    assert store.message_context(session=db, message_id=good.id) == [
        {"role": "user", "content": "안녕?"}
    ]
    pairs = pairs_mod.mine_feedback(session=db).pairs
    assert [(p.source, p.chosen, p.rejected) for p in pairs] == [
        ("regeneration", "안녕하세요!", "뭐요.")
    ]


def test_a_better_answer_rides_on_the_rating_and_is_checked(db: Session) -> None:
    _, answer = _exchange(db)
    rating = store.rate(
        session=db, message_id=answer.id, session_id="u", value=-1, better_answer="이렇게요!"
    )
    assert rating.better_answer == "이렇게요!"
    again = store.rate(session=db, message_id=answer.id, session_id="u", value=-1)
    assert again.id == rating.id and again.better_answer is None  # rating again replaces it
    for bad in ("", "   ", "가" * (store.MAX_BETTER_ANSWER_CHARS + 1), 7):
        with pytest.raises(InvalidValueError, match="better_answer"):
            store.rate(
                session=db, message_id=answer.id, session_id="u", value=-1, better_answer=bad
            )
    [kept] = store.list_ratings(session=db, message_id=answer.id)
    assert kept.value == -1 and kept.better_answer is None  # a refused write changed nothing
