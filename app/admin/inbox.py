"""The operator inbox: a tenant's conversations as people work them, and a cheap "has anything changed" token.

| statement | guarantee |
| --- | --- |
| INBOX | one tenant's conversations, newest message first, one row each, with channel, display name or label, the last message, the live lock and the held messages still waiting for a person; filters applied in SQL; one statement |
| CHANGES | one value: the tenant's latest state change (index conversation_states_tenant_updated); every stored message, turn, lock change, takeover, operator reply and status callback writes the state row's updated_at; read by each open event stream at most once a second |

A held message waits for a person until an operator reply is stored after it (the
same rule as the release, app/admin/takeover.py). The channel is the one of the
conversation's latest inbound message (web when it has none). The display name is the
stored WhatsApp profile name (only with the tenant's consent, WHATSAPP_PROFILE_NAME_TENANTS),
else a short label stable for the device ("Visitor 3F2A", "WhatsApp 91C0").
"""

from __future__ import annotations

from typing import Any

from app import validation
from app.agents import HUMAN
from app.core.db import arun
from app.core.engine import Engine
from app.sql import delivery_state, live

PREVIEW_CHARS = 140
LIVE = live("s")
MINE = "m.tenant_id = s.tenant_id AND m.device_id = s.device_id"

INBOX = f"""
WITH conv AS (
    SELECT s.device_id, s.display_name,
           CASE WHEN {LIVE} THEN s.active_agent END AS agent,
           CASE WHEN {LIVE} THEN s.expires_at END AS expires_at,
           CASE WHEN {LIVE} AND s.active_agent = '{HUMAN}' THEN s.operator END AS operator,
           COALESCE(lu.channel, 'web') AS channel,
           lm.id AS last_id, lm.role AS last_role, lm.agent AS last_agent, lm.delivery AS last_delivery,
           left(lm.content, {PREVIEW_CHARS}) AS last_preview,
           GREATEST(s.last_activity_at, lm.created_at) AS last_at,
           (SELECT count(*) FROM conversation_messages m
            WHERE {MINE} AND m.status = 'held' AND m.id > COALESCE(lh.id, 0)) AS waiting
    FROM conversation_states s
    LEFT JOIN LATERAL (
        SELECT m.id, m.role, m.agent, m.content, m.created_at, {delivery_state("m")} AS delivery
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
    WHERE s.tenant_id = %(tenant)s
)
SELECT conv.*,
       COALESCE(conv.display_name,
                CASE WHEN conv.channel = 'whatsapp' THEN 'WhatsApp ' ELSE 'Visitor ' END
                || upper(left(md5(%(tenant)s || '/' || conv.device_id), 4))) AS name,
       conv.display_name IS NOT NULL AS named
FROM conv
WHERE (NOT %(needs_person)s OR conv.waiting > 0)
  AND (%(agent)s::text IS NULL OR conv.agent = %(agent)s::text)
  AND (%(channel)s::text IS NULL OR conv.channel = %(channel)s::text)
ORDER BY conv.last_at DESC, conv.device_id
LIMIT %(limit)s
"""

# Delivery changes are seen through the state row the status statement touches
# (app/channels/whatsapp/statuses.py).
CHANGES = "SELECT max(updated_at) AS state FROM conversation_states WHERE tenant_id = %(tenant)s"


class InboxStore:
    """The inbox's two statements, as coroutines; every method takes the caller's tenant first."""

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
    ) -> list[dict[str, Any]]:
        """Up to limit conversations, newest message first; the filters are ANDed."""
        params = {
            "tenant": validation.tenant_id(tenant),
            "limit": limit,
            "needs_person": needs_person,
            "agent": None if agent is None else validation.agent_key(agent),
            "channel": channel,
        }
        return [dict(row) for row in await arun(self.engine, INBOX, params, rows="all", read_only=True)]

    async def changes(self, tenant: str) -> str:
        """An opaque token that differs whenever something the inbox shows may have changed."""
        row = await arun(self.engine, CHANGES, {"tenant": validation.tenant_id(tenant)}, read_only=True)
        return row["state"].isoformat() if row["state"] else ""
