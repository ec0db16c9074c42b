"""Signed web chat device ids: `<uuid>.<tag>`, the tag an HMAC of the tenant and the uuid.

The tag binds the id to the tenant it was issued for (`POST /api/devices` with
X-Tenant-ID), so the same id under another tenant does not verify. Ids issued
before tenants were bound carry an HMAC of the uuid alone ("legacy"); they verify
in the default tenant only, the one every client used unless it named another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Literal

from app import validation

DEFAULT_TENANT = "default"
# Domain separation: a bound tag's input can never equal a legacy tag's (a bare uuid).
BOUND = b"device-id:v2\x00"

Verdict = Literal["ok", "other_tenant", "invalid"]


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _tag(secret: str, tenant: str, device_uuid: str) -> str:
    # Tenant ids are printable, so NUL cannot occur in one: the input splits one way only.
    message = BOUND + tenant.encode() + b"\x00" + device_uuid.encode()
    return _b64(hmac.new(secret.encode(), message, hashlib.sha256).digest())


def _legacy_tag(secret: str, device_uuid: str) -> str:
    return _b64(hmac.new(secret.encode(), device_uuid.encode(), hashlib.sha256).digest())


def issue(secret: str | None, tenant: str = DEFAULT_TENANT) -> str:
    """A new device id for tenant: signed (and bound to tenant) when a secret is configured, else a plain UUID."""
    device_uuid = str(uuid.uuid4())
    return f"{device_uuid}.{_tag(secret, tenant, device_uuid)}" if secret else device_uuid


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


def check(secret: str, tenant: str, value: str) -> tuple[str | None, Verdict]:
    """(the device's uuid, "ok") if value is `<uuid>.<tag>` signed for tenant; else (None, why).

    "other_tenant": a well-formed id signed for another use (a legacy id outside the
    default tenant, so the client can be told to get a new one); "invalid": anything else.
    Both tags are always computed and compared in constant time.
    """
    device_uuid, dot, tag = value.partition(".")
    canonical = parse_uuid(device_uuid)
    if not dot or canonical is None or device_uuid != canonical:
        return None, "invalid"
    bound = hmac.compare_digest(tag.encode(), _tag(secret, tenant, canonical).encode())
    legacy = hmac.compare_digest(tag.encode(), _legacy_tag(secret, canonical).encode())
    if bound or (legacy and tenant == DEFAULT_TENANT):
        return canonical, "ok"
    return None, "other_tenant" if legacy else "invalid"


def verify(secret: str, value: str, tenant: str = DEFAULT_TENANT) -> str | None:
    """The device's uuid if value is `<uuid>.<tag>` signed for tenant, else None."""
    return check(secret, tenant, value)[0]
