"""Export of one device's sessions as a self-describing JSON document, and its import into a tenant.

The document carries the state (context, lock and session fields), the messages
and the audit trail. Import re-assigns message ids (keeping their order) and maps
reply links and audit message ids from old to new; it writes everything in one
transaction or nothing.

Import drops channel routing metadata (a channel other than "web", the WhatsApp
business number, phone, BSUID and message id: app.channels.whatsapp.inbound.ROUTING_KEYS)
and counts the messages it dropped them from: a document is client data, and nothing a
client sends may decide where an outbound message goes. An imported WhatsApp device is
a plain device until its user writes again through the webhook.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from app import validation
from app.channels.whatsapp.inbound import ROUTING_KEYS
from app.core.config import MAX_TTL_SECONDS
from app.core.db import run, store_errors
from app.core.engine import Engine
from app.devices import canonical_device_id
from app.errors import ImportConflict
from app.sql import delivery_state, known_device
from app.validation import ID_SCHEMA, MAX_ID

logger = logging.getLogger(__name__)

KIND = "agent-sessions.export"
FORMAT_VERSION = 1
INT32 = 2**31 - 1


# Validation context of an import: its device id must also be one the routes can address.
IMPORTING = {"import": True}


def _device_id(value: str, info: ValidationInfo) -> str:
    # Stored as every route reads it (a UUID in any spelling: its lowercase form), so the
    # duplicate check sees the device the tenant already has, and the routes find the copy.
    # An export names a device a route just found, so only an import is checked for that.
    check = validation.addressable_device_id if (info.context or {}).get("import") else validation.device_id
    return canonical_device_id(check(value))


def _session_id(value: str) -> str:
    if not all(c.isprintable() and not c.isspace() for c in value):
        raise ValueError("session id must be printable characters without whitespace")
    return value


def _utc(value: datetime) -> datetime:
    # Stored in UTC: PostgreSQL refuses offsets beyond 15:59, and a time just
    # outside years 1-9999 in UTC could be stored but never read back into Python.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range (years 1-9999 in UTC)") from None


# Text without NUL: documented in the schema as ID_SCHEMA documents ids (app/validation.py).
TEXT_SCHEMA = {"pattern": r"^[^\u0000]*$"}

AgentKey = Annotated[
    str, Field(max_length=50, pattern=r"^[a-z][a-z0-9_-]{0,49}$"), AfterValidator(validation.agent_key)
]
DeviceId = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA), AfterValidator(_device_id)]
SessionId = Annotated[
    str, Field(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA), AfterValidator(_session_id)
]
Text = Annotated[str, Field(json_schema_extra=TEXT_SCHEMA)]
MessageId = Annotated[int, Field(ge=1, le=MAX_ID)]
Millis = Annotated[int, Field(ge=0, le=INT32)]
Time = Annotated[AwareDatetime, AfterValidator(_utc)]


Delivery = Literal["queued", "retry", "sent", "delivered", "read", "failed", "outside_window"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExportedContext(Strict):
    conversation_state: dict[str, Any] = Field(default_factory=dict)
    user_preferences: dict[str, Any] = Field(default_factory=dict)
    interrupted_queries: list[Any] = Field(default_factory=list)
    recent_interactions: list[Any] = Field(default_factory=list)


class ExportedLock(Strict):
    """The lock as stored: it may have expired since the export (then reads ignore it)."""

    agent: AgentKey
    locked_at: Time | None
    expires_at: Time


class ExportedState(Strict):
    session_id: SessionId | None
    session_started_at: Time | None
    last_activity_at: Time
    lock: ExportedLock | None
    session_ttl: int = Field(ge=1, le=MAX_TTL_SECONDS)
    context: ExportedContext
    version: int = Field(ge=0, le=MAX_ID)
    created_at: Time
    updated_at: Time


class _Message(Strict):
    id: MessageId = Field(description="unique in the document; import assigns new ids in the same order")
    content: Text
    agent: AgentKey | None
    external_id: Text | None = Field(min_length=1, max_length=512, description="the channel's id; unique")
    reply_to: MessageId | None = Field(description="id of another message of the document")
    tools_used: list[Any]
    processing_time_ms: Millis | None
    has_error: bool
    error_message: Text | None
    metadata: dict[str, Any]
    created_at: Time
    sent_at: Time | None = Field(None, description="the channel's own send time, UTC; absent in older documents")
    session_id: SessionId | None


class UserMessage(_Message):
    role: Literal["user"]
    status: Literal["pending", "done", "failed", "held"]
    merged_into: MessageId | None = Field(
        None, description="the last message of the merged burst this one was answered with (BURST_MODE=merge)"
    )
    request_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the request its idempotency key was first used with"
    )


class OtherMessage(_Message):
    role: Literal["assistant", "system"]
    status: None
    delivery: Delivery | None = Field(
        None,
        description="a WhatsApp reply's delivery state when exported (README, Delivery states); "
        "informational: import ignores it",
    )


ExportedMessage = Annotated[UserMessage | OtherMessage, Field(discriminator="role")]


class ExportedAudit(Strict):
    event: Literal["set", "refresh", "release", "handoff", "expired", "override", "takeover"]
    at: Time
    from_agent: AgentKey | None
    to_agent: AgentKey | None
    session_id: SessionId | None
    message_id: MessageId | None
    db_ms: Millis | None
    agent_ms: Millis | None
    total_ms: Millis | None


def check_readable(data: Any) -> None:
    """ValueError for a newer format_version or unstorable JSON (NUL, NaN...) anywhere in a document (a dict).

    ExportDocument checks it before any field, so a newer document is refused for its version, not for whatever
    field it changed. Anything but a dict passes (the model refuses it).
    """
    if isinstance(data, dict):
        version = data.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {version} is newer than this server reads ({FORMAT_VERSION}); upgrade to import it"
            )
        validation.storable_json(data)


class ExportDocument(Strict):
    """Format version 1 of an export; import refuses newer versions and unknown keys."""

    kind: Literal["agent-sessions.export"]
    format_version: Literal[1]
    exported_at: Time | None = None
    tenant_id: Text | None = Field(None, max_length=128, description="informational; import ignores it")
    device_id: DeviceId
    state: ExportedState | None
    messages: list[ExportedMessage]
    audit: list[ExportedAudit]

    @model_validator(mode="before")
    @classmethod
    def readable(cls, data: Any) -> Any:
        """check_readable, before any field is validated."""
        check_readable(data)
        return data

    @model_validator(mode="after")
    def _unique(self) -> ExportDocument:
        ids = [m.id for m in self.messages]
        if len(set(ids)) != len(ids):
            raise ValueError("message ids must be unique")
        external = [m.external_id for m in self.messages if m.external_id is not None]
        if len(set(external)) != len(external):
            raise ValueError("message external_ids must be unique")
        return self


EXPORT = f"""
SELECT
    (SELECT to_jsonb(x) FROM (
        SELECT session_id, session_started_at, last_activity_at,
               CASE WHEN active_agent IS NOT NULL THEN jsonb_build_object(
                   'agent', active_agent, 'locked_at', locked_at, 'expires_at', expires_at) END AS lock,
               session_ttl, context, version, created_at, updated_at
        FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s) x) AS state,
    -- merged_into and request_hash belong to inbound messages only, delivery to the others.
    (SELECT COALESCE(jsonb_agg(to_jsonb(x) - CASE WHEN x.role = 'user' THEN '{{delivery}}'::text[]
                                                  ELSE '{{merged_into,request_hash}}'::text[] END
                               ORDER BY x.id), '[]') FROM (
        SELECT m.id, m.role, m.content, m.agent, m.external_id, m.status, m.reply_to, m.tools_used,
               m.processing_time_ms, m.has_error, m.error_message, m.metadata, m.created_at, m.sent_at, m.session_id,
               m.merged_into, m.request_hash, {delivery_state("m")} AS delivery
        FROM conversation_messages m WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s) x) AS messages,
    (SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY x.id), '[]') FROM (
        SELECT id, event, at, from_agent, to_agent, session_id, message_id, db_ms, agent_ms, total_ms
        FROM conversation_audit WHERE tenant_id = %(tenant)s AND device_id = %(device)s) x) AS audit,
    now() AS exported_at
"""

# Serializes imports of one device, so two of them cannot both find it free.
LOCK_DEVICE = "SELECT pg_advisory_xact_lock(hashtextextended(%(tenant)s || '/' || %(device)s, 7301))"

CLAIM_IDS = f"""
SELECT {known_device()} AS taken,
    ARRAY(SELECT nextval(pg_get_serial_sequence('conversation_messages', 'id'))
          FROM generate_series(1, %(n)s)) AS ids
"""

INSERT = """
WITH st AS (
    INSERT INTO conversation_states
        (tenant_id, device_id, session_id, session_started_at, last_activity_at, active_agent, locked_at,
         expires_at, session_ttl, context, version, created_at, updated_at, last_message_at)
    SELECT %(tenant)s, %(device)s, r.session_id, r.session_started_at, r.last_activity_at, r.lock ->> 'agent',
           (r.lock ->> 'locked_at')::timestamptz, (r.lock ->> 'expires_at')::timestamptz, r.session_ttl, r.context,
           r.version, r.created_at, r.updated_at,
           -- the inbox's order (app/admin/inbox.py): the document's newest message, or its last activity
           GREATEST(r.last_activity_at, (SELECT max((x ->> 'created_at')::timestamptz)
                                         FROM jsonb_array_elements(%(messages)s::jsonb) x))
    FROM jsonb_to_recordset(%(state)s::jsonb) AS r(
        session_id text, session_started_at timestamptz, last_activity_at timestamptz, lock jsonb,
        session_ttl integer, context jsonb, version bigint, created_at timestamptz, updated_at timestamptz)
    RETURNING 1
), msg AS (
    INSERT INTO conversation_messages
        (id, tenant_id, device_id, role, content, agent, external_id, status, reply_to, tools_used,
         processing_time_ms, has_error, error_message, metadata, created_at, sent_at, session_id,
         merged_into, request_hash)
    SELECT r.id, %(tenant)s, %(device)s, r.role, r.content, r.agent, r.external_id, r.status, r.reply_to,
           r.tools_used, r.processing_time_ms, r.has_error, r.error_message, r.metadata, r.created_at, r.sent_at,
           r.session_id, r.merged_into, r.request_hash
    FROM jsonb_to_recordset(%(messages)s::jsonb) AS r(
        id bigint, role text, content text, agent text, external_id text, status text, reply_to bigint,
        tools_used jsonb, processing_time_ms integer, has_error boolean, error_message text, metadata jsonb,
        created_at timestamptz, sent_at timestamptz, session_id text, merged_into bigint, request_hash text)
    RETURNING 1
), aud AS (
    INSERT INTO conversation_audit
        (tenant_id, device_id, session_id, event, from_agent, to_agent, message_id, db_ms, agent_ms, total_ms, at)
    SELECT %(tenant)s, %(device)s, r.session_id, r.event, r.from_agent, r.to_agent, r.message_id,
           r.db_ms, r.agent_ms, r.total_ms, r.at
    FROM jsonb_to_recordset(%(audit)s::jsonb) AS r(
        session_id text, event text, from_agent text, to_agent text, message_id bigint,
        db_ms integer, agent_ms integer, total_ms integer, at timestamptz, n integer)
    ORDER BY r.n  -- new ids follow the order of the document, which is the listing order
    RETURNING 1
)
SELECT (SELECT count(*) FROM st) AS states, (SELECT count(*) FROM msg) AS messages,
       (SELECT count(*) FROM aud) AS audit
"""


def unrouted(metadata: dict[str, Any]) -> dict[str, Any]:
    """metadata without channel routing keys: any channel but "web", and ROUTING_KEYS."""
    return {
        key: value
        for key, value in metadata.items()
        if key not in ROUTING_KEYS and not (key == "channel" and value != "web")
    }


def export_device(engine: Engine, tenant: str, device: str) -> ExportDocument | None:
    """The device's export document, read in one statement (one snapshot); None for an unknown device."""
    params = {"tenant": validation.tenant_id(tenant), "device": canonical_device_id(device)}
    row = run(engine, EXPORT, params, read_only=True)
    if row["state"] is None and not row["messages"] and not row["audit"]:
        return None
    return ExportDocument(
        kind=KIND,
        format_version=FORMAT_VERSION,
        exported_at=row["exported_at"],
        tenant_id=tenant,
        device_id=device,
        state=row["state"],
        messages=row["messages"],
        audit=[{k: v for k, v in item.items() if k != "id"} for item in row["audit"]],
    )


def import_device(engine: Engine, tenant: str, document: ExportDocument) -> dict[str, int]:
    """Write the document's device into tenant in one transaction; ImportConflict if the tenant has it.

    Returns counts: states, messages, audit, dropped_metadata (messages whose channel
    routing metadata was dropped).
    """
    tenant = validation.tenant_id(tenant)
    device = document.device_id
    key = {"tenant": tenant, "device": device}
    messages = sorted(document.messages, key=lambda m: m.id)
    # The import's transaction runs on SQLAlchemy (engine.connect): imported here, with the
    # engine's first connect, so that no request but an import pays for it.
    from sqlalchemy import exc

    with store_errors():
        try:
            counts = _insert(engine, key, document, messages)
        except exc.IntegrityError as err:
            # A concurrent first message of the device, or a channel id the tenant uses on another device.
            raise ImportConflict("the tenant already holds this device or one of its channel message ids") from err
    logger.info(
        "imported a device: %s messages (%s without their channel routing), %s audit rows",
        counts["messages"],
        counts["dropped_metadata"],
        counts["audit"],
    )
    return counts


def _insert(engine: Engine, key: dict[str, str], document: ExportDocument, messages: list[ExportedMessage]) -> Any:
    with engine.connect() as conn:
        # The engine autocommits single statements; this needs a real transaction.
        conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            conn.exec_driver_sql(LOCK_DEVICE, key)
            claim = conn.exec_driver_sql(CLAIM_IDS, key | {"n": len(messages)}).mappings().one()
            if claim["taken"]:
                raise ImportConflict("the tenant already has this device; erase it first")
            # New ids in the old ids' order, so the history reads the same way.
            new_id = dict(zip((m.id for m in messages), sorted(claim["ids"]), strict=True))

            def link(old: int | None) -> int | None:
                # Links to messages that are not in the document (lost to retention) become null.
                return new_id.get(old) if old is not None else None

            rows = [
                m.model_copy(
                    update={"id": new_id[m.id], "reply_to": link(m.reply_to), "metadata": unrouted(m.metadata)}
                    | ({"merged_into": link(m.merged_into)} if m.role == "user" else {})
                )
                for m in messages
            ]
            audit = [
                a.model_dump(mode="json") | {"message_id": link(a.message_id), "n": n}
                for n, a in enumerate(document.audit)
            ]
            states = [document.state.model_dump(mode="json")] if document.state is not None else []
            params = key | {
                "state": json.dumps(states),
                "messages": json.dumps([m.model_dump(mode="json") for m in rows]),
                "audit": json.dumps(audit),
            }
            counts = dict(conn.exec_driver_sql(INSERT, params).mappings().one())
            counts["dropped_metadata"] = sum(1 for m, r in zip(messages, rows, strict=True) if m.metadata != r.metadata)
            return counts
