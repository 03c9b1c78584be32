"""Initial schema: conversations, messages, ratings, battles, retrain runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Times are naive UTC (`kindchat.feedback.models.UtcDateTime` converts on the way in and out).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "conversations",
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversations_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_session_id"), ["session_id"], unique=False
        )

    op.create_table(
        "retrain_runs",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=128), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("produced_versions", sa.JSON(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retrain_runs_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_retrain_runs_status"), ["status"], unique=False)

    op.create_table(
        "messages",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model_alias", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_messages_conversation_id"), ["conversation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_messages_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_messages_model_version"), ["model_version"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_messages_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_session_id"), ["session_id"], unique=False)

    op.create_table(
        "battles",
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("message_a_id", sa.String(length=64), nullable=False),
        sa.Column("message_b_id", sa.String(length=64), nullable=False),
        sa.Column("model_a", sa.String(length=128), nullable=True),
        sa.Column("version_a", sa.String(length=128), nullable=True),
        sa.Column("model_b", sa.String(length=128), nullable=True),
        sa.Column("version_b", sa.String(length=128), nullable=True),
        sa.Column("winner", sa.String(length=16), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("voted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_a_id"],
            ["messages.id"],
        ),
        sa.ForeignKeyConstraint(
            ["message_b_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("battles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_battles_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_battles_voted_at"), ["voted_at"], unique=False)

    op.create_table(
        "ratings",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "session_id", name="uq_ratings_message_session"),
    )
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ratings_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ratings_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ratings_updated_at"))
        batch_op.drop_index(batch_op.f("ix_ratings_message_id"))

    op.drop_table("ratings")
    with op.batch_alter_table("battles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_battles_voted_at"))
        batch_op.drop_index(batch_op.f("ix_battles_session_id"))

    op.drop_table("battles")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_session_id"))
        batch_op.drop_index(batch_op.f("ix_messages_parent_id"))
        batch_op.drop_index(batch_op.f("ix_messages_model_version"))
        batch_op.drop_index(batch_op.f("ix_messages_created_at"))
        batch_op.drop_index(batch_op.f("ix_messages_conversation_id"))

    op.drop_table("messages")
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_runs_status"))
        batch_op.drop_index(batch_op.f("ix_retrain_runs_created_at"))

    op.drop_table("retrain_runs")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversations_session_id"))
        batch_op.drop_index(batch_op.f("ix_conversations_created_at"))

    op.drop_table("conversations")
