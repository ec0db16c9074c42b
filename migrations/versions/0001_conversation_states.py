"""conversation_states: the active-agent lock, one row per (tenant_id, device_id)

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversation_states",
        sa.Column("tenant_id", sa.Text, nullable=False, server_default="default"),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("active_agent", sa.String(50), nullable=True),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_ttl", sa.Integer, nullable=False, server_default="86400"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("context", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("tenant_id", "device_id", name="conversation_states_pkey"),
        sa.CheckConstraint("session_ttl BETWEEN 1 AND 2592000", name="conversation_states_ttl_range"),
        sa.CheckConstraint(
            "(active_agent IS NULL) = (expires_at IS NULL)", name="conversation_states_lock_complete"
        ),
    )
    # Only rows holding a lock are indexed, so "find expired locks" stays cheap
    # however many idle rows the table keeps.
    op.create_index(
        "conversation_states_lock_expiry",
        "conversation_states",
        ["expires_at"],
        postgresql_where=sa.text("active_agent IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("conversation_states")
