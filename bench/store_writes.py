"""How long storing an answer takes when many answers end at once, with and without the gate.

    python bench/store_writes.py [--burst 16] [--bursts 40]

An answer is stored as the serving layer stores a stateless chat turn: a new conversation, the
user's message and the answer, one transaction. Under load answers end together (a batch of
streams finishes in the same engine step), so `--burst` threads store one answer each at the
same instant (a barrier), `--bursts` times. Two engines on fresh SQLite files, in the same run:

* `SQLite busy handler` (`write_gate=False`): writers meet SQLite's file lock; a writer that
  finds it taken sleeps in SQLite's busy handler (1, 2, 5 … 100 ms steps) and tries again;
* `write gate` (the default, :class:`kindchat.feedback.db.WriteGate`): writers queue on a lock
  in the process and each wakes as soon as the one before it has committed.

Prints the latency of one store (from the barrier to its commit) p50 / p95 / max, answers per
second over all bursts, and the ratio of the gate's p95 and max to the busy handler's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from kindchat.feedback import store
from kindchat.feedback.db import create_db_engine, migrate, session_scope


def store_answer(engine: Engine) -> None:
    with session_scope(engine) as session:
        conversation = store.create_conversation(session=session, session_id="bench")
        asked = store.record_message(
            session=session,
            conversation_id=conversation.id,
            role="user",
            content="안녕하세요, 오늘 기분이 어때요?",
            session_id="bench",
        )
        store.record_message(
            session=session,
            conversation_id=conversation.id,
            role="assistant",
            content="오늘은 날씨가 좋아서 기분이 좋아요. " * 6,
            session_id="bench",
            model_alias="sft",
            model_version="bench",
            params={"max_tokens": 64, "temperature": 0.7},
            latency_ms=1500,
            prompt_tokens=20,
            completion_tokens=64,
            follows_id=asked.id,
            message_id=f"chatcmpl-{uuid.uuid4().hex}",
            finish_reason="length",
        )


def bursts(engine: Engine, size: int, count: int) -> tuple[list[float], float]:
    """Latencies of every store (seconds) and the wall time of all bursts."""
    latencies: list[float] = []
    guard = threading.Lock()
    total = 0.0
    for _ in range(count):
        barrier = threading.Barrier(size + 1)

        def writer(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            begun = time.perf_counter()
            store_answer(engine)
            with guard:
                latencies.append(time.perf_counter() - begun)

        threads = [threading.Thread(target=writer) for _ in range(size)]
        for thread in threads:
            thread.start()
        barrier.wait()
        begun = time.perf_counter()
        for thread in threads:
            thread.join()
        total += time.perf_counter() - begun
        time.sleep(0.05)  # the engine's next batch is a while away
    return latencies, total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=16, help="Answers that end at once.")
    parser.add_argument("--bursts", type=int, default=40)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="kc-store-writes-"))
    table = Table(
        title=f"storing {args.burst} answers that end at once, {args.bursts} times (SQLite, WAL)"
    )
    for column in ("writers", "p50 ms", "p95 ms", "max ms", "answers/s"):
        table.add_column(column, justify="right")
    rows: dict[str, list[float]] = {}
    for name, gate in (("SQLite busy handler", False), ("write gate", True)):
        engine = create_db_engine(
            f"sqlite:///{scratch / name.replace(' ', '_')}.db", write_gate=gate
        )
        migrate(engine)
        for _ in range(20):  # warm: connections, statements
            store_answer(engine)
        latencies, seconds = bursts(engine, args.burst, args.bursts)
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        rows[name] = [statistics.median(latencies), p95, latencies[-1]]
        table.add_row(
            name,
            *(f"{1000 * value:.1f}" for value in rows[name]),
            f"{len(latencies) / seconds:.0f}",
        )
        engine.dispose()
    console = Console()
    console.print(table)
    before, after = rows["SQLite busy handler"], rows["write gate"]
    console.print(
        f"write gate ÷ busy handler: p50 {after[0] / before[0]:.2f}×, p95 {after[1] / before[1]:.2f}×, "
        f"max {after[2] / before[2]:.2f}× (lower is better)"
    )


if __name__ == "__main__":
    main()
