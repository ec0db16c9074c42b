"""agent turns: history order, attempts, merged bursts, idempotency request hashes, sender times;
external ids unique per device, so that every key on the message path leads with (tenant_id, device_id)

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

# Tables whose identity id was their whole primary key; ids stay unique (one sequence each).
DEVICE_TABLES = ("conversation_messages", "conversation_audit")

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
    # Lease epochs come from one sequence, so that a device erased and recreated never
    # hands out an epoch a worker from before the erasure still holds.
    op.execute("CREATE SEQUENCE conversation_lease_epoch")
    op.execute("SELECT setval('conversation_lease_epoch', GREATEST(max(lease_epoch), 1)) FROM conversation_states")
    for column in MESSAGE_COLUMNS:
        op.add_column("conversation_messages", column)
    # A distributed table (Citus, by device) needs the distribution column in every unique key.
    op.drop_constraint("conversation_messages_external_id", "conversation_messages", type_="unique")
    op.create_unique_constraint(
        "conversation_messages_external_id", "conversation_messages", ["tenant_id", "device_id", "external_id"]
    )
    for table in DEVICE_TABLES:
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, ["tenant_id", "device_id", "id"])
    # Agent history: a device's exchanges in turn order (a reply sorts with its inbound message).
    op.create_index(
        "conversation_messages_turn",
        "conversation_messages",
        ["tenant_id", "device_id", sa.text("(COALESCE(reply_to, id)) DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.execute("DROP SEQUENCE conversation_lease_epoch")
    for table in DEVICE_TABLES:
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, ["id"])
    op.drop_constraint("conversation_messages_external_id", "conversation_messages", type_="unique")
    op.create_unique_constraint(
        "conversation_messages_external_id", "conversation_messages", ["tenant_id", "external_id"]
    )
    op.drop_index("conversation_messages_turn", table_name="conversation_messages")
    for column in reversed(MESSAGE_COLUMNS):
        op.drop_column("conversation_messages", column.name)
