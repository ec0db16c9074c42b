"""The exception hierarchy: everything this package raises derives from SessionError."""

from __future__ import annotations


class SessionError(Exception):
    """Base of every error raised by this package."""

    code = "session_error"


class InvalidInput(SessionError, ValueError):
    """A caller passed a value the store refuses; nothing was changed."""

    code = "invalid_input"


class InvalidDeviceId(InvalidInput):
    """Device id is not 1-128 printable characters."""

    code = "invalid_device_id"


class UnaddressableDeviceId(InvalidDeviceId):
    """Device id no route can address: it holds `/`, or is `.` or `..` (a path segment clients rewrite)."""

    code = "unaddressable_device_id"


class NonFiniteNumber(InvalidInput):
    """JSON input holds NaN, Infinity or -Infinity (or a number so large it parses as infinity)."""

    code = "non_finite_number"


class InvalidTenantId(InvalidInput):
    """Tenant id is not 1-128 printable characters."""

    code = "invalid_tenant_id"


class InvalidCursor(InvalidInput):
    """A page cursor that is not one this server gave for these filters (malformed, altered, or of other filters)."""

    code = "invalid_cursor"


class InvalidAgentKey(InvalidInput):
    """Agent key does not match [a-z][a-z0-9_-]{0,49}."""

    code = "invalid_agent_key"


class InvalidTTL(InvalidInput):
    """TTL is not a whole number of seconds between 1 s and 30 days."""

    code = "invalid_ttl"


class InvalidMessage(InvalidInput):
    """Message text is empty or holds characters the store cannot keep (NUL)."""

    code = "invalid_message"


class ConfigurationError(SessionError):
    """The deployment is missing a required setting."""

    code = "configuration_error"


class StoreError(SessionError):
    """The database refused a statement."""

    code = "store_error"


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time."""

    code = "store_unavailable"


class LeaseLost(SessionError):
    """A worker's lease on a device expired or was taken over; its write was refused."""

    code = "lease_lost"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key came again with a different request; nothing was stored."""

    code = "idempotency_key_reused"


class AgentFailed(SessionError):
    """An agent's run failed (model error, turn limit); the message names the error type only."""

    code = "agent_failed"


class ImportConflict(SessionError):
    """An import names a device the tenant already holds; nothing was written."""

    code = "conflict"


class Overloaded(SessionError):
    """This instance holds MAX_CONCURRENT_TURNS turns already, or is shutting down; nothing was stored.

    retry_after: seconds after which a retry is worth it (HTTP Retry-After).
    """

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Interrupted(SessionError):
    """The server stopped (SIGTERM, its grace period over) before this request finished.

    A message the request had stored is kept: its lease was given back and the next
    holder answers it. retry_after: seconds after which a retry is worth it (HTTP Retry-After).
    """

    code = "interrupted"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(SessionError):
    """Past a rate limit (RATE_LIMIT_PER_DEVICE, RATE_LIMIT_NEW_DEVICES); nothing was stored.

    retry_after: whole seconds (1-60) until the current one-minute window ends.
    """

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(RateLimited):
    """The device holds EVENT_STREAMS_PER_DEVICE event streams on this instance already; none was opened.

    retry_after: whole seconds after which a page may try again (another tab may have closed).
    """

    code = "too_many_streams"
