"""Conversations as people use them: flagged turns, stops and edits, history, sharing, voided
battles.

- messages: `flagged` and `flag_reason` (moderation; flagged turns never reach training),
  `finish_reason` (e.g. `stop_by_user`).
- conversations: `system_prompt` (the persona), `deleted_at` (soft delete: hidden, still
  training data), `share_token` (a read-only link), `updated_at` (history order).
- battles: `void_reason` (an answer gave its model away: the vote is not blind, not counted).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("flag_reason", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("finish_reason", sa.String(length=32), nullable=True))
        batch.create_index("ix_messages_flagged", ["flagged"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("system_prompt", sa.Text(), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("share_token", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_conversations_share_token", ["share_token"], unique=True)
        batch.create_index("ix_conversations_updated_at", ["updated_at"])
    with op.batch_alter_table("battles") as batch:
        batch.add_column(sa.Column("void_reason", sa.String(length=128), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("battles") as batch:
        batch.drop_column("void_reason")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_updated_at")
        batch.drop_index("ix_conversations_share_token")
        for column in ("updated_at", "share_token", "deleted_at", "system_prompt"):
            batch.drop_column(column)
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_flagged")
        for column in ("finish_reason", "flag_reason", "flagged"):
            batch.drop_column(column)
