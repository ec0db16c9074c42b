"""Build the real app for a test, and dispose of its engine afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


@contextlib.contextmanager
def app_client(settings: Settings, **kwargs) -> Iterator[TestClient]:
    app = create_app(settings, **kwargs)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        # Turns and sends that went on after a webhook's answer finish before the engine goes.
        assert app.state.whatsapp.background.join(60), "whatsapp background work still running after 60 s"
        app.state.database.dispose()
