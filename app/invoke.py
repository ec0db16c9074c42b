"""Run the Lambda handlers locally on an event JSON file (`python -m app invoke EVENT.json`)."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from app.core.config import Settings
from app.errors import InvalidInput, SessionError

Kind = Literal["http", "schedule"]
SCHEDULER_ARN = re.compile(r"^arn:aws[a-z-]*:scheduler:")


class InvalidEvent(InvalidInput):
    """The file does not hold an API Gateway event or a scheduled event."""

    code = "invalid_event"


def event_kind(event: Any) -> Kind:
    """Which handler an event is for: "http" or "schedule", as the Lambda handlers serve them.

    http: API Gateway HTTP API (payload 2.0) and Lambda Function URL (the same format),
    API Gateway REST API (1.0), and ALB target events (with or without multi-value headers).
    schedule: an EventBridge rule's Scheduled Event, or an EventBridge Scheduler payload.
    Raises InvalidEvent for anything else. Formats: the AWS Lambda developer guide's event pages.
    """
    if not isinstance(event, dict):
        raise InvalidEvent("an event must be a JSON object")
    context = event.get("requestContext")
    if isinstance(context, dict):
        if event.get("version") == "2.0" and isinstance(context.get("http"), dict):
            return "http"
        if "httpMethod" in event and "resource" in event:
            return "http"
        if isinstance(context.get("elb"), dict) and "httpMethod" in event and "path" in event:
            return "http"
    if event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        return "schedule"
    # EventBridge Scheduler delivers whatever input the schedule defines: nothing ({}), or a
    # payload that carries the schedule's ARN through its context attributes.
    if not event or any(isinstance(value, str) and SCHEDULER_ARN.match(value) for value in event.values()):
        return "schedule"
    raise InvalidEvent(
        "not an API Gateway (REST or HTTP), ALB or Function URL event, "
        "an EventBridge scheduled event or a Scheduler payload"
    )


def load_event(path: str | Path) -> Any:
    """The parsed JSON of an event file; InvalidEvent if it cannot be read as JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidEvent(f"cannot read event {path}: {err}") from err


def run(path: str | Path, *, settings: Settings | None = None) -> dict[str, Any]:
    """Invoke the handler matching the event in path, print its result and return it."""
    # Without settings: the deployed module-level handlers, configured from the environment.
    event = load_event(path)
    kind = event_kind(event)
    context = SimpleNamespace(function_name="local-invoke", aws_request_id=str(uuid.uuid4()))
    if settings is None:
        from app import lambda_handler

        result = (lambda_handler.handler if kind == "http" else lambda_handler.cleanup_handler)(event, context)
    else:
        result = _run_with(settings, kind, event, context)
    print(json.dumps(result, indent=2), flush=True)
    return result


def _run_with(settings: Settings, kind: Kind, event: dict[str, Any], context: Any) -> dict[str, Any]:
    from app.lambda_handler import cleanup, http_handler
    from app.main import create_app
    from app.services import build_services

    services = build_services(settings, serverless=True)
    try:
        return (
            http_handler(create_app(services=services), settings)(event, context)
            if kind == "http"
            else cleanup(services)
        )
    finally:
        services.close()


def main(path: str, settings: Settings | None = None) -> int:
    """CLI entry: 0 on success, 1 if the handler failed or answered 5xx (or an error), 2 for an unusable event file.

    settings: as for `run` (None: the deployed handlers, configured from the environment).
    """
    try:
        result = run(path, settings=settings)
    except InvalidEvent as err:
        print(f"invoke: {err}", file=sys.stderr)
        return 2
    except SessionError as err:
        print(f"invoke: {err.code}: {err}", file=sys.stderr)
        return 1
    return 1 if "error" in result or int(result.get("statusCode", 200)) >= 500 else 0
