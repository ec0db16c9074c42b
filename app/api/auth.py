"""Bearer-key authentication of the session admin API: each key belongs to one tenant."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Header
from pydantic import SecretStr

from app import validation
from app.api.deps import AppSettings
from app.api.errors import ApiError
from app.errors import ConfigurationError, InvalidInput

logger = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def parse_admin_keys(raw: SecretStr | str | None) -> list[tuple[str, bytes]]:
    """ADMIN_API_KEYS ("tenant:key,tenant:key") as (tenant, key) pairs; ConfigurationError if malformed."""
    text = raw.get_secret_value() if isinstance(raw, SecretStr) else (raw or "")
    pairs: list[tuple[str, bytes]] = []
    owners: dict[bytes, str] = {}
    for number, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        tenant, sep, key = (part.strip() for part in item.strip().partition(":"))
        # The messages name the entry by position, never its content: it holds a secret.
        if not sep or not tenant or not key:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} is not of the form tenant:key")
        try:
            validation.tenant_id(tenant)
        except InvalidInput:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} names an invalid tenant id") from None
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigurationError(
                f"ADMIN_API_KEYS entry {number}: a key must be at least {MIN_KEY_LENGTH} printable "
                "characters without whitespace"
            )
        secret = key.encode()
        if owners.get(secret, tenant) != tenant:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} reuses another tenant's key")
        owners[secret] = tenant
        pairs.append((tenant, secret))
    return pairs


def bearer_token(header: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None if absent or malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token.encode()


async def admin_tenant(settings: AppSettings, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant whose admin key the request carries; 401 without a valid key."""
    keys = parse_admin_keys(settings.admin_api_keys)
    if not keys:
        logger.warning("admin request refused: ADMIN_API_KEYS is not set")
    token = bearer_token(authorization)
    found: str | None = None
    if token is not None:
        # Compare against every key, without stopping at a match, so the time taken
        # does not tell which key (or how much of one) was right.
        for tenant, key in keys:
            if hmac.compare_digest(token, key):
                found = tenant
    if found is None:
        raise ApiError(401, "unauthorized", "missing or invalid admin bearer token", UNAUTHORIZED)
    return found


AdminTenant = Annotated[str, Depends(admin_tenant)]
