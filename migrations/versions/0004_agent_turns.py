"""agent turns: history order, attempts, merged bursts, idempotency request hashes, sender times

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MESSAGE_COLUMNS = (
    # How many holders started a turn on this inbound message (a crashed holder's message runs again).
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # The last message of the merged burst this one was answered with (BURST_MODE=merge).
    sa.Column("merged_into", sa.BigInteger, nullable=True),
    # SHA-256 of the request an idempotency key was first used with.
    sa.Column("request_hash", sa.Text, nullable=True),
    # The channel's own timestamp of the message (WhatsApp's "timestamp"), besides created_at.
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    for column in MESSAGE_COLUMNS:
        op.add_column("conversation_messages", column)
    # Agent history: a device's exchanges in turn order (a reply sorts with its inbound message).
    op.create_index(
        "conversation_messages_turn",
        "conversation_messages",
        ["tenant_id", "device_id", sa.text("(COALESCE(reply_to, id)) DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("conversation_messages_turn", table_name="conversation_messages")
    for column in reversed(MESSAGE_COLUMNS):
        op.drop_column("conversation_messages", column.name)
