"""GET /metrics: this process's counters and histograms in the Prometheus text format.

Behind an admin key (any tenant's: the figures are the process's, with no tenant in
them) unless METRICS_PUBLIC=true; 404 when METRICS is off (or auto on Lambda). What
is counted: app/telemetry/instruments.py and the README.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app import telemetry
from app.api.auth import AdminCredentials, admin_tenant
from app.api.deps import AppSettings
from app.api.errors import ApiError, ErrorBody

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def prometheus_metrics(settings: AppSettings, credentials: AdminCredentials) -> Response:
    """The Prometheus exposition (text format 0.0.4) of the service's metrics."""
    if not settings.metrics_public:
        await admin_tenant(settings, credentials)
    registry = telemetry.active().prometheus
    if registry is None:
        raise ApiError(404, "not_found", "metrics are off here (METRICS)")
    # Imported here: a cold start that is never scraped does not pay for it.
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # CPU only (the SDK's in-memory aggregation), no I/O: fine on the loop.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
