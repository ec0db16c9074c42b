"""Signed web chat device ids: `<uuid>.<tag>`, the tag an HMAC of the uuid."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from app import validation


def _tag(secret: str, device_uuid: str) -> str:
    digest = hmac.new(secret.encode(), device_uuid.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(secret: str | None) -> str:
    """A new device id: signed when a secret is configured, else a plain UUID."""
    device_uuid = str(uuid.uuid4())
    return f"{device_uuid}.{_tag(secret, device_uuid)}" if secret else device_uuid


def parse_uuid(value: str) -> str | None:
    """The canonical form of a UUID string, or None."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def canonical_device_id(value: object) -> str:
    """A device id as stored: a UUID in any spelling /api/chat accepts (upper case, braces,
    `urn:uuid:`) becomes its lowercase hyphenated form; any other valid id is kept as is.

    Raises InvalidDeviceId for a value that is not 1-128 printable characters.
    """
    device = validation.device_id(value)
    return parse_uuid(device) or device


def verify(secret: str, value: str) -> str | None:
    """The device's uuid if value is `<uuid>.<tag>` with the right tag, else None."""
    device_uuid, dot, tag = value.partition(".")
    canonical = parse_uuid(device_uuid)
    if not dot or canonical is None or device_uuid != canonical:
        return None
    return canonical if hmac.compare_digest(tag.encode(), _tag(secret, canonical).encode()) else None
