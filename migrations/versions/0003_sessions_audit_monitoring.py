"""sessions as episodes, the audit trail, cleanup runs and monitoring views

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = """
CREATE VIEW active_locks_by_agent AS
    SELECT tenant_id, active_agent, count(*) AS active_locks
    FROM conversation_states
    WHERE active_agent IS NOT NULL AND expires_at > now()
    GROUP BY tenant_id, active_agent;

CREATE VIEW expired_locks_pending AS
    SELECT tenant_id, count(*) AS expired_pending, min(expires_at) AS oldest_expiry
    FROM conversation_states
    WHERE active_agent IS NOT NULL AND expires_at <= now()
    GROUP BY tenant_id;

CREATE VIEW lock_duration_by_agent AS
    SELECT tenant_id, active_agent,
           avg(EXTRACT(EPOCH FROM now() - locked_at)) AS avg_lock_age_seconds,
           max(EXTRACT(EPOCH FROM now() - locked_at)) AS max_lock_age_seconds
    FROM conversation_states
    WHERE active_agent IS NOT NULL AND expires_at > now()
    GROUP BY tenant_id, active_agent;

CREATE VIEW cleanup_history AS
    SELECT id, started_at, finished_at, released, deleted_messages, deleted_states,
           deleted_messages + deleted_states AS deleted, duration_ms, recovered
    FROM cleanup_runs
    ORDER BY id DESC;
"""


def upgrade() -> None:
    for column in (
        sa.Column("session_id", sa.Text, nullable=True),
        sa.Column("session_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("lease_token", sa.Text, nullable=True),
    ):
        op.add_column("conversation_states", column)
    op.add_column("conversation_messages", sa.Column("session_id", sa.Text, nullable=True))
    # Retention looks for rows without a live lock that went quiet long ago.
    op.create_index(
        "conversation_states_idle",
        "conversation_states",
        [sa.text("GREATEST(last_activity_at, updated_at)")],
        postgresql_where=sa.text("active_agent IS NULL"),
    )
    op.create_index("conversation_messages_created", "conversation_messages", ["created_at"])
    op.create_index(
        "conversation_messages_session", "conversation_messages", ["tenant_id", "device_id", "session_id"]
    )
    op.create_table(
        "conversation_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text, nullable=True),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("from_agent", sa.String(50), nullable=True),
        sa.Column("to_agent", sa.String(50), nullable=True),
        sa.Column("message_id", sa.BigInteger, nullable=True),
        sa.Column("db_ms", sa.Integer, nullable=True),
        sa.Column("agent_ms", sa.Integer, nullable=True),
        sa.Column("total_ms", sa.Integer, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "event IN ('set', 'refresh', 'release', 'handoff', 'expired', 'override')",
            name="conversation_audit_event",
        ),
    )
    op.create_index("conversation_audit_device", "conversation_audit", ["tenant_id", "device_id", "id"])
    op.create_index("conversation_audit_at", "conversation_audit", ["at"])
    op.create_table(
        "cleanup_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("released", sa.Integer, nullable=False),
        sa.Column("deleted_messages", sa.Integer, nullable=False),
        sa.Column("deleted_states", sa.Integer, nullable=False),
        sa.Column("recovered", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duration_ms", sa.Integer, nullable=False),
    )
    op.execute(VIEWS)


def downgrade() -> None:
    for view in ("cleanup_history", "lock_duration_by_agent", "expired_locks_pending", "active_locks_by_agent"):
        op.execute(f"DROP VIEW {view}")
    op.drop_table("cleanup_runs")
    op.drop_table("conversation_audit")
    op.drop_index("conversation_messages_session", "conversation_messages")
    op.drop_index("conversation_messages_created", "conversation_messages")
    op.drop_index("conversation_states_idle", "conversation_states")
    op.drop_column("conversation_messages", "session_id")
    for column in ("lease_token", "last_activity_at", "session_started_at", "session_id"):
        op.drop_column("conversation_states", column)
