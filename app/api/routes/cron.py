"""GET /api/cron/cleanup: the scheduled cleanup, for platforms whose cron calls a URL (Vercel)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.auth import CronCaller
from app.api.deps import AppServices
from app.api.errors import ErrorBody
from app.cleanup import scheduled_cleanup

logger = logging.getLogger(__name__)
router = APIRouter(tags=["cron"])


class CleanupReport(BaseModel):
    released: int
    deleted: int
    duration_ms: int


@router.get(
    "/api/cron/cleanup",
    response_model=CleanupReport,
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    dependencies=[CronCaller],
)
def cron_cleanup(services: AppServices) -> CleanupReport:
    """Release expired locks, apply message retention and answer messages a crashed worker left pending."""
    return CleanupReport(**scheduled_cleanup(services).as_dict())
