"""rate limits: a per-device message window on the state row, and windows keyed by client address

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATE_COLUMNS = (
    # RATE_LIMIT_PER_DEVICE: the start of the device's current one-minute window (NULL: none
    # yet) and the inbound messages stored in it. Written by the claim under the row's lock.
    sa.Column("rate_window_start", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rate_count", sa.Integer, nullable=False, server_default="0"),
)


def upgrade() -> None:
    for column in STATE_COLUMNS:
        op.add_column("conversation_states", column)
    # Limits keyed by something other than a device (RATE_LIMIT_NEW_DEVICES: a client
    # address): one row per (scope, key), its one-minute window and the hits in it. The
    # cleanup run deletes windows that are over.
    op.create_table(
        "rate_limit_windows",
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="rate_limit_windows_pkey"),
    )
    op.create_index("rate_limit_windows_window_start", "rate_limit_windows", ["window_start"])


def downgrade() -> None:
    op.drop_index("rate_limit_windows_window_start", table_name="rate_limit_windows")
    op.drop_table("rate_limit_windows")
    for column in reversed(STATE_COLUMNS):
        op.drop_column("conversation_states", column.name)
