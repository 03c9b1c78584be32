"""The challenge as a record of its own: `challenges` (whom a challenger faces, the rules it is
judged by, its state and outcome), one row `open` at a time.

Until now a challenge lived in its retrain run's `metrics["challenger"]` (an untyped dict). Each
run whose metrics hold one becomes a row here: `open` when the run is still `challenging`
(only the newest, should there be several), `promoted` / `retired` when it was decided,
`abandoned` otherwise (the run ended without a decision). Rules an old record lacks take the
values it was judged by then (no cap per session or origin, one session and origin enough, no
anomaly filter). The runs' metrics stay as they were.

Downgrading drops the table: a challenge opened after this revision is then forgotten (its
`challenger` alias stays; remove it with `kindchat models alias rm challenger`).

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-10
"""

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("status = 'open'")
UNCAPPED = 1_000_000  # what an old record without a per-session or per-origin cap meant


def upgrade() -> None:
    """Upgrade schema."""
    challenges = op.create_table(
        "challenges",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("challenger_version", sa.String(length=128), nullable=False),
        sa.Column("champion_alias", sa.String(length=128), nullable=False),
        sa.Column("champion_alias_target", sa.String(length=128), nullable=True),
        sa.Column("champion_version", sa.String(length=128), nullable=False),
        sa.Column("promote_with", sa.JSON(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("min_votes", sa.Integer(), nullable=False),
        sa.Column("min_sessions", sa.Integer(), nullable=False),
        sa.Column("votes_per_session", sa.Integer(), nullable=False),
        sa.Column("min_origins", sa.Integer(), nullable=False),
        sa.Column("votes_per_origin", sa.Integer(), nullable=False),
        sa.Column("influence", sa.JSON(), nullable=True),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("wins", sa.Integer(), nullable=True),
        sa.Column("losses", sa.Integer(), nullable=True),
        sa.Column("ties", sa.Integer(), nullable=True),
        sa.Column("votes", sa.Integer(), nullable=True),
        sa.Column("sessions", sa.Integer(), nullable=True),
        sa.Column("origins", sa.Integer(), nullable=True),
        sa.Column("raw_votes", sa.Integer(), nullable=True),
        sa.Column("excluded_sessions", sa.Integer(), nullable=True),
        sa.Column("win_rate", sa.Float(), nullable=True),
        sa.Column("win_rate_low", sa.Float(), nullable=True),
        sa.Column("win_rate_high", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["retrain_runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_challenges_run_id", "challenges", ["run_id"], unique=False)
    op.create_index(
        "ix_challenges_challenger_version", "challenges", ["challenger_version"], unique=False
    )
    op.create_index("ix_challenges_status", "challenges", ["status"], unique=False)
    op.create_index("ix_challenges_opened_at", "challenges", ["opened_at"], unique=False)
    op.create_index(
        "uq_challenges_one_open",
        "challenges",
        ["status"],
        unique=True,
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )
    rows = _old_challenges()
    if rows:
        op.bulk_insert(challenges, rows)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("uq_challenges_one_open", table_name="challenges")
    op.drop_index("ix_challenges_opened_at", table_name="challenges")
    op.drop_index("ix_challenges_status", table_name="challenges")
    op.drop_index("ix_challenges_challenger_version", table_name="challenges")
    op.drop_index("ix_challenges_run_id", table_name="challenges")
    op.drop_table("challenges")


# ---- the old records -----------------------------------------------------------------------


def _naive_utc(value: Any) -> datetime | None:
    """An ISO string or datetime as naive UTC (how the table stores times), or None."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _old_challenges() -> list[dict[str, Any]]:
    """One row per retrain run whose metrics hold a challenge, newest run first."""
    runs = sa.table(
        "retrain_runs",
        sa.column("id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("metrics", sa.JSON()),
        sa.column("created_at", sa.DateTime()),
        sa.column("finished_at", sa.DateTime()),
    )
    query = sa.select(runs).order_by(runs.c.created_at.desc())
    out: list[dict[str, Any]] = []
    opened = False
    for run in op.get_bind().execute(query).mappings():
        figures = (run["metrics"] or {}).get("challenger") or {}
        if not isinstance(figures, dict) or "version" not in figures:
            continue
        row = _row(run, figures, may_open=not opened)
        opened = opened or row["status"] == "open"
        out.append(row)
    return out


def _row(run: Any, figures: dict[str, Any], *, may_open: bool) -> dict[str, Any]:
    opened_at = _naive_utc(figures.get("started_at")) or run["created_at"]
    action = figures.get("action")
    if "decided_at" in figures and action in ("promote", "retire"):
        status = "promoted" if action == "promote" else "retired"
        decided_at, reason = _naive_utc(figures["decided_at"]), figures.get("reason")
    elif run["status"] == "challenging" and may_open:
        status, decided_at, reason = "open", None, None
    else:
        status = "abandoned"
        decided_at = run["finished_at"] or datetime.now(timezone.utc).replace(tzinfo=None)
        reason = f"migrated: its run ended as {run['status']!r} without a decision"
    return {
        "id": uuid4().hex,
        "run_id": run["id"],
        "challenger_version": figures["version"],
        "champion_alias": figures.get("champion_alias") or "rlhf",
        "champion_alias_target": figures.get("champion_alias_target"),
        "champion_version": figures.get("champion") or figures["version"],
        "promote_with": dict(figures.get("promote_with") or {}),
        "share": float(figures.get("share", 0.5)),
        "min_votes": int(figures.get("min_votes", 1)),
        "min_sessions": int(figures.get("min_sessions", 1)),
        "votes_per_session": int(figures.get("votes_per_session", UNCAPPED)),
        "min_origins": int(figures.get("min_origins", 1)),
        "votes_per_origin": int(figures.get("votes_per_origin", UNCAPPED)),
        "influence": figures.get("influence"),
        "deadline": _naive_utc(figures.get("deadline")) or opened_at,
        "status": status,
        "wins": figures.get("wins"),
        "losses": figures.get("losses"),
        "ties": figures.get("ties"),
        "votes": figures.get("votes"),
        "sessions": figures.get("sessions"),
        "origins": figures.get("origins"),
        "raw_votes": figures.get("raw_votes"),
        "excluded_sessions": figures.get("excluded_sessions"),
        "win_rate": figures.get("win_rate"),
        "win_rate_low": figures.get("win_rate_low"),
        "win_rate_high": figures.get("win_rate_high"),
        "reason": reason,
        "opened_at": opened_at,
        "decided_at": decided_at,
    }
