"""Route modules load on their area's first request (app/api/lazy.py), in place, once, and cover their paths."""

from __future__ import annotations

import importlib
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from app.api.lazy import LazyRouter, load_all
from app.main import AREAS, create_app
from tests.conftest import make_settings


def paths_of(route: BaseRoute) -> list[str]:
    """The paths a route serves; an included router's, each of its routes'."""
    inner = getattr(route, "original_router", None)
    if inner is not None:
        return [path for child in inner.routes for path in paths_of(child)]
    return [route.path] if hasattr(route, "path") else []


def waiting(app) -> list[str]:
    return [route.area.module for route in app.router.routes if isinstance(route, LazyRouter)]


@pytest.fixture
def lazy_app(database_url):
    """An app that no request has touched, with no lifespan (as on Lambda): every area waits."""
    return create_app(make_settings(database_url, admin_api_keys="default:lazy-routes-admin-key-7f3a9c1d"))


@pytest.mark.parametrize("area", AREAS, ids=lambda area: area.module.rsplit(".", 1)[-1])
def test_every_route_of_an_area_is_under_its_paths(area):
    # A route outside its area's paths would be a 404 until another area happened to load its module.
    router = importlib.import_module(area.module).router
    paths = [path for route in router.routes for path in paths_of(route)]
    assert paths, f"{area.module} serves no route"
    concrete = [path.replace("{", "x").replace("}", "") for path in paths]  # one request path per route
    assert [path for path in concrete if not area.covers(path)] == []


def test_a_server_loads_every_area_at_start(lazy_app):
    assert waiting(lazy_app) == [area.module for area in AREAS]  # in the table's order
    with TestClient(lazy_app):  # the lifespan runs, as under uvicorn
        assert waiting(lazy_app) == []


def test_without_a_lifespan_each_area_waits_for_its_first_request(lazy_app):
    client = TestClient(lazy_app)  # not entered: no lifespan, as under Mangum
    assert waiting(lazy_app) == [area.module for area in AREAS]
    assert client.get("/api/health").status_code == 200
    assert "app.api.routes.health" not in waiting(lazy_app)
    health_at = next(i for i, r in enumerate(lazy_app.router.routes) if "/api/health" in paths_of(r))
    stream_at = next(i for i, r in enumerate(lazy_app.router.routes) if isinstance(r, LazyRouter))
    assert health_at < stream_at  # in the placeholder's place, before the areas still waiting
    routes_after_health = list(lazy_app.router.routes)
    assert client.get("/api/health").status_code == 200
    assert lazy_app.router.routes == routes_after_health  # loaded once: the second request changes nothing
    # The admin API: 401 without a key, as before, once its module is in place.
    response = client.get(f"/api/sessions/{uuid.uuid4()}")
    assert response.status_code == 401, response.text
    assert {"app.api.routes.sessions", "app.api.routes.takeover"}.isdisjoint(waiting(lazy_app))
    # A path no area serves is still a JSON 404, and loads nothing.
    before = waiting(lazy_app)
    assert client.get("/api/nothing-here").status_code == 404
    assert waiting(lazy_app) == before


def test_the_openapi_schema_describes_every_route_loaded_or_not(lazy_app):
    schema = TestClient(lazy_app).get("/openapi.json").json()
    assert waiting(lazy_app) == []
    # The same routers included the plain way, all at once.
    reference = FastAPI()
    for area in AREAS:
        reference.include_router(importlib.import_module(area.module).router)
    assert schema["paths"].keys() == reference.openapi()["paths"].keys()
    assert {"/api/chat", "/api/sessions/{device_id}", "/api/inbox", "/api/health"} <= schema["paths"].keys()


@pytest.mark.parametrize("path", ["/api/cron", "/api/cron/", "/web", "/web/", "/api/chat/", "/api/sessions/"])
def test_a_near_miss_answers_as_the_loaded_app_does(lazy_app, database_url, path):
    # Starlette retries a path that matches nothing with its trailing slash flipped: the retry
    # must load the area, not redirect to a path no route of it serves.
    eager = create_app(make_settings(database_url, admin_api_keys="default:lazy-routes-admin-key-7f3a9c1d"))
    load_all(eager)
    want = TestClient(eager, follow_redirects=False).get(path)
    got = TestClient(lazy_app, follow_redirects=False).get(path)
    assert (got.status_code, got.headers.get("location")) == (want.status_code, want.headers.get("location"))


def test_routes_are_found_by_name_before_their_area_loads(lazy_app):
    # /docs is not lazy, but its routes stand after the placeholders.
    assert lazy_app.url_path_for("swagger_ui") == "/docs"
    assert lazy_app.url_path_for("health") == "/api/health"
    assert "app.api.routes.health" not in waiting(lazy_app)


def test_load_all_leaves_no_route_analysis_to_the_first_request(lazy_app, monkeypatch):
    # FastAPI 0.16x analyses an included router's routes on its first match (~90 ms for ours): a
    # server does it at start, so the first request of a burst does not hold up the rest.
    included = [route for route in lazy_app.router.routes if not isinstance(route, LazyRouter)]
    kind = next((type(route) for route in included if hasattr(route, "effective_candidates")), None)
    load_all(lazy_app)
    kind = kind or next((type(r) for r in lazy_app.router.routes if hasattr(r, "effective_candidates")), None)
    if kind is None:
        pytest.skip("this FastAPI analyses routes when they are included: nothing is left for a request")
    analysed: list[str] = []
    original = kind._build_effective_context

    def counting(self, route):
        analysed.append(getattr(route, "path", repr(route)))
        return original(self, route)

    monkeypatch.setattr(kind, "_build_effective_context", counting)
    client = TestClient(lazy_app)
    assert client.get("/api/chat/messages").status_code == 400  # routed to the chat area: no device id
    assert client.get("/api/no-such-route").status_code == 404  # every route was tried
    assert analysed == []
