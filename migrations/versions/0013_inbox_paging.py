"""inbox paging: each conversation's last message time on its state row, indexed for the inbox's order

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

The inbox listed a tenant's conversations by a time computed per conversation (the
later of the state's last activity and its newest message), so every page read all of
the tenant's conversations. last_message_at keeps that time on the state row, written
by every statement that stores a message (app/admin/inbox.py lists them), and the
index conversation_states_inbox serves the order and the cursor's position: a page
reads the rows it returns. conversation_messages_held serves the needs_person filter,
which starts from the tenant's held messages instead of its conversations.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMN = "last_message_at"
INBOX_INDEX = "conversation_states_inbox"
HELD_INDEX = "conversation_messages_held"

# The time the inbox showed before this column (app/admin/inbox.py before 0013): the later of the
# state's last activity and its newest message.
BACKFILL = """
UPDATE conversation_states s SET last_message_at = GREATEST(s.last_activity_at, (
    SELECT max(m.created_at) FROM conversation_messages m
    WHERE m.tenant_id = s.tenant_id AND m.device_id = s.device_id))
"""


def upgrade() -> None:
    op.add_column("conversation_states", sa.Column(COLUMN, sa.DateTime(timezone=True), nullable=True))
    op.execute(BACKFILL)
    # NOT NULL, so the index's order has no NULLs to place; a row stored without a message (a context
    # patch, a new session) starts at its creation, as its last activity does.
    op.alter_column("conversation_states", COLUMN, nullable=False, server_default=sa.func.now())
    op.create_index(INBOX_INDEX, "conversation_states", ["tenant_id", sa.text(f"{COLUMN} DESC"), "device_id"])
    op.create_index(
        HELD_INDEX,
        "conversation_messages",
        ["tenant_id", "device_id", "id"],
        postgresql_where=sa.text("status = 'held'"),
    )


def downgrade() -> None:
    op.drop_index(HELD_INDEX, table_name="conversation_messages")
    op.drop_index(INBOX_INDEX, table_name="conversation_states")
    op.drop_column("conversation_states", COLUMN)
