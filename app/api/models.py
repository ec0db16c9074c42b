"""Response models that both the device's routes (app/api/routes/chat.py) and the admin's use.

Here rather than in either route module, so that loading one area's routes (app/api/lazy.py)
does not import the other's.
"""

from __future__ import annotations

from pydantic import BaseModel


class AgentName(BaseModel):
    """An agent's key as the API names it, and the name people see (`display_name`, else the key title-cased)."""

    key: str
    display_name: str


class AgentList(BaseModel):
    items: list[AgentName]
