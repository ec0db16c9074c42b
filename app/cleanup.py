"""The scheduled housekeeping run shared by the cron route, the Lambda schedule and the CLI."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.sessions import SessionService

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupResult:
    released: int
    deleted: int
    duration_ms: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def run_cleanup(engine: Engine, settings: Settings) -> CleanupResult:
    """Release expired locks (and, as later rules add, purge old rows); never needed for correctness."""
    started = time.perf_counter()
    released = SessionService(engine, default_ttl=settings.default_session_ttl).cleanup_expired_sessions(
        batch_size=settings.cleanup_batch_size, max_seconds=settings.cleanup_max_seconds
    )
    result = CleanupResult(released=released, deleted=0, duration_ms=round((time.perf_counter() - started) * 1000))
    logger.info("cleanup released=%s deleted=%s duration_ms=%s", *asdict(result).values())
    return result
