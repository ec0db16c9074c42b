"""/docs: Swagger UI from the app's own origin, under a strict Content-Security-Policy, with no network."""

from __future__ import annotations

import base64
import gc
import hashlib
import re
import weakref
from urllib.parse import urljoin, urlsplit

import pytest

from tests.conftest import make_settings
from tests.deploy.conftest import lambda_handler_for, sample_event
from tests.utils.apps import app_client
from tests.utils.browser import WAIT_SECONDS, console_errors, csp_violations, failed_requests

# The operation a rendered Swagger UI shows; the chat page's own API.
OPERATION = '[data-path="/api/chat"]'


@pytest.fixture
def client(settings):
    with app_client(settings) as client:
        yield client


def policy(header: str) -> dict[str, list[str]]:
    """A CSP header as {directive: [sources]}."""
    parts = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in parts}


def stage_event(path: str) -> dict:
    """The shipped API Gateway v2 sample, on the "prod" stage, asking for path."""
    event = sample_event("apigw-v2-health.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["stage"] = "prod"
    return event


def body_of(response: dict) -> str:
    body = response["body"]
    return base64.b64decode(body).decode() if response.get("isBase64Encoded") else body


def test_swagger_ui_renders_offline_with_no_violation(served, offline_browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    failed_requests(offline_browser), console_errors(offline_browser)  # forget the browser's own start-up
    offline_browser.get(f"{served.url}/docs")
    WebDriverWait(offline_browser, WAIT_SECONDS, poll_frequency=0.05).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, OPERATION), "Swagger UI never showed the /api/chat operation"
    )
    assert csp_violations(offline_browser) == []
    assert console_errors(offline_browser) == []
    assert failed_requests(offline_browser) == []


def test_docs_page_has_a_strict_policy_and_same_origin_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    rules = policy(response.headers["content-security-policy"])
    assert rules["default-src"] == ["'self'"]
    assert rules["img-src"] == ["'self'", "data:"]
    assert all("unsafe" not in source for sources in rules.values() for source in sources), rules
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert rules["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert "url: 'openapi.json'" in inline[0]

    page = str(response.url)
    urls = [urljoin(page, url) for url in re.findall(r'(?:src|href)="([^"]*)"', response.text)]
    assert len(urls) == 3, urls  # the script, the stylesheet, the icon
    kinds = {}
    for url in urls:
        assert urlsplit(url).netloc == urlsplit(page).netloc, url
        asset = client.get(url)
        assert asset.status_code == 200, url
        kinds[url.rsplit(".", 1)[1]] = asset.headers["content-type"]
    assert kinds["js"].startswith("text/javascript") and kinds["css"].startswith("text/css")
    assert kinds["png"] == "image/png"


def test_under_an_api_gateway_stage(database_url):
    handler = lambda_handler_for(make_settings(database_url, api_gateway_base_path="/prod"))
    page = handler(stage_event("/prod/docs"), None)
    assert page["statusCode"] == 200, page
    assert "script-src 'self' 'sha256-" in page["headers"]["content-security-policy"]
    # The page names its files relative to itself: under /prod/ too.
    assert 'src="docs/assets/swagger-ui-bundle.js"' in body_of(page)
    script = handler(stage_event("/prod/docs/assets/swagger-ui-bundle.js"), None)
    assert script["statusCode"] == 200
    assert "SwaggerUIBundle" in body_of(script)


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect", "/docs/assets/..%2F..%2Fmain.py", "/docs/assets/"])
def test_nothing_else_of_the_docs_is_served(client, path):
    assert client.get(path).status_code == 404


def test_an_app_that_served_its_docs_is_freed_once_dropped(settings):
    # FastAPI keeps endpoint functions in module-level caches: an endpoint closing over its app kept
    # every app a process made alive, with its routes and services (the suite grew by 8,000 objects a test).
    # Serverless: a server's first lifespan freezes what exists then (app/core/collector.py), this app too.
    with app_client(settings, serverless=True) as client:
        assert client.get("/docs").status_code == 200
        app = weakref.ref(client.app)
    del client
    gc.collect()
    assert app() is None, [type(r).__name__ for r in gc.get_referrers(app())]
