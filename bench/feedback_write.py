"""Write throughput of the feedback store: N concurrent writers, one commit per stored row.

    python bench/feedback_write.py [--writers 8] [--per-writer 400] [--db-url URL]

Phase `messages`: each writer records assistant answers (`store.record_message`); phase
`ratings`: each writer rates those answers under its own user session (`store.rate`, the
upsert path). Every call is its own transaction; afterwards the rows are counted and must
match the number of successful calls exactly. Target: ≥ 1,000 writes/s on SQLite (WAL).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import Message, Rating

logger = logging.getLogger("bench.feedback_write")
TARGET_WRITES_PER_S = 1_000


@dataclass(frozen=True)
class PhaseResult:
    name: str
    writes: int
    seconds: float
    stored: int

    @property
    def rate(self) -> float:
        return self.writes / self.seconds if self.seconds > 0 else float("inf")


def run_writers(
    engine: Engine, writers: int, work: Callable[[Session, int], int]
) -> tuple[int, float]:
    """Start `writers` threads at once, each with its own Session; return (writes, seconds)."""
    done: list[int] = [0] * writers
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)

    def body(index: int) -> None:
        try:
            with session_scope(engine) as session:
                barrier.wait()
                done[index] = work(session, index)
        except BaseException as err:  # reported below; the count check then fails loudly
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} writer(s) failed: {errors[0]!r}") from errors[0]
    return sum(done), seconds


def count(engine: Engine, model: type[Message] | type[Rating]) -> int:
    with session_scope(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def bench(engine: Engine, writers: int, per_writer: int) -> list[PhaseResult]:
    with session_scope(engine) as session:
        conv = store.create_conversation(session=session, session_id="bench")
        store.record_message(session=session, conversation_id=conv.id, role="user", content="안녕?")
    ids: list[list[str]] = [[] for _ in range(writers)]
    before = count(engine, Message)

    def write_messages(session: Session, index: int) -> int:
        for n in range(per_writer):
            message = store.record_message(
                session=session,
                conversation_id=conv.id,
                role="assistant",
                content=f"writer {index} answer {n}: 안녕하세요, 반가워요!",
                model_alias="rlhf",
                model_version="v-bench",
                params={"temperature": 0.7, "top_p": 0.95},
                latency_ms=12,
                prompt_tokens=9,
                completion_tokens=14,
                session_id=f"w{index}",
            )
            ids[index].append(message.id)
        return per_writer

    def write_ratings(session: Session, index: int) -> int:
        for n, message_id in enumerate(ids[index]):
            store.rate(
                session=session,
                message_id=message_id,
                session_id=f"user-{index}",
                value=1 if n % 2 else -1,
            )
        return len(ids[index])

    writes, seconds = run_writers(engine, writers, write_messages)
    messages = PhaseResult("messages", writes, seconds, count(engine, Message) - before)
    writes, seconds = run_writers(engine, writers, write_ratings)
    ratings = PhaseResult("ratings", writes, seconds, count(engine, Rating))
    return [messages, ratings]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--per-writer", type=int, default=400)
    parser.add_argument("--db-url", default=None, help="Default: SQLite in a temporary dir.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="kindchat-bench-") as tmp:
        engine = init_db(Settings(home=Path(tmp), db_url=args.db_url))
        results = bench(engine, args.writers, args.per_writer)
        engine.dispose()
    table = Table(
        title=f"feedback store writes, {args.writers} concurrent writers ({engine.url.get_backend_name()})"
    )
    for column in ("phase", "writes", "seconds", "writes/s", "stored", "lost"):
        table.add_column(column, justify="right")
    ok = True
    for r in results:
        lost = r.writes - r.stored
        ok = ok and lost == 0 and r.writes == args.writers * args.per_writer
        table.add_row(
            r.name, str(r.writes), f"{r.seconds:.2f}", f"{r.rate:,.0f}", str(r.stored), str(lost)
        )
    console.print(table)
    slowest = min(r.rate for r in results)
    verdict = "PASS" if ok and slowest >= TARGET_WRITES_PER_S else "FAIL"
    console.print(
        f"{verdict}: count check {'ok' if ok else 'FAILED'}; slowest phase {slowest:,.0f} writes/s "
        f"(target ≥ {TARGET_WRITES_PER_S:,})"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
