"""Concurrent writers on one SQLite file lose nothing: 8 threads, and 2 processes."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from kindchat.config import Settings
from kindchat.errors import ConflictError
from kindchat.feedback import db as db_module
from kindchat.feedback import store
from kindchat.feedback.db import (
    create_db_engine,
    database_url,
    gate_of,
    init_db,
    migrate,
    session_scope,
)
from kindchat.feedback.models import Message, Rating

THREADS = 8
PER_THREAD = 40


def _count(engine: Engine, model: type[Message] | type[Rating]) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def _in_threads(engine: Engine, work: Callable[[Session, int], None], n: int = THREADS) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(index: int) -> None:
        try:
            with session_scope(engine) as session:
                barrier.wait()
                work(session, index)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


def _setup(engine: Engine) -> tuple[str, str]:
    with session_scope(engine) as session:
        conv = store.create_conversation(session=session)
        store.record_message(session=session, conversation_id=conv.id, role="user", content="질문")
        answer = store.record_message(
            session=session, conversation_id=conv.id, role="assistant", content="답"
        )
    return conv.id, answer.id


@pytest.mark.slow  # eight writer threads
def test_threads_lose_no_message_and_no_rating(engine: Engine) -> None:
    conv_id, answer_id = _setup(engine)

    def write(session: Session, index: int) -> None:
        for n in range(PER_THREAD):
            message = store.record_message(
                session=session,
                conversation_id=conv_id,
                role="assistant",
                content=f"{index}-{n}",
                model_version="v1",
            )
            store.rate(session=session, message_id=message.id, session_id=f"t{index}", value=1)
            # every thread also races on the same answer with its own session id
            store.rate(session=session, message_id=answer_id, session_id=f"t{index}", value=-1)

    _in_threads(engine, write)
    assert _count(engine, Message) == 2 + THREADS * PER_THREAD
    assert _count(engine, Rating) == THREADS * PER_THREAD + THREADS


def test_threads_racing_on_one_rating_leave_exactly_one_row(engine: Engine) -> None:
    _, answer_id = _setup(engine)

    def write(session: Session, index: int) -> None:
        for n in range(10):
            value = 1 if (index + n) % 2 else -1
            store.rate(session=session, message_id=answer_id, session_id="same", value=value)

    _in_threads(engine, write)
    assert _count(engine, Rating) == 1


def test_threads_voting_on_one_battle_give_one_winner(engine: Engine) -> None:
    conv_id, a_id = _setup(engine)
    with session_scope(engine) as session:
        b = store.record_message(
            session=session, conversation_id=conv_id, role="assistant", content="다른 답"
        )
        battle = store.create_battle(
            session=session,
            session_id="s",
            context=[{"role": "user", "content": "질문"}],
            message_a_id=a_id,
            message_b_id=b.id,
        )
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(session: Session, index: int) -> None:
        try:
            store.vote(session=session, battle_id=battle.id, session_id="s", winner="ab"[index % 2])
            result = "won"
        except ConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)

    _in_threads(engine, write)
    assert sorted(outcomes) == ["conflict"] * (THREADS - 1) + ["won"]


def _process_writer(url: str, conv_id: str, answer_id: str, tag: str, count: int) -> None:
    engine = create_db_engine(url)
    with session_scope(engine) as session:
        for n in range(count):
            message = store.record_message(
                session=session, conversation_id=conv_id, role="assistant", content=f"{tag}-{n}"
            )
            store.rate(session=session, message_id=message.id, session_id=tag, value=-1)
            store.rate(session=session, message_id=answer_id, session_id=f"{tag}-{n % 5}", value=1)
    engine.dispose()


@pytest.mark.slow  # two processes
def test_two_processes_lose_nothing(fb_settings: Settings, tmp_path: Path) -> None:
    engine = init_db(fb_settings)
    conv_id, answer_id = _setup(engine)
    url, per_process = database_url(fb_settings), 150
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_process_writer, args=(url, conv_id, answer_id, tag, per_process))
        for tag in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert _count(engine, Message) == 2 + 2 * per_process
    # one rating per new message, plus 5 distinct sessions per process on the shared answer
    assert _count(engine, Rating) == 2 * per_process + 2 * 5
    engine.dispose()


def _process_init(home: str) -> None:
    init_db(Settings(home=Path(home))).dispose()


@pytest.mark.slow  # two processes
def test_two_processes_migrating_an_empty_database_at_once_both_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    home = str(tmp_path / "fresh")
    workers = [context.Process(target=_process_init, args=(home,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]


def _store_answers(engine: Engine, count: int) -> None:
    for n in range(count):
        with session_scope(engine) as session:
            conv = store.create_conversation(session=session, session_id="s")
            store.record_message(
                session=session, conversation_id=conv.id, role="user", content=f"질문 {n}"
            )
            store.record_message(
                session=session, conversation_id=conv.id, role="assistant", content=f"답 {n}"
            )


def _writers(engine: Engine, threads: int, count: int) -> list[BaseException]:
    """`threads` threads storing `count` answers each, started together; their errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def body() -> None:
        barrier.wait()
        try:
            _store_answers(engine, count)
        except BaseException as err:
            errors.append(err)

    running = [threading.Thread(target=body) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in running)
    return errors


@pytest.mark.slow  # sixteen writer threads, twice
def test_writers_queue_in_the_process_not_in_sqlites_busy_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SQLite's busy handler all but off (1 ms), writers that meet at once fail with
    "database is locked" unless they queue on the gate; with it, every answer is stored."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 1)
    bare = create_db_engine(f"sqlite:///{tmp_path / 'bare.db'}", write_gate=False)
    migrate(bare)
    failures: list[BaseException] = []
    for _ in range(5):  # the control: without the gate, some writer meets the lock
        failures = _writers(bare, 16, 5)
        if failures:
            break
    bare.dispose()
    assert failures and all("locked" in str(err) for err in failures)

    gated = create_db_engine(f"sqlite:///{tmp_path / 'gated.db'}")
    migrate(gated)
    assert _writers(gated, 16, 5) == []
    assert _count(gated, Message) == 16 * 5 * 2
    gate = gate_of(gated)
    assert gate is not None and not gate.held
    gated.dispose()


def test_the_gate_is_taken_by_a_write_and_given_back_at_its_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kindchat.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    gate = gate_of(engine)
    assert gate is not None
    assert gate_of(create_db_engine(url)) is gate  # one gate per file, whatever the engines
    with session_scope(engine) as session:
        _count(engine, Message)  # a read in another transaction takes nothing
        assert not gate.held
        conv = store.create_conversation(session=session, session_id="s")
        assert gate.held
    assert not gate.held  # committed
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        store.record_message(session=session, conversation_id=conv.id, role="user", content="a")
        assert gate.held
        raise RuntimeError("the caller fails mid-transaction")
    assert not gate.held  # rolled back
    with pytest.raises(ConflictError), session_scope(engine) as session:  # the store's own error
        answer = store.record_message(
            session=session, conversation_id=conv.id, role="assistant", content="b"
        )
        store.record_message(
            session=session,
            conversation_id=conv.id,
            role="assistant",
            content="c",
            message_id=answer.id,
        )
    assert not gate.held
    other = threading.Thread(target=_store_answers, args=(engine, 1))  # nothing was left held
    other.start()
    other.join(timeout=10)
    assert not other.is_alive() and _count(engine, Message) == 2  # the rolled-back ones are gone
    assert gate_of(create_db_engine(url, write_gate=False)) is None
    engine.dispose()
