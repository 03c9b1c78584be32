"""Branches people can go back to: `messages.follows_id`, the message a new turn follows when
that is not the conversation's latest branch (a turn after ‹1/2› chose an older one). Rows
stored before keep NULL: they follow the latest branch, as they always did.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("follows_id", sa.String(length=64), nullable=True))
        batch.create_foreign_key("fk_messages_follows_id", "messages", ["follows_id"], ["id"])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("fk_messages_follows_id", type_="foreignkey")
        batch.drop_column("follows_id")
