"""message pipeline: the conversation_messages ledger, per-device leases, context merge

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MERGE_FUNCTIONS = """
-- Top-level merge of two objects; a key patched to null is removed (JSON merge patch).
CREATE FUNCTION cs_merge_object(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE WHEN jsonb_typeof(base) = 'object' THEN base ELSE '{}'::jsonb END || patch)
           - ARRAY(SELECT key FROM jsonb_each(patch) WHERE value = 'null'::jsonb)
$$;

-- Append items to a list and keep only the newest cap of them.
CREATE FUNCTION cs_append_capped(base jsonb, items jsonb, cap integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(jsonb_agg(e ORDER BY n), '[]'::jsonb)
    FROM (
        SELECT e, n
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(base) = 'array' THEN base ELSE '[]'::jsonb END || items
        ) WITH ORDINALITY AS t(e, n)
        ORDER BY n DESC
        LIMIT cap
    ) newest
$$;

-- Apply a context patch: objects merged key by key, lists appended and capped.
CREATE FUNCTION cs_merge_context(ctx jsonb, patch jsonb, cap integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ctx
        || CASE WHEN patch ? 'conversation_state' THEN jsonb_build_object('conversation_state',
               cs_merge_object(ctx -> 'conversation_state', patch -> 'conversation_state')) ELSE '{}' END
        || CASE WHEN patch ? 'user_preferences' THEN jsonb_build_object('user_preferences',
               cs_merge_object(ctx -> 'user_preferences', patch -> 'user_preferences')) ELSE '{}' END
        || CASE WHEN patch ? 'interrupted_queries' THEN jsonb_build_object('interrupted_queries',
               cs_append_capped(ctx -> 'interrupted_queries', patch -> 'interrupted_queries', cap)) ELSE '{}' END
        || CASE WHEN patch ? 'recent_interactions' THEN jsonb_build_object('recent_interactions',
               cs_append_capped(ctx -> 'recent_interactions', patch -> 'recent_interactions', cap)) ELSE '{}' END
$$;
"""


def upgrade() -> None:
    op.add_column(
        "conversation_states", sa.Column("lease_epoch", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column("conversation_states", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "conversation_messages",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("agent", sa.String(50), nullable=True),
        sa.Column("external_id", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=True),
        sa.Column("reply_to", sa.BigInteger, nullable=True),
        sa.Column("tools_used", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("processing_time_ms", sa.Integer, nullable=True),
        sa.Column("has_error", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("role IN ('user', 'assistant', 'system')", name="conversation_messages_role"),
        sa.CheckConstraint(
            "(role = 'user' AND status IN ('pending', 'done', 'failed'))"
            " OR (role <> 'user' AND status IS NULL)",
            name="conversation_messages_status",
        ),
        # A channel's message id is unique per tenant: a retried delivery conflicts and is a no-op.
        sa.UniqueConstraint("tenant_id", "external_id", name="conversation_messages_external_id"),
    )
    op.create_index(
        "conversation_messages_latest", "conversation_messages", ["tenant_id", "device_id", sa.text("id DESC")]
    )
    op.create_index(
        "conversation_messages_pending",
        "conversation_messages",
        ["tenant_id", "device_id", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "conversation_messages_reply_to",
        "conversation_messages",
        ["reply_to"],
        postgresql_where=sa.text("reply_to IS NOT NULL"),
    )
    op.execute(MERGE_FUNCTIONS)


def downgrade() -> None:
    op.execute("DROP FUNCTION cs_merge_context(jsonb, jsonb, integer)")
    op.execute("DROP FUNCTION cs_append_capped(jsonb, jsonb, integer)")
    op.execute("DROP FUNCTION cs_merge_object(jsonb, jsonb)")
    op.drop_table("conversation_messages")
    op.drop_column("conversation_states", "lease_expires_at")
    op.drop_column("conversation_states", "lease_epoch")
