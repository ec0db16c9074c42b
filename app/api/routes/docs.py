"""GET /docs (Swagger UI) with its script, stylesheet and icon under /docs/assets, all from the app's own origin.

The files come from the fastapi-offline package's static folder (a dependency; nothing is
copied into this repository), so the page works with no network. The page is FastAPI's own
get_swagger_ui_html. Its one inline script (the Swagger UI set-up, which names the OpenAPI
URL) is allowed by its sha256 hash, computed from the page as sent, so the policy needs
neither 'unsafe-inline' nor 'unsafe-eval'.

ReDoc is not served: it injects its styles inline, which this policy refuses. Nor is the
OAuth2 redirect page: every scheme of this API is a bearer key, with no OAuth2 flow.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# (package, folder) that holds swagger-ui-bundle.js, swagger-ui.css and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")
# 'self' only, plus the hashes of the page's inline scripts; data: images are the icons in Swagger UI's stylesheet.
POLICY = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def policy_for(page: str) -> str:
    """The Content-Security-Policy for this HTML page: POLICY with one 'sha256-<base64>' per inline <script>."""
    hashes = (
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(page)
    )
    return POLICY.format(hashes=" ".join(hashes))


def install(app: FastAPI) -> None:
    """Serve /docs and /docs/assets/* on app, which must be made with docs_url=None and redoc_url=None.

    Fails at once (Starlette's AssertionError), not on the first request, if the assets package is missing.
    """
    app.mount(ASSETS_PATH, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    # Relative URLs (the page is /docs, so they name its siblings), as the chat page's are: they
    # hold behind a path prefix too, such as an API Gateway stage, where root_path is not set.
    assets = ASSETS_PATH.lstrip("/")
    openapi_url = (app.openapi_url or "").lstrip("/")

    # The app is read from the request, not closed over: FastAPI keeps each endpoint function in
    # module-level caches (4096 of each), so a closure over the app would keep every app made in a
    # process alive with all its routes (the tests make one per test).
    @app.get(DOCS_PATH, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI for the app's OpenAPI document (text/html)."""
        app = request.app
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers["Content-Security-Policy"] = policy_for(bytes(page.body).decode())
        page.headers["X-Content-Type-Options"] = "nosniff"
        page.headers["Referrer-Policy"] = "no-referrer"
        return page
