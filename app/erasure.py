"""Keyed hashes of an erased device's channel message ids: a replayed delivery stays a duplicate.

Deduplication of channel messages rests on their stored external ids (`wa:<message
id>`). Erasing a device deletes those rows, so a signed delivery replayed afterwards
(Meta retries for days) would run again and send a second reply. The erasing
statement therefore keeps, for WEBHOOK_MAX_AGE_SECONDS (messages older than that are
ignored anyway), one hash per channel message id of the device in
erased_channel_messages; the webhook looks a delivery's ids up there first.

The hash is SHA-256 over a key and the tenant and message id, computed in SQL so the
erasing statement needs no extra round trip. The key is an HMAC of WHATSAPP_APP_SECRET:
the secret that signs every accepted delivery, the same on every instance (LOG_HASH_KEY
may be a random per-process key). Nothing else is kept: no device id, phone number or
content, and the message id never in clear (a WhatsApp message id encodes the phone).

| statement | guarantee |
| --- | --- |
| keep_erased() (a CTE of app.admin.statements.ERASE and app.chat_history.DELETE_SESSION) | written in the statement that deletes the messages: an erasure never forgets its ids |
| ERASED | which messages of a delivery were erased, in one statement for the whole delivery |
| DELETE_EXPIRED_ERASED (app.cleanup) | hashes past their window go, in bounded batches |
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.core.db import arun

CHANNEL_PREFIX = "wa:"  # external ids of channel messages (WhatsApp); web idempotency keys are not kept
KEY_LABEL = b"agent-sessions/erased-channel-message-ids"


def message_hash(tenant: str, external_id: str) -> str:
    """SQL: the keyed hash (bytea) of a tenant's channel message id; both arguments are SQL expressions.

    The tenant is length-prefixed, so no (tenant, id) pair reads as another.
    """
    return (
        f"sha256(%(erased_key)s::bytea || convert_to(length({tenant})::text || ':' || {tenant} || "
        f"{external_id}, 'UTF8'))"
    )


def keep_erased(messages: str) -> str:
    """SQL CTE body: keep the hashes of the channel messages in CTE `messages` (RETURNING external_id,
    created_at, sent_at) of tenant %(tenant)s. Nothing is kept without a key or past the window."""
    return f"""
    INSERT INTO erased_channel_messages AS e (message_hash, expires_at)
    SELECT DISTINCT {message_hash("%(tenant)s::text", "x.external_id")},
           now() + make_interval(secs => %(replay_window)s)
    FROM {messages} x
    WHERE %(erased_key)s::bytea IS NOT NULL AND starts_with(x.external_id, '{CHANNEL_PREFIX}')
      AND COALESCE(x.sent_at, x.created_at) > now() - make_interval(secs => %(replay_window)s)
    ON CONFLICT (message_hash) DO UPDATE SET expires_at = GREATEST(e.expires_at, EXCLUDED.expires_at)
    RETURNING 1"""


# The positions (1-based) of the delivery's (tenant, external id) pairs that were erased.
ERASED = f"""
SELECT j.n FROM unnest(%(tenants)s::text[], %(external_ids)s::text[]) WITH ORDINALITY AS j(tenant, external_id, n)
WHERE EXISTS (SELECT 1 FROM erased_channel_messages e
              WHERE e.message_hash = {message_hash("j.tenant", "j.external_id")} AND e.expires_at > now())
"""


@dataclass(frozen=True)
class ReplayGuard:
    """The key and window of the kept hashes; key None (no WHATSAPP_APP_SECRET): nothing is kept or found.

    window_seconds: how long a hash is kept (WEBHOOK_MAX_AGE_SECONDS).
    """

    key: bytes | None
    window_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> ReplayGuard:
        secret = settings.whatsapp_app_secret
        key = None if secret is None else hmac.new(secret.get_secret_value().encode(), KEY_LABEL, hashlib.sha256)
        return cls(None if key is None else key.digest(), settings.webhook_max_age_seconds)

    def params(self) -> dict[str, Any]:
        """The parameters keep_erased() reads, to add to an erasing statement's."""
        return {"erased_key": self.key, "replay_window": self.window_seconds}

    async def erased(self, engine: Any, pairs: list[tuple[str, str]]) -> set[int]:
        """Indexes into pairs ((tenant, external id), ...) of the messages an erasure kept; one statement.

        Raises StoreUnavailable when the store is down (the webhook answers 503).
        """
        if self.key is None or not pairs:
            return set()
        rows = await arun(
            engine,
            ERASED,
            {
                "erased_key": self.key,
                "tenants": [t for t, _ in pairs],
                "external_ids": [x for _, x in pairs],
            },
            rows="all",
            read_only=True,
        )
        return {row["n"] - 1 for row in rows}


NO_GUARD = ReplayGuard(None, 0)
