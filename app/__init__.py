"""Active-agent session locks in PostgreSQL for chat bots on serverless platforms."""

from app.errors import (
    ConfigurationError,
    InvalidAgentKey,
    InvalidDeviceId,
    InvalidInput,
    InvalidTenantId,
    InvalidTTL,
    LeaseLost,
    SessionError,
    StoreError,
    StoreUnavailable,
)
from app.sessions import AsyncSessionService, SessionService

__all__ = [
    "ConfigurationError",
    "InvalidAgentKey",
    "InvalidDeviceId",
    "InvalidInput",
    "InvalidTTL",
    "InvalidTenantId",
    "LeaseLost",
    "SessionError",
    "AsyncSessionService",
    "SessionService",
    "StoreError",
    "StoreUnavailable",
]
