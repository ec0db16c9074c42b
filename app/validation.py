"""Checks on caller input, done before any SQL runs."""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

from app.core.config import MAX_TTL_SECONDS
from app.errors import (
    InvalidAgentKey,
    InvalidDeviceId,
    InvalidMessage,
    InvalidTenantId,
    InvalidTTL,
    NonFiniteNumber,
    UnaddressableDeviceId,
)

# Ids and versions are bigints, bounded here to what a JSON number holds exactly (2**53 - 1).
MAX_ID = 2**53 - 1
# The schema documents the common case (ASCII ids) so that clients and fuzzers generate values
# the server accepts; the validators are the real rules (1-128 printable characters without
# whitespace, any script).
ID_SCHEMA = {"pattern": r"^[!-~]+$"}

AGENT_KEY = re.compile(r"[a-z][a-z0-9_-]{0,49}")
MAX_ID_LENGTH = 128


def _is_id(value: object) -> TypeGuard[str]:
    # isprintable() refuses every control and whitespace character but the plain
    # space, which is refused separately.
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH and value.isprintable() and " " not in value


def device_id(value: object) -> str:
    """Return value if it is a valid device id, else raise InvalidDeviceId."""
    if not _is_id(value):
        raise InvalidDeviceId("device id must be 1-128 printable characters without whitespace")
    return value


# Path segments that URL clients resolve (browsers even when percent-encoded) instead of sending.
DOT_SEGMENTS = (".", "..")


def addressable_device_id(value: object) -> str:
    """Return value if it is a valid device id the routes can address in a URL path.

    Raises InvalidDeviceId for an invalid id, UnaddressableDeviceId for one holding `/`
    (no route's path parameter matches it, even percent-encoded) or being `.` or `..`.
    """
    device = device_id(value)
    if "/" in device or device in DOT_SEGMENTS:
        raise UnaddressableDeviceId("device id must not contain '/' nor be '.' or '..': no route could address it")
    return device


def tenant_id(value: object) -> str:
    """Return value if it is a valid tenant id, else raise InvalidTenantId."""
    if not _is_id(value):
        raise InvalidTenantId("tenant id must be 1-128 printable characters without whitespace")
    return value


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


MAX_JSON_DEPTH = 64


def _unstorable(text: str) -> bool:
    # PostgreSQL text holds neither NUL nor a lone UTF-16 surrogate.
    return "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text)


def message_text(value: object) -> str:
    """Return value if it is message text PostgreSQL can store, else raise InvalidMessage."""
    if not isinstance(value, str) or not value or _unstorable(value):
        raise InvalidMessage("message text must be non-empty, without NUL characters or lone surrogates")
    return value


def storable_json(value: Any, where: str = "", depth: int = 0) -> None:
    """Raise ValueError if a JSON value nests deeper than MAX_JSON_DEPTH or holds what PostgreSQL cannot store.

    Unstorable: text with NUL or a lone surrogate, and non-finite numbers (NonFiniteNumber,
    a ValueError): Python's json reads NaN, Infinity, -Infinity and 1e400 (as inf), but
    jsonb refuses them, and pydantic would quietly write them as null.
    """
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{where or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteNumber(f"{where or 'value'}: {value} is not a finite number (JSON has no NaN or Infinity)")
    elif isinstance(value, str):
        if _unstorable(value):
            raise ValueError(f"{where or 'value'}: text must not contain NUL characters or lone surrogates")
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_json(key, where, depth + 1)
            storable_json(item, f"{where}.{key}" if where else str(key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            storable_json(item, f"{where}[{index}]", depth + 1)
