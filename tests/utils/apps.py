"""Build the real app for a test, swap its agents through dependency_overrides, dispose of it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi.testclient import TestClient

from app.agents import Registry
from app.api.deps import get_registry
from app.core.config import Settings
from app.main import create_app
from app.services import Services, build_services


class AppClient(TestClient):
    """A TestClient that also holds the services its app was built with."""

    services: Services


@contextlib.contextmanager
def app_client(settings: Settings, **kwargs) -> Iterator[AppClient]:
    """peer: the (host, port) requests come from, as the ASGI server reports it (default TestClient's);
    root_path: the root path the app is served under (scope["root_path"]; the request paths then start with it)."""
    services = build_services(
        settings, serverless=kwargs.pop("serverless", False), database=kwargs.pop("database", None)
    )
    peer = kwargs.pop("peer", ("testclient", 50000))
    root_path = kwargs.pop("root_path", "")
    app = create_app(services=services, **kwargs)
    try:
        with AppClient(app, raise_server_exceptions=False, client=peer, root_path=root_path) as client:
            client.services = services
            try:
                yield client
            finally:
                # Turns and sends that went on after a webhook's answer finish while the app's loop runs.
                assert join_background(client, 60), "background work still running after 60 s"
    finally:
        services.database.dispose()


def join_background(client: AppClient, timeout: float) -> bool:
    """Wait (at most timeout seconds) for the app's background tasks (turns going on after a
    webhook's answer); True when none is left. The client must be open (its lifespan running)."""
    return client.portal.call(client.services.runtime.background.join, timeout)


def use_registry(client: TestClient, registry: Registry) -> None:
    """Answer the client's requests with these agents (the routes' get_registry dependency)."""
    client.app.dependency_overrides[get_registry] = lambda: registry
