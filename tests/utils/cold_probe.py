"""In a fresh process: import the Lambda handler, send it events, and say which heavy packages each step loaded.

`python -m tests.utils.cold_probe '<requests as JSON>'` prints one JSON line:
{"import": [packages], "routes": [route modules], "requests": [{"status": int, "body": str, "loaded": [packages],
"routes": [route modules]}, ...]}, where route modules are the app.api.routes.* modules imported so far.
Each request is {"method", "path", "headers", "body"} (body: a JSON value or null), sent
as an API Gateway HTTP API (payload 2.0) event built from events/apigw-v2-health.json.
Only the standard library is imported before the handler, so every package listed was
loaded by the app (this package's __init__ files are empty).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

# What a request path should not load unless it needs it: the ORM and migrations, the
# OpenAI Agents SDK (its import name is `agents`) and its client, the browser driver.
HEAVY = ("sqlalchemy", "alembic", "agents", "openai", "selenium")
SAMPLE = Path(__file__).resolve().parents[2] / "events" / "apigw-v2-health.json"


def loaded() -> list[str]:
    """The HEAVY packages in sys.modules, sorted."""
    return sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))


def routes() -> list[str]:
    """The route modules imported so far (app/api/lazy.py imports each on its area's first request), sorted."""
    return sorted(name for name in sys.modules if name.startswith("app.api.routes."))


def http_event(method: str, path: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
    """The shipped v2 sample, sent to path with method, extra headers and a JSON body (None: no body)."""
    event = copy.deepcopy(json.loads(SAMPLE.read_text(encoding="utf-8")))
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    text = "" if body is None else json.dumps(body)
    event["headers"] |= {key.lower(): value for key, value in headers.items()} | {"content-length": str(len(text))}
    if body is not None:
        event["headers"]["content-type"] = "application/json"
        event["body"] = text
    return event


def main(requests: list[dict[str, Any]]) -> dict[str, Any]:
    import app.lambda_handler as entry

    out: dict[str, Any] = {"import": loaded(), "routes": routes(), "requests": []}
    for request in requests:
        event = http_event(request["method"], request["path"], request.get("headers", {}), request.get("body"))
        response = entry.handler(event, None)
        step = {"status": response["statusCode"], "body": response["body"], "loaded": loaded(), "routes": routes()}
        out["requests"].append(step)
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
