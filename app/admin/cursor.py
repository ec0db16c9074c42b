"""The inbox's page cursor: a position in its order, bound to the tenant and the filters that made it.

A cursor is `<payload>.<check>`, both base64url without padding. The payload is the JSON
array [microseconds since the Unix epoch, device id]: the last conversation a page
covered, as the order (last_message_at DESC, device_id) sees it. The check is the first
12 bytes of an HMAC-SHA256 over the tenant, the filters and the payload, so a cursor
that was cut, edited, or made for another tenant or other filters is refused
(InvalidCursor, a 422) before any statement runs.

The check detects changes; it is not a secret (its key is a fixed label, the same on
every instance, so no setting is needed and cursors outlive restarts). Forging one
gains nothing: a position only says where to start, and every statement is filtered by
the caller's tenant. So a signed payload is still read as untrusted input: its device id
must be one a conversation could have (app/validation.py), else InvalidCursor. The
cursor must also be the exact text issued (no padding, nothing base64 would skip).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app import validation
from app.errors import InvalidCursor, InvalidInput

KEY = b"agent-sessions/inbox-cursor/v1"
CHECK_BYTES = 12
# The longest cursor: a device id of MAX_ID_LENGTH characters of 4 UTF-8 bytes each (512), the
# microseconds and the JSON around them (about 30) make 542 bytes, 723 base64url characters; then
# "." and the check's 16. A cursor this inbox issued is never refused for its length.
MAX_CHARS = 800
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """What a page was asked for besides its position; a cursor is valid only with the same."""

    needs_person: bool = False
    agent: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class Position:
    """A conversation's place in the inbox's order: its last_message_at (exact, microseconds) and device id."""

    at: datetime
    device: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check(tenant: str, filters: Filters, payload: bytes) -> bytes:
    bound = json.dumps([tenant, filters.needs_person, filters.agent, filters.channel]).encode()
    return hmac.new(KEY, bound + b"\n" + payload, hashlib.sha256).digest()[:CHECK_BYTES]


def encode(tenant: str, filters: Filters, position: Position) -> str:
    """The opaque cursor (ASCII, at most MAX_CHARS) for the page after position."""
    micros = (position.at - EPOCH) // timedelta(microseconds=1)
    # UTF-8 as it is, not \u-escaped: an escape is six bytes for a character of at most four.
    payload = json.dumps([micros, position.device], separators=(",", ":"), ensure_ascii=False).encode()
    return f"{_b64(payload)}.{_b64(_check(tenant, filters, payload))}"


def decode(tenant: str, filters: Filters, cursor: str) -> Position:
    """The position a cursor of this tenant and these filters holds.

    Raises InvalidCursor for anything else: not two base64url parts, a check that does not
    match (altered, or another tenant's or other filters'), or a payload of the wrong shape.
    """
    parts = cursor.split(".") if len(cursor) <= MAX_CHARS else []
    if len(parts) != 2:
        raise InvalidCursor("cursor: not a cursor of this inbox")
    try:
        payload, check = _unb64(parts[0]), _unb64(parts[1])
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor: not a cursor of this inbox") from None
    if _b64(payload) != parts[0] or _b64(check) != parts[1]:  # padding, or bits base64 ignores
        raise InvalidCursor("cursor: not a cursor of this inbox")
    if not hmac.compare_digest(check, _check(tenant, filters, payload)):
        raise InvalidCursor("cursor: altered, or made for another tenant or other filters")
    try:
        micros, device = json.loads(payload)
        if isinstance(micros, bool) or not isinstance(micros, int):
            raise ValueError(payload)
        # The check's key is no secret: a payload that passed it may still be anyone's making.
        return Position(EPOCH + timedelta(microseconds=micros), validation.device_id(device))
    except (ValueError, TypeError, OverflowError, InvalidInput):
        raise InvalidCursor("cursor: not a cursor of this inbox") from None
