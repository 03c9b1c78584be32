"""Share links are snapshots: `conversations.shared_at`, the time the link was made; the shared
page shows the messages stored by then. Links made before this revision show the conversation
as it is when the migration runs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("shared_at", sa.DateTime(), nullable=True))
    conversations = sa.table(
        "conversations",
        sa.column("share_token", sa.String()),
        sa.column("shared_at", sa.DateTime()),
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as every time here
    op.execute(
        conversations.update().where(conversations.c.share_token.isnot(None)).values(shared_at=now)
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("shared_at")
