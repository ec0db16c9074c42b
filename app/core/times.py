"""One text form for times: ISO 8601 in UTC with a `Z`, as the API's JSON shows them."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(value: datetime) -> str:
    """value as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`; a naive value is taken to be UTC already."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
