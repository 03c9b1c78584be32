"""The feedback database: URL, engine (SQLite WAL + busy timeout + foreign keys + one writer at
a time, queued in the process) and migrations.

`init_db(settings)` is what an app calls on start: it builds the engine and runs Alembic's
`upgrade head` (nothing to do when the schema is current). SQLite is the default, at
`$KINDCHAT_HOME/kindchat.db`; `KINDCHAT_DB_URL` points at another database, e.g.
`postgresql+psycopg://user:pass@host/kindchat`, with no other change.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kindchat.config import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DB_FILENAME = "kindchat.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_GATE_TIMEOUT_S = 30.0  # then the write goes on to SQLite's own lock (and its timeout)


def database_url(settings: Settings) -> str:
    """`settings.db_url`, or SQLite at `$KINDCHAT_HOME/kindchat.db`."""
    if settings.db_url:
        return settings.db_url
    return f"sqlite:///{(settings.home / DB_FILENAME).resolve()}"


def _set_wal(cursor: Any) -> None:
    """Switch to WAL. On a new file this needs an exclusive lock, and SQLite answers "locked" at
    once (no busy wait) while another process migrates; retry until the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against app crashes
    finally:
        cursor.close()


class WriteGate:
    """One writing transaction at a time on a SQLite file, queued inside this process.

    SQLite lets one connection write at a time; another writer waits in SQLite's busy handler,
    which polls by sleeping (1, 2, 5, 10 … 100 ms steps). Answers that end together (one batch
    of streams) then wait tens to hundreds of milliseconds to be stored before their last event
    (`bench/store_writes.py`, 16 at once: p95 185 ms and max 455 ms a store; with this gate
    55 and 78 ms). Here a transaction takes this lock at its first write and gives
    it back when its connection returns to the pool (after the commit or rollback): the next
    writer wakes at once. Reads never wait for it (WAL). Other processes on the same file still
    meet SQLite's own lock, as before. A thread that already holds the gate through another
    connection does not wait for itself (SQLite decides, as it did before the gate)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._owner: int | None = None

    def before_write(self, info: dict[str, Any]) -> None:
        if info.get(self) or self._owner == threading.get_ident():
            return
        if not self._lock.acquire(timeout=self.timeout_s):  # SQLite's busy timeout decides
            logger.warning("a write waited %.0f s for the write gate; going on", self.timeout_s)
            return
        try:
            self._owner = threading.get_ident()
            info[self] = True
        except BaseException:  # (an interrupt between the two) never leave it taken
            self._owner = None
            self._lock.release()
            raise

    def release(self, info: dict[str, Any]) -> None:
        if info.pop(self, False):
            self._owner = None
            self._lock.release()

    @property
    def held(self) -> bool:
        """Whether a transaction holds the gate now."""
        return self._lock.locked()


_WRITES = ("insert", "update", "delete", "replace", "create", "drop", "alter")
_GATES: dict[str, WriteGate] = {}  # one per database file, whatever the engines on it
_GATES_LOCK = threading.Lock()
_ENGINE_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()


def gate_of(engine: Engine) -> WriteGate | None:
    """The gate `engine`'s writes queue on (None: not a SQLite file, or built without one)."""
    return _ENGINE_GATES.get(engine)


def _write_gate(engine: Engine, database: str) -> WriteGate:
    key = database if database.startswith("file:") else str(Path(database).resolve())
    with _GATES_LOCK:
        gate = _GATES.setdefault(key, WriteGate(WRITE_GATE_TIMEOUT_S))
    _ENGINE_GATES[engine] = gate

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip()[:7].lower().startswith(_WRITES):
            gate.before_write(conn.info)

    @event.listens_for(engine.pool, "checkin")
    def _checkin(_dbapi: Any, record: Any) -> None:
        if record is not None:
            gate.release(record.info)

    @event.listens_for(engine.pool, "detach")
    def _detach(_dbapi: Any, record: Any) -> None:  # leaves the pool without a checkin
        gate.release(record.info)

    return gate


def create_db_engine(url: str, *, echo: bool = False, write_gate: bool = True) -> Engine:
    """An engine for `url`; on SQLite every connection gets WAL, a busy timeout and FKs on,
    and writing transactions queue in the process (:class:`WriteGate`; `write_gate=False`
    leaves them to SQLite's busy handler, for comparison).

    The connection pool is shared by threads: give each thread its own `Session`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=16,
        max_overflow=16,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    if write_gate and database not in ("", ":memory:"):  # memory: one connection's own
        _write_gate(engine, database)
    return engine


def alembic_config(engine: Engine) -> Config:
    """Alembic configuration for this package's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


MIGRATION_LOCK_ID = 0x6B696E64  # "kind": the PostgreSQL advisory lock held while migrating


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run Alembic `upgrade` to `revision` on the engine's database, one process at a time.

    The whole upgrade runs in one transaction that first takes the database's write lock
    (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock), so a second process starting at
    the same moment waits, then finds the schema current and does nothing.
    """
    config = alembic_config(engine)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            gate = gate_of(engine)
            if gate is not None:  # the process's other writers queue behind the migration
                gate.before_write(connection.info)
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def init_db(settings: Settings) -> Engine:
    """The app's engine, migrated to the newest schema. Call once on start."""
    engine = create_db_engine(database_url(settings))
    before, head = current_revision(engine), head_revision()
    if before == head:
        return engine
    migrate(engine)
    logger.info("feedback database at %s (was %s)", current_revision(engine), before)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: the store functions called inside only flush their writes; they are
    committed together when the block ends, or all rolled back when it raises. Keep slow work
    (a model, a moderation API) outside the block: on SQLite a write holds the file's lock until
    the commit."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
