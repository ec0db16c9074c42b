"""The session admin feature: the store, operator takeover, export and import.

Routes: app/api/routes/sessions.py and app/api/routes/takeover.py; request and response
shapes: app/admin/schemas.py.
"""

from app.admin.store import AdminStore

__all__ = ["AdminStore"]
