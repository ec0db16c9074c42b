"""The session context agents keep between messages, and patches to it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from app import validation
from app.errors import InvalidInput

PARTS = ("conversation_state", "user_preferences", "interrupted_queries", "recent_interactions")


class InvalidContextPatch(InvalidInput):
    """A context patch is not in the context's shape."""

    code = "invalid_context_patch"


class ContextPatch(BaseModel):
    """Objects are merged key by key (null removes a key); lists are appended, newest kept."""

    model_config = ConfigDict(extra="forbid")

    conversation_state: dict[str, Any] | None = None
    user_preferences: dict[str, Any] | None = None
    interrupted_queries: list[Any] | None = None
    recent_interactions: list[Any] | None = None

    @model_validator(mode="after")
    def _storable(self) -> ContextPatch:
        validation.storable_json(self.model_dump(exclude_none=True))
        return self

    @classmethod
    def parse(cls, value: ContextPatch | dict[str, Any] | None) -> ContextPatch:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as err:
            raise InvalidContextPatch(f"invalid context patch: {err.errors()[0]['msg']}") from err

    def then(self, later: ContextPatch) -> ContextPatch:
        """The patch that applies self and then later."""
        merged: dict[str, Any] = {}
        for part in ("conversation_state", "user_preferences"):
            first, second = getattr(self, part), getattr(later, part)
            merged[part] = None if first is None and second is None else {**(first or {}), **(second or {})}
        for part in ("interrupted_queries", "recent_interactions"):
            first, second = getattr(self, part), getattr(later, part)
            merged[part] = None if first is None and second is None else [*(first or []), *(second or [])]
        return ContextPatch(**merged)

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def empty_context() -> dict[str, Any]:
    return {"conversation_state": {}, "user_preferences": {}, "interrupted_queries": [], "recent_interactions": []}


def normalized(context: dict[str, Any] | None) -> dict[str, Any]:
    """The stored context with all four parts present."""
    return {**empty_context(), **(context or {})}
