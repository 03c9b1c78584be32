"""Locks that hold across processes and, on PostgreSQL, across hosts: one interface, two kinds.

- Always an exclusive `flock` on a file (released by the kernel when the holder dies); the file
  names its holder. On SQLite, where every writer shares one host's disk, that is the lock.
- When the feedback database is PostgreSQL (`KINDCHAT_DB_URL`), first a session-level advisory
  lock (`pg_try_advisory_lock`) on a connection held as long as the lock: several servers on
  several hosts sharing the database take turns, and the database frees the lock when the
  holder's connection dies. The holder is named by its connection's `application_name`.

:func:`held` is the lock for a block of work (the retrain cycle, the retrain queue, alias moves);
:class:`Lease` is a lock held for as long as a process wants it (the scheduler's leadership).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kindchat.config import Settings
from kindchat.errors import BusyError

if TYPE_CHECKING:  # SQLAlchemy is imported where PostgreSQL is used: file locks need none of it
    from sqlalchemy import Connection, Engine

POLL_S = 0.05  # how often a waiting lock tries again


class LockBusyError(BusyError):
    """Someone else holds the lock; `holder` names them (`pid … on host`)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"{name} is held by {holder}")
        self.name = name
        self.holder = holder


def postgres_url(settings: Settings) -> str | None:
    """The database URL when it is PostgreSQL (advisory locks), else None (file locks only)."""
    url = settings.db_url
    if not url:
        return None
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() == "postgresql":
        return url
    return None


def advisory_key(name: str) -> int:
    """The advisory lock id of a named lock (a crc32: fits PostgreSQL's bigint)."""
    return zlib.crc32(f"kindchat:{name}".encode())


def me() -> str:
    return f"kindchat pid {os.getpid()} on {socket.gethostname()}"


def _deadline(wait: float | None) -> float:
    return float("inf") if wait is None else time.monotonic() + wait


def _engine(url: str) -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool, connect_args={"application_name": me()[:63]})


def _holder(connection: Connection, key: int) -> str:
    from sqlalchemy import text

    name = connection.execute(
        text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :k"
        ),
        {"k": key & 0xFFFFFFFF},
    ).scalar()
    return str(name or "another server")


def _try_advisory(connection: Connection, key: int) -> bool:
    from sqlalchemy import text

    got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
    connection.commit()
    return got


@contextmanager
def advisory_lock(url: str, name: str, *, wait: float | None = 0.0) -> Iterator[None]:
    """PostgreSQL's session advisory lock `name` while the block runs; LockBusyError when it is
    still held by another session after `wait` seconds (None: wait as long as it takes)."""
    from sqlalchemy import text

    key = advisory_key(name)
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            deadline = _deadline(wait)
            while not _try_advisory(connection, key):
                if time.monotonic() >= deadline:
                    raise LockBusyError(name, _holder(connection, key))
                time.sleep(POLL_S)
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
    finally:
        engine.dispose()


def _flock(handle: IO[str], deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)


@contextmanager
def file_lock(path: Path, name: str, *, wait: float | None = 0.0) -> Iterator[None]:
    """An exclusive `flock` on `path` while the block runs; LockBusyError after `wait` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        if not _flock(handle, _deadline(wait)):
            handle.seek(0)
            raise LockBusyError(name, handle.read().strip() or "another process")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(me())
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def held(
    name: str, path: Path, *, url: str | None = None, wait: float | None = 0.0
) -> Iterator[None]:
    """Lock `name`: the advisory lock on `url` when it is PostgreSQL's, then the file lock."""
    with ExitStack() as stack:
        if url is not None:
            stack.enter_context(advisory_lock(url, name, wait=wait))
        stack.enter_context(file_lock(path, name, wait=wait))
        yield


class Lease:
    """A lock held until released or lost, e.g. the scheduler's leadership.

    `acquire()` tries once and says whether this process holds it now; `alive()` says whether
    it still does (on PostgreSQL: whether its connection is up; a lost connection loses the
    lock, and another host may take it). `release()` lets it go.
    """

    def __init__(self, name: str, path: Path, *, url: str | None = None) -> None:
        self.name = name
        self.path = path
        self.url = url
        self._stack: ExitStack | None = None
        self._connection: Connection | None = None

    @property
    def holding(self) -> bool:
        return self._stack is not None

    def acquire(self) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        if self._stack is not None:
            return True
        stack = ExitStack()
        try:
            if self.url is not None:
                engine = _engine(self.url)
                stack.callback(engine.dispose)
                connection = stack.enter_context(engine.connect())
                if not _try_advisory(connection, advisory_key(self.name)):
                    stack.close()
                    return False
                self._connection = connection
            stack.enter_context(file_lock(self.path, self.name, wait=0.0))
        except (LockBusyError, SQLAlchemyError, OSError):
            stack.close()
            self._connection = None
            return False
        self._stack = stack
        return True

    def alive(self) -> bool:
        if self._stack is None:
            return False
        if self._connection is None:
            return True
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
            return True
        except SQLAlchemyError:
            self.release()
            return False

    def release(self) -> None:
        stack, self._stack, self._connection = self._stack, None, None
        if stack is not None:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                stack.close()  # closing the connection ends the session: the lock goes with it
            except (SQLAlchemyError, OSError):
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
