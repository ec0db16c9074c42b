"""GET /api/health: is the database reachable, and at which migration."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import Db
from app.core.db import store_errors
from app.errors import SessionError

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: str
    migration: str | None


@router.get("/api/health", response_model=Health, responses={503: {"model": Health}})
def health(database: Db) -> Health | JSONResponse:
    try:
        with store_errors(), database.engine.connect() as conn:
            migration = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except SessionError as err:
        logger.warning("health check failed: %s", err)
        body = Health(status="degraded", database="unavailable", migration=None)
        return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok", database="ok", migration=migration)
