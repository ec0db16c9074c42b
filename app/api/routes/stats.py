"""GET /api/stats: lock, message and cleanup figures of the caller's tenant, from the monitoring views."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.auth import AdminTenant
from app.api.deps import Admin
from app.api.errors import ErrorBody

router = APIRouter(tags=["sessions"])


class LastCleanup(BaseModel):
    at: datetime
    released: int
    deleted: int
    duration_ms: int


class Stats(BaseModel):
    active_locks_by_agent: dict[str, int]
    expired_pending: int
    avg_lock_age_seconds_by_agent: dict[str, float]
    messages_last_hour: int
    last_cleanup: LastCleanup | None  # cleanup runs are global: the same for every tenant


@router.get("/api/stats", response_model=Stats, responses={401: {"model": ErrorBody}})
def stats(tenant: AdminTenant, admin: Admin) -> Stats:
    """Live locks and their average age by agent, expired locks awaiting cleanup, recent messages, last cleanup."""
    return Stats(**admin.stats(tenant))
