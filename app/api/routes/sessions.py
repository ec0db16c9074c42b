"""The session admin API under /api/sessions: every route needs an admin key and sees only its tenant.

Another tenant's device answers 404, exactly like a device that does not exist.
Bodies and query parameters that break the schema answer 422; a device id in the
path that is not 1-128 printable characters answers 400 invalid_device_id. Device
ids are validated and canonicalised once, by the store (a UUID in any spelling means
its stored lowercase form).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator

from app.admin.import_body import DocumentBody, InvalidDocument, parse_document
from app.admin.schemas import (
    AuditItem,
    AuditPage,
    Context,
    ContextPatchBody,
    ContextResponse,
    History,
    HistoryItem,
    ImportResult,
    Lock,
    LockChange,
    LockRequest,
    MessageItem,
    MessagePage,
    SessionDetail,
    SessionItem,
    SessionList,
    Status,
    Timings,
    session_id_text,
)
from app.admin.transfer import ExportDocument, export_device, import_device
from app.api.auth import AdminTenant
from app.api.deps import Admin, Agents, Db
from app.api.errors import ApiError, ErrorBody
from app.validation import ID_SCHEMA, MAX_ID

router = APIRouter(tags=["sessions"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    # 400: a bad device id in the path, or a body that is not JSON at all.
    return {code: {"model": ErrorBody} for code in (400, 401, 422, *codes)}


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no session data for this device")


Limit = Annotated[int, Query(ge=1, le=200)]
# Checked in the route (400 invalid_device_id), so only documented here.
DeviceId = Annotated[
    str,
    Path(
        description="1-128 printable characters without whitespace",
        json_schema_extra={"minLength": 1, "maxLength": 128, **ID_SCHEMA},
    ),
]


@router.get("/api/sessions", response_model=SessionList, responses=_errors())
def list_sessions(
    tenant: AdminTenant,
    admin: Admin,
    limit: Limit = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    agent: Annotated[str | None, Query(max_length=50, pattern=r"^[a-z][a-z0-9_-]{0,49}$")] = None,
    status: Status | None = None,
) -> SessionList:
    """The tenant's devices, one item each (its current session), newest activity first."""
    rows, total = admin.list_sessions(tenant, limit=limit, offset=offset, agent=agent, status=status)
    return SessionList(items=[SessionItem(**row) for row in rows], total=total)


@router.post("/api/sessions/import", status_code=201, response_model=ImportResult, responses=_errors(409, 413))
def import_session(tenant: AdminTenant, database: Db, body: Annotated[Any, DocumentBody(), Body()]) -> ImportResult:
    """Import an export document into the caller's tenant (a tenant named in it is ignored); 409 if it exists."""
    # A sync route runs in the threadpool: validating a big document here leaves the event loop free.
    try:
        document = parse_document(body)
    except InvalidDocument as err:
        raise RequestValidationError([e | {"loc": ("body", *e["loc"])} for e in err.errors]) from None
    counts = import_device(database.engine, tenant, document)  # ImportConflict: 409, mapped in app/api/errors.py
    state = document.state
    return ImportResult(
        device_id=document.device_id,
        session_id=state.session_id if state else None,
        messages=counts["messages"],
        audit=counts["audit"],
        dropped_metadata=counts["dropped_metadata"],
    )


@router.get("/api/sessions/{device_id}", response_model=SessionDetail, responses=_errors(404))
def get_session(device_id: DeviceId, tenant: AdminTenant, admin: Admin) -> SessionDetail:
    """The device's state: session, status, live lock, context and version."""
    row = admin.get_state(tenant, device_id)
    if row is None:
        raise _not_found()
    lock = Lock(
        agent=row["active_agent"], locked_at=row["locked_at"], expires_at=row["expires_at"], operator=row["operator"]
    )
    return SessionDetail(**row, lock=lock)


@router.get("/api/sessions/{device_id}/history", response_model=History, responses=_errors(404))
def session_history(device_id: DeviceId, tenant: AdminTenant, admin: Admin) -> History:
    """The device's sessions, newest first; only the current one can be active or idle."""
    rows = admin.history(tenant, device_id)
    if rows is None:
        raise _not_found()
    return History(items=[HistoryItem(**row) for row in rows])


@router.get("/api/sessions/{device_id}/messages", response_model=MessagePage, responses=_errors(404))
def session_messages(
    device_id: DeviceId,
    tenant: AdminTenant,
    admin: Admin,
    limit: Limit = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    session_id: Annotated[
        str | None, Query(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA), AfterValidator(session_id_text)
    ] = None,
) -> MessagePage:
    """Messages of both roles, newest first; page with ?before=<next_before>."""
    rows = admin.messages(tenant, device_id, limit=limit + 1, before=before, session_id=session_id)
    if rows is None:
        raise _not_found()
    items = [MessageItem(**row) for row in rows[:limit]]
    return MessagePage(items=items, next_before=items[-1].id if len(rows) > limit else None)


@router.patch("/api/sessions/{device_id}/context", response_model=ContextResponse, responses=_errors(404))
def patch_context(device_id: DeviceId, patch: ContextPatchBody, tenant: AdminTenant, admin: Admin) -> ContextResponse:
    """Merge a patch into the context in SQL: concurrent patches (and agents') keep each other's keys."""
    merged = admin.patch_context(tenant, device_id, patch)
    if merged is None:
        raise _not_found()
    return ContextResponse(context=Context(**merged))


@router.put("/api/sessions/{device_id}/lock", response_model=LockChange, responses=_errors(404))
def override_lock(
    device_id: DeviceId, body: LockRequest, tenant: AdminTenant, admin: Admin, registry: Agents
) -> LockChange:
    """Operator override: give the lock to an agent (audited as "override")."""
    if body.agent not in registry:
        raise ApiError(422, "unknown_agent", f"body.agent: no agent {body.agent!r} in the registry")
    row = admin.override_lock(tenant, device_id, body.agent, body.ttl)
    if row is None:
        raise _not_found()
    return LockChange(agent=row["active_agent"], **{k: v for k, v in row.items() if k != "active_agent"})


@router.delete("/api/sessions/{device_id}/lock", response_model=LockChange, responses=_errors(404))
def release_lock(device_id: DeviceId, tenant: AdminTenant, admin: Admin) -> LockChange:
    """Operator override: release the lock (audited as "override" when a live lock was held)."""
    row = admin.release_lock(tenant, device_id)
    if row is None:
        raise _not_found()
    return LockChange(agent=row["active_agent"], **{k: v for k, v in row.items() if k != "active_agent"})


@router.delete("/api/sessions/{device_id}", status_code=204, response_class=Response, responses=_errors(404))
def erase_session(device_id: DeviceId, tenant: AdminTenant, admin: Admin) -> Response:
    """Erase the device's state, messages, audit and deduplication ids, in one transaction."""
    if not admin.erase(tenant, device_id):
        raise _not_found()
    return Response(status_code=204)


@router.get("/api/sessions/{device_id}/export", response_model=ExportDocument, responses=_errors(404))
def export_session(device_id: DeviceId, tenant: AdminTenant, database: Db) -> ExportDocument:
    """The device as one self-describing JSON document (kind, format_version 1, state, messages, audit)."""
    document = export_device(database.engine, tenant, device_id)
    if document is None:
        raise _not_found()
    return document


@router.get("/api/sessions/{device_id}/audit", response_model=AuditPage, responses=_errors(404))
def session_audit(
    device_id: DeviceId,
    tenant: AdminTenant,
    admin: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> AuditPage:
    """Lock events of the device, oldest first; page with ?after=<next_after>."""
    rows = admin.audit(tenant, device_id, limit=limit + 1, after=after)
    if rows is None:
        raise _not_found()
    items = [
        AuditItem(**row, timings=Timings(db_ms=row["db_ms"], agent_ms=row["agent_ms"], total_ms=row["total_ms"]))
        for row in rows[:limit]
    ]
    return AuditPage(items=items, next_after=items[-1].id if len(rows) > limit else None)
