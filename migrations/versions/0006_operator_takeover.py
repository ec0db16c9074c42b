"""operator takeover: messages held for a person, the takeover audit event, the operator on the state

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATUS = "conversation_messages_status"
EVENT = "conversation_audit_event"
STATE_COLUMNS = (
    # Who holds a `human` lock, and the TTL each of their replies slides it by.
    sa.Column("operator", sa.Text, nullable=True),
    sa.Column("operator_ttl", sa.Integer, nullable=True),
)


def _status(statuses: str) -> None:
    op.drop_constraint(STATUS, "conversation_messages", type_="check")
    op.create_check_constraint(
        STATUS, "conversation_messages",
        f"(role = 'user' AND status IN ({statuses})) OR (role <> 'user' AND status IS NULL)",
    )


def _events(events: str) -> None:
    op.drop_constraint(EVENT, "conversation_audit", type_="check")
    op.create_check_constraint(EVENT, "conversation_audit", f"event IN ({events})")


def upgrade() -> None:
    # held: stored and acknowledged while a person holds the conversation; no agent runs on it.
    _status("'pending', 'done', 'failed', 'held'")
    _events("'set', 'refresh', 'release', 'handoff', 'expired', 'override', 'takeover'")
    for column in STATE_COLUMNS:
        op.add_column("conversation_states", column)
    op.create_check_constraint(
        "conversation_states_operator_ttl", "conversation_states",
        "operator_ttl IS NULL OR operator_ttl BETWEEN 1 AND 2592000",
    )


def downgrade() -> None:
    op.drop_constraint("conversation_states_operator_ttl", "conversation_states", type_="check")
    for column in reversed(STATE_COLUMNS):
        op.drop_column("conversation_states", column.name)
    op.execute("UPDATE conversation_messages SET status = 'failed' WHERE status = 'held'")
    op.execute("DELETE FROM conversation_audit WHERE event = 'takeover'")
    _events("'set', 'refresh', 'release', 'handoff', 'expired', 'override'")
    _status("'pending', 'done', 'failed'")
