"""Engine and migrations on a real SQLite file."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from kindchat.config import Settings
from kindchat.feedback import challenges
from kindchat.feedback.db import (
    create_db_engine,
    current_revision,
    database_url,
    head_revision,
    init_db,
    migrate,
    session_scope,
)
from kindchat.feedback.influence import InfluenceConfig

TABLES = {
    "conversations",
    "messages",
    "ratings",
    "battles",
    "retrain_runs",
    "challenges",
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
    assert current_revision(engine) == head_revision() == "0008"
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


def old_figures(version: str, **more: Any) -> dict[str, Any]:
    """A challenge as revision 0004's servers kept it: in the run's metrics["challenger"]."""
    return {
        "version": version,
        "champion": "policy-champ",
        "champion_alias": "rlhf",
        "champion_alias_target": "policy-champ",
        "started_at": "2026-12-20T10:00:00+00:00",
        "deadline": "2026-12-21T10:00:00+00:00",
        "min_votes": 200,
        "promote_with": {},
        **more,
    }


def test_migration_0005_turns_stored_challenges_into_records(fb_settings: Settings) -> None:
    engine = create_db_engine(database_url(fb_settings))
    migrate(engine, "0004")
    runs = sa.table(
        "retrain_runs",
        sa.column("id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("metrics", sa.JSON()),
        sa.column("promoted", sa.Boolean()),
        sa.column("created_at", sa.DateTime()),
        sa.column("finished_at", sa.DateTime()),
    )
    rules = {
        "min_sessions": 20,
        "votes_per_session": 5,
        "min_origins": 10,
        "votes_per_origin": 20,
        "influence": asdict(InfluenceConfig(min_votes=12)),
        "share": 0.3,
    }
    decided = {
        "wins": 150,
        "losses": 40,
        "ties": 10,
        "votes": 200,
        "action": "promote",
        "reason": "users prefer it",
        "win_rate": 0.775,
        "win_rate_low": 0.71,
        "win_rate_high": 0.83,
        "decided_at": "2026-12-19T09:00:00+00:00",
    }
    day = datetime(2026, 12, 1)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(runs),
            [
                {  # decided: a history row
                    "id": "run-old",
                    "status": "succeeded",
                    "metrics": {"challenger": old_figures("policy-a", **rules, **decided)},
                    "promoted": True,
                    "created_at": day.replace(day=18),
                    "finished_at": day.replace(day=19),
                },
                {  # the oldest format (no caps, no anomaly rule), its process died
                    "id": "run-dead",
                    "status": "failed",
                    "metrics": {"challenger": old_figures("policy-b")},
                    "promoted": False,
                    "created_at": day.replace(day=19),
                    "finished_at": day.replace(day=19, hour=5),
                },
                {  # still being judged
                    "id": "run-now",
                    "status": "challenging",
                    "metrics": {
                        "guards": {"passed": True},
                        "challenger": old_figures("policy-c", **rules),
                    },
                    "promoted": False,
                    "created_at": day.replace(day=20),
                    "finished_at": None,
                },
                {  # no challenge at all
                    "id": "run-plain",
                    "status": "skipped",
                    "metrics": {"feedback": {"new_rows": 3}},
                    "promoted": False,
                    "created_at": day.replace(day=21),
                    "finished_at": day.replace(day=21),
                },
            ],
        )
    migrate(engine)
    assert current_revision(engine) == "0008"
    with session_scope(engine) as session:
        found = {c.run_id: c for c in challenges.list_challenges(session=session)}
        now = challenges.get_open(session=session)
    assert set(found) == {"run-old", "run-dead", "run-now"}
    assert now is not None and now.run_id == "run-now" and now.challenger_version == "policy-c"
    assert (now.champion_alias, now.champion_version, now.champion_alias_target) == (
        "rlhf",
        "policy-champ",
        "policy-champ",
    )
    assert (now.min_sessions, now.votes_per_session, now.min_origins, now.share) == (20, 5, 10, 0.3)
    assert challenges.influence_config(now) == InfluenceConfig(min_votes=12)
    assert now.rule == "fixed"  # 0006: a challenge opened before keeps the rule it opened with
    assert now.opened_at == datetime(2026, 12, 20, 10, tzinfo=timezone.utc)
    assert now.deadline == datetime(2026, 12, 21, 10, tzinfo=timezone.utc)
    old = found["run-old"]
    assert old.status == "promoted" and old.reason == "users prefer it"
    assert (old.wins, old.losses, old.ties, old.votes, old.win_rate_low) == (150, 40, 10, 200, 0.71)
    assert old.decided_at == datetime(2026, 12, 19, 9, tzinfo=timezone.utc)
    dead = found["run-dead"]
    assert dead.status == "abandoned" and "'failed'" in (dead.reason or "")
    assert (dead.votes_per_session, dead.min_sessions, dead.influence) == (1_000_000, 1, None)
    engine.dispose()
