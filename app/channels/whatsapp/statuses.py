"""Status callbacks of a webhook delivery: what became of the replies the Graph API accepted.

Meta reports each accepted message's fate in `entry[].changes[].value.statuses[]`
(Meta's "Webhooks: messages", status objects): `sent`, `delivered`, `read`, or
`failed` with `errors[]`. The reply is found by the id the Graph API gave it when it
accepted the send (`metadata.wa_reply_id`, app/channels/whatsapp/outbox.py), within
the tenant of the business number the callback came for (WHATSAPP_TENANTS).

The same delivery's `contacts[].profile.name` is kept as the conversation's display
name, only for tenants listed in WHATSAPP_PROFILE_NAME_TENANTS (their consent; none by
default), and only on a conversation that exists.

| statement | guarantee |
| --- | --- |
| RECORD_STATUSES | one statement per delivery, whatever its number of callbacks (it also touches the conversation's updated_at); a state only moves forward (sent < delivered < read; failed after sent or delivered): a late or replayed `sent` never overwrites `delivered` or `read`, and a repeated callback changes nothing; only replies of the callback's own tenant |
| RECORD_NAMES | one statement per delivery; only existing conversations of consenting tenants; a name is 1-100 characters |

Both are written by the webhook after the delivery's messages are stored (its call
site); `record` is the sync entry, `arecord` the coroutine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.channels.whatsapp.inbound import PHONE_NUMBER_ID, business_tenant
from app.core.config import Settings
from app.core.db import arun

logger = logging.getLogger(__name__)

STATES = ("sent", "delivered", "read", "failed")
MAX_NAME = 100
MAX_REASON = 500


def _rank(value: str) -> str:
    """How far a delivery state is along: NULL/pending 0, sent 1, delivered 2, read and failed 3."""
    return f"CASE {value} WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'failed' THEN 3 ELSE 0 END"


# DISTINCT ON keeps the furthest state of each reply named in the batch, so one UPDATE
# touches each row once. The rank fence makes the order callbacks arrive in irrelevant.
RECORD_STATUSES = f"""
WITH cb AS (
    SELECT DISTINCT ON (c.tenant, c.wa_id) c.tenant, c.wa_id, c.state, c.reason
    FROM unnest(%(tenants)s::text[], %(ids)s::text[], %(states)s::text[], %(reasons)s::text[])
         AS c(tenant, wa_id, state, reason)
    ORDER BY c.tenant, c.wa_id, {_rank("c.state")} DESC, c.state = 'failed' DESC
), changed AS (
    UPDATE conversation_messages m SET
        delivery = cb.state,
        has_error = cb.state = 'failed',
        error_message = CASE WHEN cb.state = 'failed' THEN cb.reason END,
        metadata = m.metadata || jsonb_build_object('delivered', cb.state <> 'failed')
    FROM cb
    WHERE m.tenant_id = cb.tenant AND (m.metadata ->> 'wa_reply_id') = cb.wa_id AND m.role = 'assistant'
      AND {_rank("cb.state")} > {_rank("m.delivery")}
    RETURNING m.tenant_id, m.device_id
), touched AS (
    -- The conversation changed: the operator inbox's event streams watch updated_at (app/admin/inbox.py).
    UPDATE conversation_states s SET updated_at = now()
    FROM (SELECT DISTINCT tenant_id, device_id FROM changed) c
    WHERE s.tenant_id = c.tenant_id AND s.device_id = c.device_id
)
SELECT tenant_id, device_id FROM changed
"""

RECORD_NAMES = """
UPDATE conversation_states s SET display_name = n.name, updated_at = now()
FROM unnest(%(tenants)s::text[], %(devices)s::text[], %(names)s::text[]) AS n(tenant, device, name)
WHERE s.tenant_id = n.tenant AND s.device_id = n.device AND s.display_name IS DISTINCT FROM n.name
RETURNING s.tenant_id, s.device_id
"""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Error(_Lenient):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None


class _Status(_Lenient):
    id: str = Field(min_length=1, max_length=512)
    status: str
    errors: list[_Error] = []


class _Profile(_Lenient):
    name: str | None = None


class _Contact(_Lenient):
    wa_id: str | None = None
    user_id: str | None = None
    profile: _Profile | None = None


@dataclass(frozen=True)
class Callback:
    """One status callback: the reply's Graph API id, its new state, why it failed."""

    tenant: str
    wa_id: str
    state: str
    reason: str | None = None


@dataclass(frozen=True)
class Name:
    tenant: str
    device: str
    name: str


def _reason(errors: list[_Error]) -> str:
    if not errors:
        return "failed (no reason given)"
    first = errors[0]
    detail = (first.error_data or {}).get("details")
    words = [str(part) for part in (first.code, first.title or first.message, detail) if part]
    return (" - ".join(words) or "failed")[:MAX_REASON]


def _clean_name(value: str | None) -> str | None:
    if not value:
        return None
    name = " ".join("".join(c for c in value if c.isprintable() and c != "\x00").split())[:MAX_NAME]
    return name or None


def _changes(payload: Any):
    """(tenant-less value dict, phone_number_id) of each change that fits; others are skipped."""
    if not isinstance(payload, dict):
        return
    for entry in payload.get("entry") or ():
        for change in (entry.get("changes") or ()) if isinstance(entry, dict) else ():
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(number, str) and PHONE_NUMBER_ID.fullmatch(number):
                yield value, number


def parse(payload: Any, settings: Settings) -> tuple[list[Callback], list[Name]]:
    """The status callbacks and the consented profile names of one delivery; malformed items are skipped."""
    callbacks, names = [], []
    consenting = set(settings.whatsapp_profile_name_tenants)
    for value, number in _changes(payload):
        tenant = business_tenant(settings.whatsapp_tenants, number)
        for raw in value.get("statuses") or ():
            try:
                status = _Status.model_validate(raw)
            except ValidationError:
                logger.warning("a malformed whatsapp status callback was skipped")
                continue
            if status.status in STATES:
                reason = _reason(status.errors) if status.status == "failed" else None
                callbacks.append(Callback(tenant, status.id, status.status, reason))
        if tenant not in consenting:
            continue
        for raw in value.get("contacts") or ():
            try:
                contact = _Contact.model_validate(raw)
            except ValidationError:
                continue
            name = _clean_name(contact.profile.name if contact.profile else None)
            for device in {ident for ident in (contact.user_id, contact.wa_id) if ident}:  # neither None nor ""
                if name and len(device) <= 128:
                    names.append(Name(tenant, device, name))
    return callbacks, names


def _status_params(callbacks: list[Callback]) -> dict[str, list]:
    return {
        "tenants": [c.tenant for c in callbacks],
        "ids": [c.wa_id for c in callbacks],
        "states": [c.state for c in callbacks],
        "reasons": [c.reason for c in callbacks],
    }


def _name_params(names: list[Name]) -> dict[str, list]:
    return {
        "tenants": [n.tenant for n in names],
        "devices": [n.device for n in names],
        "names": [n.name for n in names],
    }


async def arecord(engine: Any, settings: Settings, payload: Any) -> list[tuple[str, str]]:
    """Write one delivery's status callbacks and consented names (at most one statement each).

    Returns the (tenant, device) pairs whose rows changed. StoreUnavailable / StoreError propagate.
    """
    callbacks, names = parse(payload, settings)
    changed: list[tuple[str, str]] = []
    if callbacks:
        rows = await arun(engine, RECORD_STATUSES, _status_params(callbacks), rows="all")
        logger.info("whatsapp status callbacks: %s received, %s recorded", len(callbacks), len(rows))
        changed += [(r["tenant_id"], r["device_id"]) for r in rows]
    if names:
        rows = await arun(engine, RECORD_NAMES, _name_params(names), rows="all")
        changed += [(r["tenant_id"], r["device_id"]) for r in rows]
    return changed
