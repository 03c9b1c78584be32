"""The rule a challenge is decided by: `challenges.rule` — `sequential` (a test by betting, valid
at every look; the default from now on) or `fixed` (the 95% interval from `min_votes` on, the
rule before). Challenges recorded before this revision keep the rule they opened with: `fixed`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("challenges") as batch:
        batch.add_column(
            sa.Column("rule", sa.String(length=16), nullable=False, server_default="fixed")
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("challenges") as batch:
        batch.drop_column("rule")
