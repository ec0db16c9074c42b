"""GET /api/cron/cleanup: the scheduled cleanup, for platforms whose cron calls a URL (Vercel)."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, SecretStr

from app.api.deps import AppSettings
from app.api.errors import ApiError, ErrorBody
from app.cleanup import cleanup_app

logger = logging.getLogger(__name__)
router = APIRouter(tags=["cron"])


class CleanupReport(BaseModel):
    released: int
    deleted: int
    duration_ms: int


def _authorized(header: str | None, secret: SecretStr | None) -> bool:
    """True when the header is `Bearer <secret>`; always False while no secret is configured."""
    expected = secret.get_secret_value() if secret else ""
    if not expected.strip():
        logger.warning("cron request refused: CRON_SECRET is not set")
        return False
    # Compare the whole header in constant time: a partial match (a prefix of
    # the secret) must take as long to refuse as a wrong one.
    return hmac.compare_digest((header or "").encode(), f"Bearer {expected}".encode())


@router.get("/api/cron/cleanup", response_model=CleanupReport, responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}})
def cron_cleanup(
    request: Request, settings: AppSettings, authorization: Annotated[str | None, Header()] = None
) -> CleanupReport:
    if not _authorized(authorization, settings.cron_secret):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
    return CleanupReport(**cleanup_app(request.app.state).as_dict())
