"""reply drafts: the text of a streamed reply while its turn runs, and the device's stop request

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per device at most: the draft of its turn in flight (app/streams/statements.py).
    # Its own table, so that a worker's appends never touch conversation_states, whose row
    # every claim and renewal locks. The finish statement deletes it: drafts do not outlive
    # their turn. The foreign key's cascade erases it with the device's state.
    op.create_table(
        "conversation_drafts",
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, nullable=False),
        # The lease epoch and the attempt of the turn writing it, and the inbound messages it answers.
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("message_ids", postgresql.ARRAY(sa.BigInteger), nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
        # Tool calls and results: [{"at": <offset in text>, "type": ..., ...}], in order.
        sa.Column("events", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        # POST /api/chat/stop: the pending message whose turn is to stop (NULL: none asked).
        sa.Column("stop_message_id", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("tenant_id", "device_id", name="conversation_drafts_pkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "device_id"], ["conversation_states.tenant_id", "conversation_states.device_id"],
            ondelete="CASCADE", name="conversation_drafts_state",
        ),
    )


def downgrade() -> None:
    op.drop_table("conversation_drafts")
