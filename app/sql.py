"""SQL fragments shared by the statement modules, as functions of the table alias."""

from __future__ import annotations

from typing import Literal, get_args

from app.agents import HUMAN


def live(alias: str) -> str:
    """True when a conversation_states row holds a lock that has not expired (judged by the database clock)."""
    return f"({alias}.active_agent IS NOT NULL AND {alias}.expires_at > now())"


def fresh_context(alias: str) -> str:
    """The context of a new session: empty but for the user's preferences, which outlive sessions."""
    return f"jsonb_build_object('user_preferences', COALESCE({alias}.context -> 'user_preferences', '{{}}'))"


def known_device() -> str:
    """True while any row of the device %(tenant)s / %(device)s is left: its state, a message or an audit row."""
    return """(EXISTS (SELECT 1 FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s)
    OR EXISTS (SELECT 1 FROM conversation_messages WHERE tenant_id = %(tenant)s AND device_id = %(device)s)
    OR EXISTS (SELECT 1 FROM conversation_audit WHERE tenant_id = %(tenant)s AND device_id = %(device)s))"""


def live_agent(alias: str) -> str:
    """The agent holding a live lock on a conversation_states row, else NULL."""
    return f"CASE WHEN {live(alias)} THEN {alias}.active_agent END"


def live_until(alias: str) -> str:
    """The live lock's expiry on a conversation_states row, else NULL."""
    return f"CASE WHEN {live(alias)} THEN {alias}.expires_at END"


def human_lock(alias: str) -> str:
    """True when a person holds a live lock on a conversation_states row (operator takeover)."""
    return f"COALESCE({alias}.active_agent = '{HUMAN}' AND {alias}.expires_at > now(), false)"


def message_stored(alias: str) -> str:
    """A conversation_states row's last_message_at once a message is stored (or a session starts) now:
    moved forward, never back (the inbox's order, app/admin/inbox.py)."""
    return f"GREATEST({alias}.last_message_at, now())"


def lease_free(alias: str) -> str:
    """True when no worker holds the device's lease."""
    return f"({alias}.lease_expires_at IS NULL OR {alias}.lease_expires_at <= now())"


def turn_history(before: str, session: str) -> str:
    """The session's exchanges before inbound message `before`, oldest first, as a jsonb array.

    A reply sorts with the inbound message it answers (COALESCE(reply_to, id)), so a
    reply stored after later messages arrived still comes before them. At most
    %(history)s items; the conversation_messages_turn index serves the order.
    """
    return f"""(SELECT COALESCE(jsonb_agg(jsonb_build_object(
                    'id', h.id, 'role', h.role, 'content', h.content, 'agent', h.agent, 'created_at', h.created_at,
                    'stopped', h.stopped
                ) ORDER BY h.turn, h.id), '[]'::jsonb)
         FROM (SELECT id, COALESCE(reply_to, id) AS turn, role, content, agent, created_at,
                      COALESCE((metadata ->> 'stopped')::boolean, false) AS stopped
               FROM conversation_messages
               WHERE tenant_id = %(tenant)s AND device_id = %(device)s
                 AND COALESCE(reply_to, id) < {before} AND session_id = {session}
               ORDER BY COALESCE(reply_to, id) DESC, id DESC
               LIMIT %(history)s) h)"""


# The delivery states the API shows (README, "Delivery states"); stored 'pending' reads as 'retry'.
DeliveryState = Literal["queued", "retry", "sent", "delivered", "read", "failed", "outside_window"]
DELIVERY_STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)


def delivery_state(alias: str) -> str:
    """A message's delivery as the API shows it: a WhatsApp reply's state (DELIVERY_STATES), else NULL.

    Stored NULL (not tried yet) reads "queued", stored 'pending' (refused for now, the
    cleanup run retries it) reads "retry"; the others read as stored.
    """
    return f"""CASE WHEN {alias}.role = 'assistant' AND ({alias}.metadata ->> 'channel') = 'whatsapp'
        THEN CASE COALESCE({alias}.delivery, 'queued') WHEN 'pending' THEN 'retry'
                  ELSE COALESCE({alias}.delivery, 'queued') END END"""
