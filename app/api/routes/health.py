"""GET /api/health: is the database reachable, and is its schema at the code's migration.

Async, on the health check's own connection (`arun(..., probe=True)`): a sync route went
through the thread pool and back, two waits for a busy event loop, and the turns' pool would
queue it behind every claim of a burst.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import Db
from app.core import schema
from app.core.db import arun
from app.errors import SessionError, StoreError

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Health(BaseModel):
    """`status` is ok only when the database answers and its schema is the code's (`schema` current or ahead)."""

    status: str
    database: str
    migration: str | None  # the database's revision
    expected_migration: str  # the code's newest revision
    # current | behind (run `python -m app migrate`) | ahead | missing; None while unreachable
    schema_state: str | None = Field(serialization_alias="schema")


@router.get("/api/health", response_model=Health, responses={503: {"model": Health}})
async def health(database: Db) -> Health | JSONResponse:
    """200 when the database answers at the code's migration; 503 when it is unreachable or not migrated."""
    try:
        revision = await _revision(database)
    except SessionError as err:
        logger.warning("health check failed: %s", err)
        body = Health(
            status="degraded",
            database="unavailable",
            migration=None,
            expected_migration=schema.head(),
            schema_state=None,
        )
        return JSONResponse(body.model_dump(by_alias=True), status_code=503)
    state = schema.report(revision)
    body = Health(
        status="ok" if state in ("current", "ahead") else "degraded",
        database="ok",
        migration=revision,
        expected_migration=schema.head(),
        schema_state=state,
    )
    return body if body.status == "ok" else JSONResponse(body.model_dump(by_alias=True), status_code=503)


async def _revision(database) -> str | None:
    """The database's migration, None if it was never migrated; StoreUnavailable if it does not answer."""
    try:
        return await arun(database.engine, schema.REVISION, {}, rows="scalar", read_only=True, probe=True)
    except StoreError as err:
        if isinstance(err.__cause__, psycopg.errors.UndefinedTable):
            return None
        raise
