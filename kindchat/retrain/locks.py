"""One retrain cycle (or challenger decision) at a time: across processes, and across hosts.

- Always: an exclusive non-blocking `flock` on `$KINDCHAT_HOME/retrain.lock`, released by the
  kernel if the holder dies; the file names the holder (`pid …`).
- On PostgreSQL (`KINDCHAT_DB_URL`), first a session-level advisory lock
  (`pg_try_advisory_lock`) on a connection held for the whole cycle: several servers on
  several hosts sharing the database run one cycle at a time, and the database frees the lock
  when the holder's connection dies. The holder is named by its connection's
  `application_name` (`kindchat pid … on host`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from kindchat.config import Settings
from kindchat.feedback.db import database_url
from kindchat.retrain.errors import RetrainBusyError

LOCK_FILE = "retrain.lock"
ADVISORY_KEY = zlib.crc32(b"kindchat:retrain-cycle")  # the advisory lock's id (fits a bigint)


def lock_path(settings: Settings) -> Path:
    return settings.home / LOCK_FILE


@contextmanager
def advisory_lock(url: str, key: int = ADVISORY_KEY) -> Iterator[None]:
    """A PostgreSQL session advisory lock held while the block runs, or RetrainBusyError."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    me = f"kindchat pid {os.getpid()} on {socket.gethostname()}"
    engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": me[:63]})
    try:
        with engine.connect() as connection:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            connection.commit()
            if not got:
                holder = connection.execute(
                    text(
                        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                        "AND l.objid = :k"
                    ),
                    {"k": key},
                ).scalar()
                raise RetrainBusyError(
                    f"a retrain cycle is running already ({holder or 'another server'}); "
                    "wait for it to finish"
                )
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
    finally:
        engine.dispose()


def _database_lock(settings: Settings) -> Any:
    url = database_url(settings)
    postgres = make_url(url).get_backend_name() == "postgresql"
    return advisory_lock(url) if postgres else nullcontext()


@contextmanager
def cycle_lock(settings: Settings) -> Iterator[None]:
    """Hold the retrain lock, or raise :class:`RetrainBusyError` at once if someone else does."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with _database_lock(settings), lock_path(settings).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RetrainBusyError(
                f"a retrain cycle is running already ({holder}); wait for it to finish"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(settings: Settings) -> str | None:
    """Who holds the retrain lock now (`pid …`), or None when it is free."""
    try:
        with cycle_lock(settings):
            return None
    except RetrainBusyError as err:
        return str(err)
