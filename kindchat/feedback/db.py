"""The feedback database: URL, engine (SQLite WAL + busy timeout + foreign keys) and migrations.

`init_db(settings)` is what an app calls on start: it builds the engine and runs Alembic's
`upgrade head` (nothing to do when the schema is current). SQLite is the default, at
`$KINDCHAT_HOME/kindchat.db`; `KINDCHAT_DB_URL` points at another database, e.g.
`postgresql+psycopg://user:pass@host/kindchat`, with no other change.
"""

from __future__ import annotations

import logging
import sqlite3
import time
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


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for `url`; on SQLite every connection gets WAL, a busy timeout and FKs on.

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
