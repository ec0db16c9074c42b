"""The chat page's files over HTTP and through the Lambda handler: types, CSP, caching, nothing external."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import tomllib
from importlib import resources

import pytest

from app.api.routes.web import ASSETS
from tests.conftest import make_settings
from tests.deploy.conftest import ROOT, lambda_handler_for, sample_event
from tests.utils.apps import app_client

CSP = "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
FILES = [
    ("/", "text/html"),
    ("/web/chat.js", "text/javascript"),
    ("/web/chat.css", "text/css"),
    ("/web/chat-render.js", "text/javascript"),
    ("/web/chat-stream.js", "text/javascript"),
    ("/web/chat-shared.js", "text/javascript"),
    ("/web/chat-api.js", "text/javascript"),
    ("/web/chat-log.js", "text/javascript"),
    ("/web/chat-history.js", "text/javascript"),
    ("/web/chat-events.js", "text/javascript"),
    ("/web/chat-send.js", "text/javascript"),
    ("/console", "text/html"),
    ("/web/console.js", "text/javascript"),
    ("/web/console-shared.js", "text/javascript"),
    ("/web/console-list.js", "text/javascript"),
    ("/web/console-conversation.js", "text/javascript"),
    ("/web/console.css", "text/css"),
    ("/web/icon.svg", "image/svg+xml"),
]


@pytest.fixture
def client(settings):
    with app_client(settings) as client:
        yield client


@pytest.mark.parametrize(("path", "kind"), FILES)
def test_files_are_served_with_a_self_only_policy(client, path, kind):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    again = client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")


def test_the_page_loads_nothing_from_outside_the_app():
    for name in (
        "index.html",
        "chat.js",
        "chat-render.js",
        "chat-stream.js",
        "chat-shared.js",
        "chat-api.js",
        "chat-log.js",
        "chat-history.js",
        "chat-events.js",
        "chat-send.js",
        "chat.css",
        "console.html",
        "console.js",
        "console-shared.js",
        "console-list.js",
        "console-conversation.js",
        "console.css",
        "icon.svg",
    ):
        text = resources.files("app.web").joinpath(name).read_text(encoding="utf-8")
        # The SVG namespace is a name, never fetched.
        text = text.replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
    chat = [
        "web/vendor/marked.umd.js",
        "web/vendor/purify.min.js",
        "web/chat-render.js",
        "web/chat-stream.js",
        "web/chat-shared.js",
        "web/chat-api.js",
        "web/chat-log.js",
        "web/chat-history.js",
        "web/chat-events.js",
        "web/chat-send.js",
        "web/chat.js",
    ]
    console = ["web/console-shared.js", "web/console-list.js", "web/console-conversation.js", "web/console.js"]
    for page_name, scripts in (("index.html", chat), ("console.html", console)):
        page = resources.files("app.web").joinpath(page_name).read_text(encoding="utf-8")
        assert "<style" not in page and "style=" not in page and "onclick" not in page
        assert re.findall(r'<script[^>]*src="([^"]+)"', page) == scripts
        assert re.findall(r'<link rel="icon" href="([^"]+)"', page) == ["web/icon.svg"]  # no request for /favicon.ico


def test_the_markdown_renderer_and_sanitizer_are_served_from_the_package(client):
    """make install copies them from the pinned npm packages (web/package-lock.json); npm is needed."""
    from tests.web.page import vendor_built

    if not vendor_built():
        pytest.skip("marked and DOMPurify were not built: npm was missing at `make install`")
    for name, marker in (("marked.umd.js", "marked v"), ("purify.min.js", "DOMPurify")):
        response = client.get(f"/web/vendor/{name}")
        assert response.status_code == 200 and marker in response.text[:400]
        assert response.headers["content-type"].startswith("text/javascript")
        assert response.headers["content-security-policy"] == CSP
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text(encoding="utf-8"))["packages"][""]
    assert all(version[0].isdigit() for version in lock["dependencies"].values())  # pinned, no ranges


@pytest.mark.parametrize("path", ["/web/vendor/other.js", "/web/vendor/", "/web/vendor/..%2Fchat.js"])
def test_other_vendor_paths_are_404(client, path):
    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    "path", ["/web/index.html", "/web/console.html", "/web/missing.js", "/web/..%2Fapp%2F__init__.py", "/web/"]
)
def test_other_paths_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def page_event(path: str) -> dict:
    """The shipped API Gateway v2 sample, asking for path as a browser does."""
    event = sample_event("apigw-v2-health.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["headers"]["accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
    return event


def body_of(response: dict) -> str:
    body = response["body"]
    return base64.b64decode(body).decode() if response.get("isBase64Encoded") else body


@pytest.mark.parametrize(
    ("path", "kind", "marker"),
    [
        ("/", "text/html", '<ol id="log"'),
        ("/web/chat.js", "text/javascript", "api/chat/new"),
        ("/web/chat-history.js", "text/javascript", "api/chat/messages"),
    ],
)
def test_through_the_lambda_handler(database_url, path, kind, marker):
    response = lambda_handler_for(make_settings(database_url))(page_event(path), None)
    assert response["statusCode"] == 200, response
    assert response["headers"]["content-type"].startswith(kind)
    assert response["headers"]["content-security-policy"] == CSP
    assert marker in body_of(response)


def test_through_the_lambda_handler_under_a_stage(database_url):
    event = page_event("/prod/")
    event["requestContext"]["stage"] = "prod"
    response = lambda_handler_for(make_settings(database_url, api_gateway_base_path="/prod"))(event, None)
    assert response["statusCode"] == 200
    # Relative links: the script and the API are asked for under /prod/ too.
    assert 'src="web/chat.js"' in body_of(response)


def test_every_deploy_target_ships_the_files():
    names = [f"app/web/{name}" for name in ASSETS]  # the pages, their stylesheets and every script they load
    vercel = json.loads((ROOT / "vercel.json").read_text(encoding="utf-8"))
    pattern = vercel["functions"]["api/index.py"]["includeFiles"]
    assert all(fnmatch.fnmatch(name, pattern) for name in names)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert all(any(fnmatch.fnmatch(name.rsplit("/", 1)[1], p) for p in data["app.web"]) for name in names)
