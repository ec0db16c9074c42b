"""whatsapp delivery: each channel reply's send state, fenced send marker, backoff

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

REPLY_COLUMNS = (
    # NULL: not tried yet; 'pending': tried, to be retried; 'sent': the Graph API accepted it;
    # 'failed': refused for good; 'outside_window': the 24-hour customer-service window was closed.
    sa.Column("delivery", sa.Text, nullable=True),
    # The send marker: whoever bumped send_epoch may send until send_expires_at; nobody else.
    sa.Column("send_epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("send_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("send_attempts", sa.Integer, nullable=False, server_default="0"),
    # Backoff: the cleanup run leaves the reply alone until then.
    sa.Column("next_send_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
)
UNDELIVERED = "role = 'assistant' AND (metadata ->> 'channel') = 'whatsapp' AND (delivery IS NULL OR delivery = 'pending')"


def upgrade() -> None:
    for column in REPLY_COLUMNS:
        op.add_column("conversation_messages", column)
    op.create_check_constraint(
        "conversation_messages_delivery",
        "conversation_messages",
        "delivery IS NULL OR delivery IN ('pending', 'sent', 'failed', 'outside_window')",
    )
    # Replies sent (or given up) before this revision are settled by their old note.
    op.execute(
        "UPDATE conversation_messages SET delivery = CASE WHEN metadata ->> 'delivered' = 'true' "
        "THEN 'sent' ELSE 'failed' END WHERE " + UNDELIVERED
    )
    op.create_index(
        "conversation_messages_undelivered",
        "conversation_messages",
        ["tenant_id", "device_id", "id"],
        postgresql_where=sa.text(UNDELIVERED),
    )


def downgrade() -> None:
    op.drop_index("conversation_messages_undelivered", table_name="conversation_messages")
    op.drop_constraint("conversation_messages_delivery", "conversation_messages", type_="check")
    for column in reversed(REPLY_COLUMNS):
        op.drop_column("conversation_messages", column.name)
