"""app.invoke: every sample event runs through the matching handler, in process and as the CLI would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core import migrate
from app.core.engine import Engine
from app.invoke import InvalidEvent, event_kind, run
from app.sessions import SessionService
from tests.conftest import make_settings
from tests.deploy.conftest import EVENTS, ROOT, clean_env, run_python, sample_event
from tests.utils.states import expire, row

DEVICE = "invoke-device-1"
PLACEHOLDER = "REPLACE_WITH_CRON_SECRET"
HEALTH_SAMPLES = [
    "apigw-v2-health.json",
    "apigw-v1-health.json",
    "function-url-health.json",
    "alb-health.json",
    "alb-multivalue-health.json",
]
HTTP_SAMPLES = [*HEALTH_SAMPLES, "apigw-v2-cron-cleanup.json"]
SCHEDULE_SAMPLES = ["scheduled-cleanup.json", "scheduler-cleanup.json"]


def test_every_sample_is_classified():
    shipped = sorted(path.name for path in EVENTS.glob("*.json"))
    assert shipped == sorted(HTTP_SAMPLES + SCHEDULE_SAMPLES)
    assert {name: event_kind(sample_event(name)) for name in shipped} == {
        **{name: "http" for name in HTTP_SAMPLES},
        **{name: "schedule" for name in SCHEDULE_SAMPLES},
    }
    assert event_kind({}) == "schedule"  # Scheduler with no input


@pytest.mark.parametrize(
    "event",
    [
        [],
        "text",
        {"Records": [{"eventSource": "aws:sqs"}]},
        {"requestContext": {"http": {"method": "GET"}}},  # neither v2 (no version) nor v1
        {"source": "aws.s3", "detail-type": "Object Created"},
        {"requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:x"}}},  # ALB without a request
    ],
)
def test_unknown_events_are_refused(event):
    with pytest.raises(InvalidEvent):
        event_kind(event)


@pytest.mark.parametrize("name", HEALTH_SAMPLES)
def test_run_health_samples(database_url: str, name: str, capsys):
    result = run(EVENTS / name, settings=make_settings(database_url))
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["migration"] == migrate.head_revision()
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.parametrize(
    ("name", "headers"), [("alb-health.json", "headers"), ("alb-multivalue-health.json", "multiValueHeaders")]
)
def test_alb_answers_in_the_header_form_it_was_asked_in(database_url: str, name: str, headers: str):
    # An ALB with multi-value headers on refuses a response without multiValueHeaders, and the reverse.
    result = run(EVENTS / name, settings=make_settings(database_url))
    other = {"headers", "multiValueHeaders"} - {headers}
    assert headers in result and not other & set(result)
    assert result["statusCode"] == 200


def test_run_cron_sample(database_url: str, engine: Engine):
    SessionService(engine).set_session_lock(DEVICE, "scheduling")
    expire(engine, DEVICE)
    # The sample carries a placeholder bearer: it works once CRON_SECRET has that value.
    result = run(EVENTS / "apigw-v2-cron-cleanup.json", settings=make_settings(database_url, cron_secret=PLACEHOLDER))
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["released"] == 1
    assert row(engine, DEVICE)["active_agent"] is None


@pytest.mark.parametrize("name", SCHEDULE_SAMPLES)
def test_run_schedule_samples(database_url: str, engine: Engine, name: str, capsys):
    SessionService(engine).set_session_lock(DEVICE, "scheduling")
    expire(engine, DEVICE)
    result = run(EVENTS / name, settings=make_settings(database_url))
    assert set(result) == {"released", "deleted", "duration_ms"} and result["released"] == 1
    assert row(engine, DEVICE)["active_agent"] is None
    assert json.loads(capsys.readouterr().out) == result


CLI = "import sys\nfrom app.invoke import main\nraise SystemExit(main(sys.argv[1]))"


def cli(path: Path, tmp_path: Path, **env: str):
    return run_python(CLI, str(path), env=clean_env(PYTHONPATH=str(ROOT), **env), cwd=tmp_path)


@pytest.mark.parametrize("name", HEALTH_SAMPLES)
def test_main_http_from_environment(database_url: str, tmp_path: Path, name: str):
    done = cli(EVENTS / name, tmp_path, DATABASE_URL=database_url)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["status"] == "ok"


def test_main_schedule_from_environment(database_url: str, engine: Engine, tmp_path: Path):
    SessionService(engine).set_session_lock(DEVICE, "scheduling")
    expire(engine, DEVICE)
    done = cli(EVENTS / "scheduled-cleanup.json", tmp_path, DATABASE_URL=database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["released"] == 1
    assert row(engine, DEVICE)["active_agent"] is None


def test_main_unauthorized_cron_exits_zero_with_401(database_url: str, tmp_path: Path):
    # A 4xx is a valid answer to the event, not a failure of the invocation.
    done = cli(EVENTS / "apigw-v2-cron-cleanup.json", tmp_path, DATABASE_URL=database_url, CRON_SECRET="other")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["statusCode"] == 401


def test_main_store_down(tmp_path: Path):
    http = cli(EVENTS / "apigw-v2-health.json", tmp_path, DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    assert http.returncode == 1
    assert json.loads(http.stdout)["statusCode"] == 503
    scheduled = cli(EVENTS / "scheduled-cleanup.json", tmp_path, DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    assert scheduled.returncode == 1
    assert "store_unavailable" in scheduled.stderr and scheduled.stdout == ""


def test_main_bad_event_files(tmp_path: Path):
    unknown = tmp_path / "sqs.json"
    unknown.write_text(json.dumps({"Records": []}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for path in (unknown, broken, tmp_path / "missing.json"):
        done = cli(path, tmp_path)
        assert done.returncode == 2, path
        assert done.stderr.startswith("invoke: ") and done.stdout == ""


def test_the_cli_without_database_url_uses_the_embedded_default(tmp_path: Path):
    """`python -m app invoke` as every other command: the checkout's embedded PostgreSQL (DATA_DIR), migrated
    like serve's, stopped when the command ends; stdout stays the handler's result alone."""
    data = tmp_path / "pg"
    env = clean_env(PYTHONPATH=str(ROOT), DATA_DIR=str(data))

    def invoke(event: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "app", "invoke", str(EVENTS / event)]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    http = invoke("apigw-v2-health.json")
    assert http.returncode == 0, http.stderr
    result = json.loads(http.stdout)
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["migration"] == migrate.head_revision()
    assert f"using embedded PostgreSQL in {data}" in http.stderr
    scheduled = invoke("scheduled-cleanup.json")
    assert scheduled.returncode == 0, scheduled.stderr
    assert set(json.loads(scheduled.stdout)) == {"released", "deleted", "duration_ms"}
    # PostgreSQL removes postmaster.pid when it shuts down cleanly.
    assert not (data / "postmaster.pid").exists(), "the embedded PostgreSQL was left running"


def test_the_cli_refuses_a_bad_event_file_before_starting_the_embedded_default(tmp_path: Path):
    data = tmp_path / "pg"
    env = clean_env(PYTHONPATH=str(ROOT), DATA_DIR=str(data))
    done = subprocess.run(
        [sys.executable, "-m", "app", "invoke", str(tmp_path / "missing.json")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("invoke: cannot read event") and done.stdout == ""
    assert not data.exists()
