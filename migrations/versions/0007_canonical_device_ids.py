"""canonical device ids: a UUID device id stored in another spelling takes the form the routes use

Before this revision an import stored its document's device id as written, so
`{9B2E...}` or `urn:uuid:9b2e...` could sit beside `9b2e...`: a copy the routes (which
read every UUID spelling as its lowercase hyphenated form) could never address or erase.

Each such id is renamed, in all three device tables, to its canonical form, or, when
the tenant already has a device of that name (its canonical twin), to
`<canonical>~dup<n>` with the smallest free n, so that nothing is merged and every row
is reachable again through the admin API (export, inspect, erase). Only counts are
logged: device ids are personal data. Ids that are no UUID (phone numbers, `a/b`) are
left as they are.

The candidates are found with one pass over each device table, so on a large
conversation_messages this takes as long as a sequential scan of it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

import logging
import uuid

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)

TABLES = ("conversation_states", "conversation_messages", "conversation_audit")
CANONICAL = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# statement -> guarantee
# CANDIDATES: every (tenant, device) that Python's uuid.UUID may read, bar the canonical
#   form; a superset (the characters it accepts: hex, braces, "urn:uuid:", "-", "_", "+",
#   "0x"; at least 32 of them besides hyphens), narrowed in Python.
# KNOWN: whether the tenant has any row of a device name, in any table.
# RENAME_<table>: one device's rows of one table, all at once (same transaction).
CANDIDATES = text(
    " UNION ".join(
        f"SELECT tenant_id, device_id FROM {table} WHERE device_id ~* '^[0-9a-z{{}}_+:-]+$' "
        f"AND length(replace(device_id, '-', '')) >= 32 AND device_id !~ '{CANONICAL}'"
        for table in TABLES
    )
    + " ORDER BY 1, 2"
)
KNOWN = text(
    "SELECT " + " OR ".join(
        f"EXISTS (SELECT 1 FROM {table} WHERE tenant_id = :tenant AND device_id = :device)" for table in TABLES
    )
)
RENAME = {
    table: text(f"UPDATE {table} SET device_id = :new WHERE tenant_id = :tenant AND device_id = :old")
    for table in TABLES
}


def _canonical(device: str) -> str | None:
    # As app.devices.canonical_device_id reads a device id at this revision (kept here, so
    # that a later change of that code cannot change what this migration did).
    try:
        return str(uuid.UUID(device))
    except ValueError:
        return None


def upgrade() -> None:
    conn = op.get_bind()
    renamed = twins = 0
    for tenant, device in conn.execute(CANDIDATES).all():
        canonical = _canonical(device)
        if canonical is None or canonical == device:
            continue
        target, n = canonical, 0
        while conn.execute(KNOWN, {"tenant": tenant, "device": target}).scalar():
            n += 1
            target = f"{canonical}~dup{n}"
        for statement in RENAME.values():
            conn.execute(statement, {"tenant": tenant, "old": device, "new": target})
        renamed += 1
        twins += n > 0
    if renamed:
        logger.warning(
            "device ids made canonical: %s renamed, %s of them beside a canonical twin (now <uuid>~dup<n>)",
            renamed, twins,
        )


def downgrade() -> None:
    # Nothing to undo: the canonical form was always a valid id, and the old spellings are not kept.
    pass
