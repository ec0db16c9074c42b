"""The operator inbox: a tenant's conversations as people work them, page by page, and a cheap "has anything changed" token.

| statement | guarantee |
| --- | --- |
| INBOX | one page: up to limit conversations after the cursor's position in the order (last_message_at DESC, device_id), one row each, with channel, display name or label, the last message, the live lock and the held messages still waiting for a person, and where its walk of conversation_states_inbox ended; reads limit + 1 conversations, or at most SCAN_ROWS with an agent or channel filter; one statement |
| INBOX_WAITING | the same page for needs_person: its candidates are the tenant's conversations with a held message (index conversation_messages_held), so it reads the held messages, not all the conversations; one statement |
| CHANGES | one value: the tenant's latest state change (index conversation_states_tenant_updated); every stored message, turn, lock change, takeover, operator reply and status callback writes the state row's updated_at; read by each open event stream at most once a second |

The order is the state row's last_message_at: the later of the conversation's newest
message and its last activity (a new session). Every statement that stores a message
moves it forward in the same statement, never back: the ledger's CLAIM and FINISH
(app/ledger/statements.py), the operator's REPLY (app/admin/takeover.py), a message sent
outside a turn (INSERT_OUTBOUND, app/channels/whatsapp/outbox.py), an import (INSERT,
app/admin/transfer.py, from the document's times), and a new session (NEW_SESSION,
app/sessions.py). Deleting a session's messages (DELETE_SESSION, app/chat_history.py)
sets it back to the newest message left; erasing a device deletes its row; retention's
deletions leave it.

Paging is by keyset: a cursor holds the last position a page covered (app/admin/cursor.py),
and the next page starts strictly after it. Conversations whose last_message_at does not
change while a client pages are each listed exactly once, in order. One that gets a new
message moves to the top: if a page already listed it, it is not listed again; if not,
later pages skip it (it is on the first page now). Positions only move forward, except
after DELETE_SESSION, whose conversation may then be listed twice.

A held message waits for a person until an operator reply is stored after it (the
same rule as the release, app/admin/takeover.py). The channel is the one of the
conversation's latest inbound message (web when it has none). The display name is the
stored WhatsApp profile name (only with the tenant's consent, WHATSAPP_PROFILE_NAME_TENANTS),
else a short label stable for the device ("Visitor 3F2A", "WhatsApp 91C0").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import validation
from app.admin.cursor import Filters, Position, decode, encode
from app.agents import HUMAN
from app.core.db import arun
from app.core.engine import Engine
from app.sql import delivery_state, live

PREVIEW_CHARS = 140
# The conversations a page examines at most when a filter the order's index cannot serve (agent,
# channel) is given without needs_person: a page may then hold fewer than its limit, even none,
# and still carry a cursor to go on from the last one examined.
SCAN_ROWS = 1000
LIVE = live("s")
MINE = "m.tenant_id = s.tenant_id AND m.device_id = s.device_id"

# The cursor's position; without one, before every conversation (no stored time is infinity, and
# every device id sorts after ''). COALESCE keeps both usable as index bounds in a generic plan.
AT = "COALESCE(%(at)s::timestamptz, 'infinity')"
AFTER = f"""s.tenant_id = %(tenant)s AND s.last_message_at <= {AT}
      AND (s.last_message_at < {AT} OR s.device_id > COALESCE(%(device)s::text, ''))"""
ORDER = "s.last_message_at DESC, s.device_id"

# The next SCAN_ROWS (or limit + 1) conversations after the position, from conversation_states_inbox.
WALK = f"(SELECT s.* FROM conversation_states s WHERE {AFTER} ORDER BY {ORDER} LIMIT %(scan)s)"
# The conversations after the position with a held message, from conversation_messages_held: as
# many as the tenant has, sorted; the page's other work is done for the ones it returns.
HELD = f"""(SELECT s.* FROM conversation_states s WHERE {AFTER}
      AND s.device_id IN (SELECT h.device_id FROM conversation_messages h
                          WHERE h.tenant_id = %(tenant)s AND h.status = 'held')
    ORDER BY {ORDER})"""


def _page(candidates: str) -> str:
    """SQL: up to limit + 1 of the candidates (state rows in the inbox's order) that pass the filters,
    each with what the inbox shows; the laterals run only for the rows the filters and the limit pull."""
    return f"""
SELECT s.device_id, s.last_message_at AS last_at,
       CASE WHEN {LIVE} THEN s.active_agent END AS agent,
       CASE WHEN {LIVE} THEN s.expires_at END AS expires_at,
       CASE WHEN {LIVE} AND s.active_agent = '{HUMAN}' THEN s.operator END AS operator,
       COALESCE(lu.channel, 'web') AS channel,
       lm.id AS last_id, lm.role AS last_role, lm.agent AS last_agent, lm.delivery AS last_delivery,
       left(lm.content, {PREVIEW_CHARS}) AS last_preview, w.n AS waiting,
       COALESCE(s.display_name,
                CASE WHEN lu.channel = 'whatsapp' THEN 'WhatsApp ' ELSE 'Visitor ' END
                || upper(left(md5(%(tenant)s || '/' || s.device_id), 4))) AS name,
       s.display_name IS NOT NULL AS named
FROM {candidates} s
LEFT JOIN LATERAL (
    SELECT m.id, m.role, m.agent, m.content, {delivery_state("m")} AS delivery
    FROM conversation_messages m WHERE {MINE} ORDER BY m.id DESC LIMIT 1
) lm ON true
LEFT JOIN LATERAL (
    SELECT m.metadata ->> 'channel' AS channel
    FROM conversation_messages m WHERE {MINE} AND m.role = 'user' ORDER BY m.id DESC LIMIT 1
) lu ON true
LEFT JOIN LATERAL (
    SELECT max(m.id) AS id FROM conversation_messages m
    WHERE {MINE} AND m.role = 'assistant' AND m.agent = '{HUMAN}'
) lh ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM conversation_messages m
    WHERE {MINE} AND m.status = 'held' AND m.id > COALESCE(lh.id, 0)
) w ON true
WHERE (%(agent)s::text IS NULL OR (CASE WHEN {LIVE} THEN s.active_agent END) = %(agent)s::text)
  AND (%(channel)s::text IS NULL OR COALESCE(lu.channel, 'web') = %(channel)s::text)
  AND (NOT %(needs_person)s OR w.n > 0)
ORDER BY {ORDER}
LIMIT %(limit)s + 1"""


# The page, and where its walk ended: the last conversation examined and how many were.
INBOX = f"""
WITH page AS ({_page(WALK)}
), edge AS (
    SELECT w.last_message_at AS edge_at, w.device_id AS edge_device, count(*) OVER () AS walked
    FROM {WALK} w ORDER BY w.last_message_at, w.device_id DESC LIMIT 1
)
SELECT page.*, edge.* FROM (SELECT 1) one LEFT JOIN edge ON true LEFT JOIN page ON true
ORDER BY page.last_at DESC, page.device_id
"""

INBOX_WAITING = _page(HELD)

# Delivery changes are seen through the state row the status statement touches
# (app/channels/whatsapp/statuses.py).
CHANGES = "SELECT max(updated_at) AS state FROM conversation_states WHERE tenant_id = %(tenant)s"


@dataclass(frozen=True)
class Page:
    """One page of the inbox: its conversations (rows of _page's columns) and the cursor of the next, or None."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class InboxStore:
    """The inbox's statements, as coroutines; every method takes the caller's tenant first."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def conversations(
        self,
        tenant: str,
        *,
        limit: int = 50,
        needs_person: bool = False,
        agent: str | None = None,
        channel: str | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Up to limit conversations after cursor (None: from the newest), newest message first; filters ANDed.

        One statement. Raises InvalidCursor (nothing read) for a cursor that is not one this
        tenant got with these filters, InvalidInput for a bad tenant or agent key.
        """
        tenant = validation.tenant_id(tenant)
        filters = Filters(needs_person, None if agent is None else validation.agent_key(agent), channel)
        after = None if cursor is None else decode(tenant, filters, cursor)
        scanning = not needs_person and (agent is not None or channel is not None)
        params = {
            "tenant": tenant,
            "limit": limit,
            "scan": max(SCAN_ROWS, limit + 1) if scanning else limit + 1,
            "needs_person": needs_person,
            "agent": filters.agent,
            "channel": channel,
            "at": None if after is None else after.at,
            "device": None if after is None else after.device,
        }
        sql = INBOX_WAITING if needs_person else INBOX
        rows = [dict(r) for r in await arun(self.engine, sql, params, rows="all", read_only=True)]
        items = [r for r in rows if r["device_id"] is not None]
        end: Position | None = None
        if len(items) > limit:
            items = items[:limit]
            end = Position(items[-1]["last_at"], items[-1]["device_id"])
        elif rows and rows[0].get("walked") == params["scan"]:
            # The walk stopped at its bound, not at the end: go on from the last one it examined.
            end = Position(rows[0]["edge_at"], rows[0]["edge_device"])
        return Page(items, None if end is None else encode(tenant, filters, end))

    async def changes(self, tenant: str) -> str:
        """An opaque token that differs whenever something the inbox shows may have changed."""
        row = await arun(self.engine, CHANGES, {"tenant": validation.tenant_id(tenant)}, read_only=True)
        return row["state"].isoformat() if row["state"] else ""
