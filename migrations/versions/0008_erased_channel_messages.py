"""erased channel message ids: keyed hashes that keep a replayed delivery a duplicate after an erasure

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE = "erased_channel_messages"


def upgrade() -> None:
    # Only a keyed hash of tenant and channel message id (app/erasure.py): no device,
    # phone number or content, and a message id (which may encode the phone) never in clear.
    op.create_table(
        TABLE,
        sa.Column("message_hash", sa.LargeBinary, primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(f"{TABLE}_expires_at", TABLE, ["expires_at"])


def downgrade() -> None:
    op.drop_index(f"{TABLE}_expires_at", table_name=TABLE)
    op.drop_table(TABLE)
