"""Sending stored replies: exactly once per accepted reply, in order per device, inside the window.

| statement | guarantee |
| --- | --- |
| CLAIM_NEXT | the device's oldest unsent reply gets a send marker (send_epoch + 1, expiring) in one conditional UPDATE: one sender at a time across retries and instances; a sent reply is never claimed again; outside the 24-hour window it is settled as `outside_window` instead, no send attempted |
| RECORD_SENT | the Graph API's acceptance is final: written whoever holds the marker |
| RECORD_UNSENT | a failure is written only by the marker's holder (fenced by send_epoch), with the backoff of the next try (none when no request went out) |
| DUE_DEVICES | devices with a reply due for another try (backoff over, no live marker), for the cleanup run |
| LAST_INBOUND / INSERT_OUTBOUND | a message to a device outside any turn (operator takeover): stored, then sent like a reply |

Where a send goes is never taken from the reply's own metadata (an agent or an import
may have written it): the business number is the one the device's WhatsApp message
came in on (the reply's inbound, else the device's latest), and only if WHATSAPP_TENANTS
gives it to the reply's tenant; the recipient is the device itself (inbound.recipient_of).

The customer-service window (Meta: "Customer service windows") opens with each
message from the user and lasts 24 hours; only templates may be sent outside it.
It is judged by the database clock against the user's own send time (`sent_at`,
else arrival). Statements run with app.core.db.arun on the app's event loop; a
cancelled send still notes its outcome (a shielded RECORD_*). A reply whose send timed out may have been accepted all the same:
the Graph API has no idempotency key, so that one ambiguous case is retried.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from app import telemetry, validation
from app.channels.whatsapp.graph import GraphApi, SendOutcome, message_payload
from app.channels.whatsapp.inbound import CHANNEL, PHONE_NUMBER_ID, business_tenant, recipient_of
from app.core.config import Settings
from app.core.db import arun
from app.core.engine import Engine
from app.errors import StoreError, StoreUnavailable
from app.sql import message_stored

logger = logging.getLogger(__name__)

WINDOW = "interval '24 hours'"
NOT_OURS = "the business number is not this tenant's (WHATSAPP_TENANTS): not sent"
OUTSIDE_WINDOW = "outside the 24-hour customer-service window: not sent (send a template instead)"
INTERRUPTED = "the send was interrupted (shutdown or the end of the request): sent again after the backoff"
RETRY_BASE_SECONDS = 30  # cleanup backoff: 30 s, 60 s, 120 s ... capped at MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 1800
MARKER_MARGIN_SECONDS = 5  # a sender starts no POST this close to its marker's expiry
# A marker outlives its send by far: if the store is down when an accepted send is to be
# noted, the note is retried (RECORD_SECONDS at most) and the reply is not sent again
# before the marker runs out. Only a sender that dies mid-send waits this long for a retry.
MIN_MARKER_SECONDS = 600
RECORD_SECONDS = 30

UNSENT = "(r.delivery IS NULL OR r.delivery = 'pending')"
OURS = f"r.role = 'assistant' AND (r.metadata ->> 'channel') = '{CHANNEL}' AND {UNSENT}"


def _last_inbound(alias: str) -> str:
    """The user's latest WhatsApp message time on the device of row alias (sender's time, else arrival)."""
    return f"""(SELECT max(COALESCE(u.sent_at, u.created_at)) FROM conversation_messages u
        WHERE u.tenant_id = {alias}.tenant_id AND u.device_id = {alias}.device_id AND u.role = 'user'
          AND (u.metadata ->> 'channel') = '{CHANNEL}')"""


# The device is named directly, or by one of its replies. Only the oldest unsent reply
# may be claimed (replies go out in order); a live marker or, for the cleanup, a
# backoff not yet over leaves it alone and the caller stops.
CLAIM_NEXT = f"""
WITH dev AS (
    SELECT %(tenant)s::text AS tenant_id, %(device)s::text AS device_id WHERE %(reply_id)s::bigint IS NULL
    UNION ALL
    SELECT tenant_id, device_id FROM conversation_messages WHERE id = %(reply_id)s::bigint
), cand AS (
    SELECT r.id, COALESCE({_last_inbound("r")} > now() - {WINDOW}, false)
                 OR jsonb_typeof(r.metadata -> 'template') = 'object' AS sendable
    FROM conversation_messages r JOIN dev USING (tenant_id, device_id)
    WHERE {OURS}
    ORDER BY r.id LIMIT 1
), claimed AS (
    UPDATE conversation_messages r SET
        send_epoch = r.send_epoch + 1,
        send_expires_at = CASE WHEN c.sendable THEN now() + make_interval(secs => %(hold)s) END,
        send_attempts = r.send_attempts + CASE WHEN c.sendable THEN 1 ELSE 0 END,
        delivery = CASE WHEN c.sendable THEN r.delivery ELSE 'outside_window' END,
        has_error = CASE WHEN c.sendable THEN r.has_error ELSE true END,
        error_message = CASE WHEN c.sendable THEN r.error_message ELSE '{OUTSIDE_WINDOW}' END,
        metadata = CASE WHEN c.sendable THEN r.metadata ELSE r.metadata || '{{"delivered": false}}' END
    FROM cand c
    WHERE r.id = c.id AND {OURS}
      AND (r.send_expires_at IS NULL OR r.send_expires_at <= now())
      AND (NOT %(due_only)s OR r.next_send_at IS NULL OR r.next_send_at <= now())
    RETURNING r.id, r.tenant_id, r.device_id, r.reply_to, r.content, r.metadata, r.send_epoch, c.sendable
)
SELECT claimed.*, u.metadata AS inbound_metadata
FROM claimed LEFT JOIN LATERAL (
    -- The message answered when it is one of the device's WhatsApp messages, else the latest of them.
    SELECT u.metadata FROM conversation_messages u
    WHERE u.tenant_id = claimed.tenant_id AND u.device_id = claimed.device_id AND u.role = 'user'
      AND (u.metadata ->> 'channel') = '{CHANNEL}'
    ORDER BY u.id IS NOT DISTINCT FROM claimed.reply_to DESC, u.id DESC LIMIT 1
) u ON true
"""

RECORD_SENT = """
UPDATE conversation_messages SET delivery = 'sent', delivered_at = now(), send_expires_at = NULL, next_send_at = NULL,
    has_error = false, error_message = NULL,
    metadata = metadata || jsonb_build_object('delivered', true, 'wa_reply_id', %(wa_id)s::text)
WHERE id = %(id)s
"""

RECORD_UNSENT = f"""
UPDATE conversation_messages r SET delivery = %(delivery)s, send_expires_at = NULL, has_error = true,
    error_message = %(error)s::text, metadata = r.metadata || '{{"delivered": false}}',
    next_send_at = CASE WHEN %(delivery)s = 'pending' AND %(attempted)s THEN now() + make_interval(
        secs => LEAST({MAX_RETRY_SECONDS}, {RETRY_BASE_SECONDS} * power(2, GREATEST(r.send_attempts - 1, 0)))) END
WHERE r.id = %(id)s AND r.send_epoch = %(epoch)s AND r.delivery IS DISTINCT FROM 'sent'
"""

DUE_DEVICES = f"""
SELECT DISTINCT r.tenant_id, r.device_id FROM conversation_messages r
WHERE {OURS} AND (r.next_send_at IS NULL OR r.next_send_at <= now())
  AND (r.send_expires_at IS NULL OR r.send_expires_at <= now())
LIMIT %(limit)s
"""

LAST_INBOUND = f"""
SELECT u.metadata FROM conversation_messages u
WHERE u.tenant_id = %(tenant)s AND u.device_id = %(device)s AND u.role = 'user' AND (u.metadata ->> 'channel') = '{CHANNEL}'
ORDER BY u.id DESC LIMIT 1
"""

# The state row's last_message_at (the inbox's order, app/admin/inbox.py) moves with the message it stores.
INSERT_OUTBOUND = f"""
WITH st AS (
    UPDATE conversation_states s SET last_message_at = {message_stored("s")},
        version = s.version + 1, updated_at = now()
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s
    RETURNING s.session_id
)
INSERT INTO conversation_messages (tenant_id, device_id, role, content, agent, metadata, session_id)
SELECT %(tenant)s, %(device)s, 'assistant', %(content)s, %(agent)s, %(metadata)s::jsonb, (SELECT session_id FROM st)
RETURNING id
"""

# Copied onto an outbound-only message for the record; its send reads the device's inbound instead.
ADDRESS_KEYS = ("phone_number_id", "to", "recipient", "wa_message_id")


def marker_hold(settings: Settings) -> float:
    """Seconds a send marker lives: at least every attempt's timeout, the backoffs between them, a margin."""
    send = settings.whatsapp_timeout_seconds * settings.whatsapp_send_attempts + 2 * MARKER_MARGIN_SECONDS
    return max(send, MIN_MARKER_SECONDS)


@dataclass(frozen=True)
class Delivered:
    """One reply's fate in a flush."""

    reply_id: int
    status: Literal["sent", "retry", "failed", "outside_window"]
    error: str | None = None


class Outbox:
    """Claims, sends and records the WhatsApp replies stored in conversation_messages."""

    def __init__(self, engine: Engine, graph: GraphApi):
        self.engine = engine
        self.graph = graph
        self.hold = marker_hold(graph.settings)

    async def flush(
        self,
        *,
        reply_id: int | None = None,
        tenant: str | None = None,
        device: str | None = None,
        deadline: Callable[[], float],
        due_only: bool = False,
    ) -> list[Delivered]:
        """Send a device's unsent replies oldest first, until one is not accepted (order is kept).

        The device is named, or given by one of its replies. deadline() is the latest
        time.monotonic() a send may run to. due_only (the cleanup): skip replies still in backoff.
        """
        done: list[Delivered] = []
        while True:
            row = await arun(
                self.engine,
                CLAIM_NEXT,
                {
                    "reply_id": reply_id,
                    "tenant": tenant,
                    "device": device,
                    "hold": self.hold,
                    "due_only": due_only,
                },
            )
            if row is None:
                return done
            claimed_at = time.monotonic()
            if not row["sendable"]:
                logger.warning("whatsapp reply %s not sent: outside the customer-service window", row["id"])
                done.append(Delivered(row["id"], "outside_window", OUTSIDE_WINDOW))
                continue
            limit = min(deadline(), claimed_at + self.hold - 2 * MARKER_MARGIN_SECONDS)
            try:
                result = await self._send(row, limit)
            except anyio.get_cancelled_exc_class():
                # Cut short (shutdown, a serverless request's end): the POST may have gone out,
                # as after a timeout, so the reply is due again after its backoff rather than
                # held by its marker for MIN_MARKER_SECONDS.
                await self._record(row["id"], row["send_epoch"], SendOutcome("retry", INTERRUPTED, attempts=1))
                raise
            await self._record(row["id"], row["send_epoch"], result)
            done.append(Delivered(row["id"], result.status, result.error))
            if result.status != "sent":
                return done

    async def _send(self, row: Any, deadline: float) -> SendOutcome:
        own, inbound = row["metadata"] or {}, row["inbound_metadata"] or {}
        phone_number_id = str(inbound.get("phone_number_id") or "")
        if not PHONE_NUMBER_ID.fullmatch(phone_number_id):
            return SendOutcome("failed", "no WhatsApp message of this device names a business number")
        if business_tenant(self.graph.settings.whatsapp_tenants, phone_number_id) != row["tenant_id"]:
            logger.error("whatsapp reply %s not sent: its business number is not its tenant's", row["id"])
            return SendOutcome("failed", NOT_OURS)
        address = recipient_of(row["device_id"], inbound)
        template = own.get("template") if isinstance(own.get("template"), dict) else None
        listed = own.get("choices")
        choices = listed if isinstance(listed, list) else []
        payload = message_payload(address, row["content"], [c for c in choices if isinstance(c, dict)], template)
        return await self.graph.send(phone_number_id, payload, deadline=deadline)

    async def _record(self, reply_id: int, epoch: int, result: SendOutcome) -> None:
        """Note the outcome; while the store is unavailable, retried for RECORD_SECONDS.

        Not cut short by the send's deadline: a note lost to a short outage would hold the
        reply's marker (and the device's later replies behind it) for MIN_MARKER_SECONDS.
        """
        if result.status != "sent":
            logger.error("whatsapp reply %s not delivered (%s): %s", reply_id, result.status, result.error)
        if result.status == "sent":
            sql, params = RECORD_SENT, {"id": reply_id, "wa_id": result.message_id}
        else:
            delivery = "pending" if result.status == "retry" else result.status
            sql, params = (
                RECORD_UNSENT,
                {
                    "id": reply_id,
                    "epoch": epoch,
                    "delivery": delivery,
                    "error": result.error,
                    "attempted": result.attempts > 0,
                },
            )
        until = time.monotonic() + RECORD_SECONDS
        retrying = AsyncRetrying(
            stop=lambda state: time.monotonic() >= until,
            wait=wait_exponential(multiplier=0.1, max=1),
            retry=retry_if_exception_type(StoreUnavailable),
            reraise=True,
        )
        try:
            # Shielded: a cancelled turn (shutdown, the request's budget on a serverless
            # platform) still notes a send the Graph API accepted, so it never goes twice.
            with anyio.CancelScope(shield=True):
                await retrying(arun, self.engine, sql, params)
        except StoreError as err:
            # A sent reply whose note is lost stays claimed until its marker expires
            # (MIN_MARKER_SECONDS), then may go again: the one gap a long outage leaves.
            logger.error("could not record the delivery of whatsapp reply %s (%s): %s", reply_id, result.status, err)

    async def send_due(self, *, deadline: float, limit: int = 100) -> int:
        """Send the replies whose backoff is over (the cleanup run), device by device; returns how many went.

        deadline: time.monotonic() by which to stop (no send runs past it).
        """
        sent = 0
        rows = await arun(self.engine, DUE_DEVICES, {"limit": limit}, rows="all")
        telemetry.outbox_backlog(len(rows))
        for row in rows:
            if time.monotonic() >= deadline:
                break
            done = await self.flush(
                tenant=row["tenant_id"], device=row["device_id"], deadline=lambda: deadline, due_only=True
            )
            sent += sum(1 for d in done if d.status == "sent")
        return sent


@dataclass(frozen=True)
class SendResult:
    """What became of a message sent to a device outside a turn.

    status: "sent", "retry" (stored, not accepted yet: the cleanup run sends it),
    "failed" (refused for good), "outside_window" (no send attempted: send a template),
    "unknown_device" (no WhatsApp message from this device to reply to).
    """

    status: Literal["sent", "retry", "failed", "outside_window", "unknown_device"]
    message_id: int | None = None
    error: str | None = None


async def send_to_device(
    outbox: Outbox,
    tenant: str,
    device: str,
    *,
    text: str,
    template: dict[str, Any] | None = None,
    agent: str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the Graph call's HTTP timeout, passed to httpx
) -> SendResult:
    """Store a message to a WhatsApp device and send it (text, or a template), honouring the window.

    For the operator takeover: the message joins the device's history as an
    assistant message (agent, e.g. "operator"), goes to the device itself from the
    business number of the user's last message (only if it is the tenant's: else
    "failed"), and is sent after any earlier unsent reply. Raises InvalidInput
    for a bad tenant or device and StoreUnavailable when the store is down.
    """
    tenant, device = validation.tenant_id(tenant), validation.device_id(device)
    validation.message_text(text)
    last = await arun(outbox.engine, LAST_INBOUND, {"tenant": tenant, "device": device})
    if last is None:
        return SendResult("unknown_device", error="no WhatsApp message from this device")
    metadata = {key: last["metadata"][key] for key in ADDRESS_KEYS if key in last["metadata"]}
    metadata["channel"] = CHANNEL
    if template is not None:
        metadata["template"] = template
    validation.storable_json(metadata)
    row = await arun(
        outbox.engine,
        INSERT_OUTBOUND,
        {
            "tenant": tenant,
            "device": device,
            "content": text,
            "agent": agent,
            "metadata": json.dumps(metadata),
        },
    )
    bound = time.monotonic() + (timeout or outbox.hold)
    for delivered in await outbox.flush(reply_id=row["id"], deadline=lambda: bound):
        if delivered.reply_id == row["id"]:
            return SendResult(delivered.status, row["id"], delivered.error)
    return SendResult("retry", row["id"], "queued behind an earlier reply that was not accepted yet")
