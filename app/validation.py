"""Checks on caller input, done before any SQL runs."""

from __future__ import annotations

import re

from app.core.config import MAX_TTL_SECONDS
from app.errors import InvalidAgentKey, InvalidDeviceId, InvalidTenantId, InvalidTTL

AGENT_KEY = re.compile(r"[a-z][a-z0-9_-]{0,49}")
MAX_ID_LENGTH = 128


def _is_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_ID_LENGTH
        and all(c.isprintable() and not c.isspace() for c in value)
    )


def device_id(value: object) -> str:
    """Return value if it is a valid device id, else raise InvalidDeviceId."""
    if not _is_id(value):
        raise InvalidDeviceId("device id must be 1-128 printable characters without whitespace")
    return value  # type: ignore[return-value]


def tenant_id(value: object) -> str:
    """Return value if it is a valid tenant id, else raise InvalidTenantId."""
    if not _is_id(value):
        raise InvalidTenantId("tenant id must be 1-128 printable characters without whitespace")
    return value  # type: ignore[return-value]


def agent_key(value: object) -> str:
    """Return value if it is a valid agent key, else raise InvalidAgentKey."""
    if not isinstance(value, str) or not AGENT_KEY.fullmatch(value):
        raise InvalidAgentKey("agent key must match [a-z][a-z0-9_-]{0,49}")
    return value


def ttl(value: object) -> int | None:
    """Return value if it is None or a TTL in seconds (1 s to 30 days), else raise InvalidTTL."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_SECONDS:
        raise InvalidTTL(f"ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}")
    return value
