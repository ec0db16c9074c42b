"""API Gateway and scheduled events through the Lambda handlers, against the test database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core import migrate
from app.core.engine import Engine
from app.sessions import SessionService
from tests.conftest import make_settings
from tests.deploy.conftest import CRON_SECRET, ROOT, clean_env, lambda_handler_for, run_python, sample_event
from tests.utils.states import expire, row

DEVICE = "lambda-device-1"
BAD_KEY = "k" * 24
BAD_DATABASE_URL = "mysql://admin:pw-not-for-logs@db.internal/z"  # not PostgreSQL, and holding a password


def with_stage(event: dict, stage: str) -> dict:
    """The v2 sample as API Gateway sends it from a named stage: the path carries the stage."""
    path = f"/{stage}{event['rawPath']}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["routeKey"] = event["requestContext"]["routeKey"] = "ANY /{proxy+}"
    event["requestContext"]["stage"] = stage
    event["pathParameters"] = {"proxy": path.removeprefix(f"/{stage}/")}
    return event


def under_base_path(event: dict, base: str) -> dict:
    """The v1 sample as it arrives through a custom domain mapped at a base path."""
    event["path"] = f"{base}{event['path']}"
    event["requestContext"]["path"] = event["path"]
    event["requestContext"]["domainName"] = event["headers"]["Host"] = "api.example.com"
    event["multiValueHeaders"]["Host"] = ["api.example.com"]
    return event


def assert_healthy(response: dict) -> None:
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == {
        "status": "ok",
        "database": "ok",
        "migration": migrate.head_revision(),
        "expected_migration": migrate.head_revision(),
        "schema": "current",
    }


class TestHttpEvents:
    def test_v2_health(self, database_url: str):
        assert_healthy(lambda_handler_for(make_settings(database_url))(sample_event("apigw-v2-health.json"), None))

    def test_v1_health(self, database_url: str):
        response = lambda_handler_for(make_settings(database_url))(sample_event("apigw-v1-health.json"), None)
        assert_healthy(response)
        # REST responses carry both header maps.
        assert response["headers"]["content-type"] == "application/json"
        assert "multiValueHeaders" in response

    def test_v2_named_stage_needs_base_path(self, database_url: str):
        event = with_stage(sample_event("apigw-v2-health.json"), "prod")
        assert_healthy(lambda_handler_for(make_settings(database_url, api_gateway_base_path="/prod"))(event, None))
        # Without the setting the app sees /prod/api/health, which is no route of it.
        response = lambda_handler_for(make_settings(database_url))(event, None)
        assert response["statusCode"] == 404
        assert json.loads(response["body"])["error"]["code"] == "not_found"

    @pytest.mark.parametrize("base_path", ["prod", "/prod", "/prod/", " /prod/\n"])
    def test_every_spelling_of_a_base_path_means_the_same(self, database_url: str, base_path: str):
        event = with_stage(sample_event("apigw-v2-health.json"), "prod")
        assert_healthy(lambda_handler_for(make_settings(database_url, api_gateway_base_path=base_path))(event, None))

    def test_v1_custom_domain_base_path(self, database_url: str):
        event = under_base_path(sample_event("apigw-v1-health.json"), "/sessions")
        assert_healthy(lambda_handler_for(make_settings(database_url, api_gateway_base_path="sessions"))(event, None))
        assert lambda_handler_for(make_settings(database_url))(event, None)["statusCode"] == 404

    def test_v2_cron_with_bearer(self, database_url: str, engine: Engine):
        SessionService(engine).set_session_lock(DEVICE, "billing")
        expire(engine, DEVICE)
        event = sample_event("apigw-v2-cron-cleanup.json")
        event["headers"]["authorization"] = f"Bearer {CRON_SECRET}"
        response = lambda_handler_for(make_settings(database_url, cron_secret=CRON_SECRET))(event, None)
        assert response["statusCode"] == 200
        assert json.loads(response["body"])["released"] == 1
        assert row(engine, DEVICE)["active_agent"] is None

    def test_v2_cron_with_placeholder_bearer_is_refused(self, database_url: str):
        response = lambda_handler_for(make_settings(database_url, cron_secret=CRON_SECRET))(
            sample_event("apigw-v2-cron-cleanup.json"), None
        )
        assert response["statusCode"] == 401
        assert json.loads(response["body"])["error"]["code"] == "unauthorized"


MODULE_HANDLERS = """
import json, sys
from app import lambda_handler
event = json.load(open(sys.argv[2]))
fn = lambda_handler.handler if sys.argv[1] == "http" else lambda_handler.cleanup_handler
print(json.dumps(fn(event, None)))
"""


def module_call(kind: str, event: dict, tmp_path: Path, **env: str) -> dict:
    """Call app.lambda_handler's own handler or cleanup_handler in a fresh interpreter."""
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    done = run_python(MODULE_HANDLERS, kind, str(path), env=clean_env(PYTHONPATH=str(ROOT), **env), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class TestModuleHandlers:
    def test_handler_from_environment(self, database_url: str, tmp_path: Path):
        event = with_stage(sample_event("apigw-v2-health.json"), "live")
        assert_healthy(module_call("http", event, tmp_path, DATABASE_URL=database_url, API_GATEWAY_BASE_PATH="/live"))

    @pytest.mark.parametrize("event_file", ["scheduled-cleanup.json", "scheduler-cleanup.json", None])
    def test_cleanup_handler_ignores_event_shape(
        self, database_url: str, engine: Engine, tmp_path: Path, event_file: str | None
    ):
        SessionService(engine).set_session_lock(DEVICE, "scheduling")
        expire(engine, DEVICE)
        SessionService(engine).set_session_lock("still-live", "scheduling")
        # An EventBridge rule's event, a Scheduler payload, and Scheduler's empty input alike.
        event = sample_event(event_file) if event_file else {}
        result = module_call("cleanup", event, tmp_path, DATABASE_URL=database_url)
        assert result == {"released": 1, "deleted": 0, "duration_ms": result["duration_ms"]}
        assert row(engine, DEVICE)["active_agent"] is None
        assert row(engine, "still-live")["active_agent"] == "scheduling"

    def test_cleanup_handler_reuses_the_apps_lazy_engine(self, database_url: str, tmp_path: Path):
        code = """
from app import lambda_handler
database = lambda_handler.services.database
assert database._engine is None, "importing must not create the engine"
lambda_handler.cleanup_handler({}, None)
first = database._engine
lambda_handler.cleanup_handler({}, None)
assert first is not None and database._engine is first
print("ok")
"""
        done = run_python(code, env=clean_env(PYTHONPATH=str(ROOT), DATABASE_URL=database_url), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"

    @pytest.mark.parametrize(
        ("setting", "value", "secret", "problem"),
        [
            (
                "ADMIN_API_KEYS",
                f"acme {BAD_KEY}",
                BAD_KEY,
                "ADMIN_API_KEYS entry 1 is not of the form tenant:key",
            ),
            (
                "DATABASE_URL",
                BAD_DATABASE_URL,
                "pw-not-for-logs",
                "DATABASE_URL: must be a PostgreSQL URL such as postgresql://user:password@host:5432/database "
                "(schemes: postgres, postgresql, postgresql+psycopg)",
            ),
        ],
    )
    def test_bad_settings_are_logged_once_at_cold_start_and_answered_500(
        self, database_url: str, tmp_path: Path, setting: str, value: str, secret: str, problem: str
    ):
        code = """
import json, sys
from app import lambda_handler
event = json.load(open(sys.argv[1]))
print(json.dumps([lambda_handler.handler(event, None), lambda_handler.handler(event, None),
                  lambda_handler.cleanup_handler({}, None)]))
"""
        path = tmp_path / "event.json"
        path.write_text(json.dumps(sample_event("apigw-v2-health.json")))
        env = clean_env(PYTHONPATH=str(ROOT), **({"DATABASE_URL": database_url} | {setting: value}))
        done = run_python(code, str(path), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        first, second, scheduled = json.loads(done.stdout.strip().splitlines()[-1])
        for response in (first, second):
            assert response["statusCode"] == 500
            assert json.loads(response["body"])["error"] == {
                "code": "configuration_error",
                "message": "the service is not configured correctly",
            }
        assert scheduled["error"]["code"] == "configuration_error"
        refusals = [json.loads(line) for line in done.stderr.splitlines() if "refusing to serve" in line]
        assert [entry["msg"] for entry in refusals] == [f"refusing to serve: invalid settings: {problem}"]
        said = done.stderr + done.stdout
        assert "Traceback" not in said and value not in said and secret not in said

    def test_missing_database_url_is_a_clear_error_not_an_import_crash(self, tmp_path: Path):
        event = sample_event("apigw-v2-cron-cleanup.json")
        event["headers"]["authorization"] = f"Bearer {CRON_SECRET}"
        response = module_call("http", event, tmp_path, CRON_SECRET=CRON_SECRET)
        assert response["statusCode"] == 500
        error = json.loads(response["body"])["error"]
        assert error["code"] == "configuration_error" and "DATABASE_URL" in error["message"]
