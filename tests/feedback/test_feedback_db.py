"""Engine and migrations on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from kindchat.config import Settings
from kindchat.feedback.db import (
    create_db_engine,
    current_revision,
    database_url,
    head_revision,
    init_db,
)

TABLES = {
    "conversations",
    "messages",
    "ratings",
    "battles",
    "retrain_runs",
    "alembic_version",
    "apscheduler_jobs",
}


def test_default_url_is_sqlite_in_home_and_db_url_overrides(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert database_url(Settings(home=home)) == f"sqlite:///{(home / 'kindchat.db').resolve()}"
    url = "postgresql+psycopg://kc:secret@db.example/kindchat"
    assert database_url(Settings(home=home, db_url=url)) == url


def test_migrates_an_empty_database_to_head(fb_settings: Settings) -> None:
    db_file = fb_settings.home / "kindchat.db"
    assert not db_file.exists()
    engine = init_db(fb_settings)
    assert db_file.is_file() == (fb_settings.db_url is None)  # PostgreSQL: nothing on disk
    assert current_revision(engine) == head_revision() == "0004"
    assert set(inspect(engine).get_table_names()) == TABLES
    uniques = inspect(engine).get_unique_constraints("ratings")
    assert [u["column_names"] for u in uniques] == [["message_id", "session_id"]]
    engine.dispose()


def test_init_db_twice_is_a_no_op(fb_settings: Settings) -> None:
    init_db(fb_settings).dispose()
    engine = init_db(fb_settings)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's pragmas")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with engine.connect() as connection:
        try:
            connection.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, role, content, created_at) "
                    "VALUES ('m1', 'no-such-conversation', 'user', 'x', '2025-01-01 00:00:00')"
                )
            )
            raised = False
        except Exception as err:  # sqlalchemy.exc.IntegrityError
            raised = "foreign key" in str(err).lower()
    assert raised


def test_engine_creates_the_parent_directory(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert (tmp_path / "deep" / "er" / "x.db").is_file()
    engine.dispose()
