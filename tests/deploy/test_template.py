"""template.yaml: lints clean, keeps secrets out of the file, and points at real handlers."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

from cfnlint.decode import decode

from tests.deploy.conftest import ROOT

TEMPLATE, DECODE_ERRORS = decode(str(ROOT / "template.yaml"))
SECRETS = [
    "CRON_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_ACCESS_TOKEN",
    "ADMIN_API_KEYS",
    "DEVICE_ID_SECRET",
]


def functions() -> dict[str, dict]:
    return {
        name: resource["Properties"]
        for name, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def env(props: dict) -> dict:
    merged = dict(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"])
    return merged | props.get("Environment", {}).get("Variables", {})


def parameter_behind(value: object) -> str:
    """The parameter an environment value comes from: a Ref, or the Ref inside Fn::If [cond, Ref, NoValue]."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, then, otherwise = value["Fn::If"]
        assert otherwise == {"Ref": "AWS::NoValue"}
        value = then
    assert isinstance(value, dict) and set(value) == {"Ref"}, value
    return value["Ref"]


def test_cfn_lint_is_clean():
    venv_bin = str(Path(sys.executable).parent)
    cfn_lint = shutil.which("cfn-lint", path=venv_bin) or shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is missing: install the dev extra (pip install -e '.[dev]')"
    done = subprocess.run([cfn_lint, "template.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_secrets_come_from_noecho_parameters():
    assert DECODE_ERRORS == []
    http = env(functions()["HttpFunction"])
    for name in ["DATABASE_URL", *SECRETS]:
        parameter = TEMPLATE["Parameters"][parameter_behind(http[name])]
        assert parameter["NoEcho"] is True, name
        assert parameter.get("Default", "") == "", name
    # The cleanup function needs the database and, to send the replies of the messages it
    # recovers, the WhatsApp access token; none of the secrets that guard the HTTP routes.
    cleanup = env(functions()["CleanupFunction"])
    assert "DATABASE_URL" in cleanup and set(SECRETS) & set(cleanup) == {"WHATSAPP_ACCESS_TOKEN"}
    assert cleanup["WHATSAPP_ACCESS_TOKEN"] == http["WHATSAPP_ACCESS_TOKEN"]
    assert http["DB_POOL"] == cleanup["DB_POOL"] == "null"


def test_functions_point_at_real_handlers():
    handlers = {name: props["Handler"] for name, props in functions().items()}
    assert handlers == {
        "HttpFunction": "app.lambda_handler.handler",
        "CleanupFunction": "app.lambda_handler.cleanup_handler",
    }
    for handler in handlers.values():
        module, attribute = handler.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute))


def test_http_function_answers_before_api_gateway_gives_up():
    runtime = TEMPLATE["Globals"]["Function"]["Runtime"]
    assert runtime in {"python3.11", "python3.12"}
    http = functions()["HttpFunction"]
    assert http["Timeout"] < 30
    assert [event["Type"] for event in http["Events"].values()] == ["HttpApi"]
    # No Path/Method: the $default route, so the app sees every path unchanged (no stage prefix).
    assert all("Properties" not in event for event in http["Events"].values())


def test_cleanup_runs_on_a_schedule():
    cleanup = functions()["CleanupFunction"]
    assert [event["Type"] for event in cleanup["Events"].values()] == ["Schedule"]


def test_cleanup_stops_before_the_function_times_out():
    # Both functions can run a cleanup (the HTTP one through GET /api/cron/cleanup).
    for name, props in functions().items():
        assert 0 < float(env(props)["CLEANUP_MAX_SECONDS"]) < props["Timeout"] - 5, name


def test_functions_build_from_pyproject():
    """Each function is built by the Makefile's build-<name> target (pip install . into the artifacts),
    so `sam build` needs no requirements file. The build itself downloads the dependencies, so it is
    not run here."""
    makefile = (ROOT / "Makefile").read_text()
    for name, resource in TEMPLATE["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        assert resource.get("Metadata", {}).get("BuildMethod") == "makefile", name
        target = next(line for line in makefile.splitlines() if f"build-{name}" in line and line.endswith(":"))
        recipe = makefile.split(target, 1)[1].splitlines()[1]
        assert "pip install" in recipe and '--target "$(ARTIFACTS_DIR)" .' in recipe, recipe
    assert not (ROOT / "requirements.txt").exists()
