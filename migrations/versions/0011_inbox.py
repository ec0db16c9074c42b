"""inbox: the lock a takeover displaced, WhatsApp delivery receipts, consented profile names

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

Numbered 0011 so it does not clash with another branch's 0010; whoever merges both
sets down_revision to the other one's revision.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DELIVERY = "conversation_messages_delivery"
STATE_COLUMNS = (
    # The live agent lock an operator takeover displaced: {"agent", "locked_at", "remaining_seconds"};
    # NULL when no agent held one. A release restores it (app/admin/takeover.py).
    sa.Column("resume_lock", postgresql.JSONB, nullable=True),
    # The WhatsApp profile name, stored only for tenants in WHATSAPP_PROFILE_NAME_TENANTS.
    sa.Column("display_name", sa.Text, nullable=True),
)
STATUS_INDEX = "conversation_messages_wa_reply_id"
CHANGES_INDEX = "conversation_states_tenant_updated"


def _delivery(values: str) -> None:
    op.drop_constraint(DELIVERY, "conversation_messages", type_="check")
    op.create_check_constraint(DELIVERY, "conversation_messages", f"delivery IS NULL OR delivery IN ({values})")


def upgrade() -> None:
    for column in STATE_COLUMNS:
        op.add_column("conversation_states", column)
    op.create_check_constraint(
        "conversation_states_display_name", "conversation_states",
        "display_name IS NULL OR char_length(display_name) BETWEEN 1 AND 100",
    )
    # delivered, read: the Graph API's status callbacks after 'sent' (app/channels/whatsapp/statuses.py).
    _delivery("'pending', 'sent', 'delivered', 'read', 'failed', 'outside_window'")
    # A status callback names the reply by the id the Graph API gave it when it accepted the send.
    op.create_index(
        STATUS_INDEX, "conversation_messages", ["tenant_id", sa.text("(metadata ->> 'wa_reply_id')")],
        postgresql_where=sa.text("(metadata ->> 'wa_reply_id') IS NOT NULL"),
    )
    # The operator inbox's event streams ask "what changed last in this tenant" (app/admin/inbox.py).
    op.create_index(CHANGES_INDEX, "conversation_states", ["tenant_id", "updated_at"])


def downgrade() -> None:
    op.drop_index(CHANGES_INDEX, table_name="conversation_states")
    op.drop_index(STATUS_INDEX, table_name="conversation_messages")
    op.execute("UPDATE conversation_messages SET delivery = 'sent' WHERE delivery IN ('delivered', 'read')")
    _delivery("'pending', 'sent', 'failed', 'outside_window'")
    op.drop_constraint("conversation_states_display_name", "conversation_states", type_="check")
    for column in reversed(STATE_COLUMNS):
        op.drop_column("conversation_states", column.name)
