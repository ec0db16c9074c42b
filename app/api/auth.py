"""Bearer-key authentication of the session admin API: each key belongs to one tenant."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Header

from app.api.deps import AppSettings
from app.api.errors import ApiError

logger = logging.getLogger(__name__)

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


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
    keys = settings.admin_keys
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
