"""Write the settings reference (docs/operations/settings.md) and .env.example from `Settings`.

Run from the repository root:

    .venv/bin/python docs/gen_settings.py           # rewrite both files
    .venv/bin/python docs/gen_settings.py --check   # exit 1, naming the stale files, if either is out of date

Every field of `app.core.config.Settings` is listed with its environment variable, type (with its
bounds), default and description (the field's docstring). Both files are committed so that they
can be read without running anything; tests/docs/test_settings_reference.py fails while either
differs from what this script writes, so a setting cannot be added, removed or redocumented
without the reference following.
"""

from __future__ import annotations

import ast
import enum
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is imported from this checkout

from app.core.config import Settings  # noqa: E402 (needs the path above when run as a script)

REFERENCE = ROOT / "docs" / "operations" / "settings.md"
ENV_EXAMPLE = ROOT / ".env.example"

# Which part of the reference each setting belongs to, by name prefix (first match wins).
GROUPS = [
    ("Database", ("database_url", "db_", "data_dir")),
    ("Sessions and agent turns", ("default_session_ttl", "lease_", "chat_wait", "context_", "agent", "max_conc")),
    ("Sessions and agent turns", ("shutdown_", "burst_", "stream_", "events_stream", "openai_", "admission_")),
    ("Cleanup and retention", ("cleanup_", "recovery_", "cron_", "message_retention", "orphan_")),
    ("WhatsApp", ("whatsapp_", "webhook_")),
    ("Admin API and web clients", ("admin_", "import_", "device_id", "web_tenants", "rate_limit", "event_streams")),
    ("Logs and metrics", ("log_", "metrics")),
    ("Server and serverless", ("api_gateway", "host", "port")),
]


def env_name(name: str) -> str:
    """The environment variable of a field: pydantic-settings reads the field name, case-insensitively."""
    return name.upper()


def group_of(name: str) -> str:
    """The reference section a setting is listed under; ValueError for a name no group claims."""
    for title, prefixes in GROUPS:
        if name.startswith(prefixes):
            return title
    raise ValueError(f"docs/gen_settings.py: add {name} to GROUPS")


def describe_type(annotation: Any) -> str:
    """A reader's name for a field's type: `integer`, `one of: a, b`, `secret`, `list`..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return describe_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return describe_type(args[0]) if len(args) == 1 else " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is tuple:
        return "comma-separated list"
    if origin is dict:
        return "mapping"
    names = {int: "integer", float: "number", bool: "boolean", str: "text", Path: "path", SecretStr: "secret"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
    raise ValueError(f"docs/gen_settings.py: no name for the type {annotation!r}")


def bounds(field: FieldInfo) -> str:
    """The numeric bounds of a field (`1 to 100`, `> 0`, `>= 0`), or ''."""
    low = high = ""
    for item in field.metadata:
        for attribute, sign in (("ge", ">="), ("gt", ">")):
            if getattr(item, attribute, None) is not None:
                low = f"{sign} {getattr(item, attribute):,}"
        if getattr(item, "le", None) is not None:
            high = f"{item.le:,}"
        if getattr(item, "lt", None) is not None:
            high = f"< {item.lt:,}"
    if low.startswith(">=") and high and not high.startswith("<"):
        return f"{low[3:]} to {high}"
    return ", ".join(part if part[0] in "<>" else f"<= {part}" for part in (low, high) if part)


def default_text(field: FieldInfo) -> str | None:
    """The default as it would be written in the environment; None when the setting is unset by default."""
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}:{item}" for key, item in value.items())
    return str(value)


def docstrings() -> dict[str, str]:
    """Each Settings field's docstring (the string literal right under it), read from the source.

    Read here rather than by pydantic's use_attribute_docstrings, which parses the module's
    source whenever the class is built: that is every cold start of the app.
    """
    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    found: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            found[node.target.id] = inspect.cleandoc(after.value.value)
    return found


DOCSTRINGS = docstrings()


def description(name: str) -> str:
    """Setting name's docstring on one line; ValueError if it has none (every setting must say what it does)."""
    text = DOCSTRINGS.get(name)
    if not text:
        raise ValueError(f"the setting {name} has no docstring")
    return " ".join(text.split())


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def reference() -> str:
    """The settings reference page (markdown), grouped as GROUPS says, in Settings' field order."""
    sections: dict[str, list[str]] = {}
    for name, field in Settings.model_fields.items():
        default = default_text(field)
        kind = describe_type(field.annotation)
        limits = bounds(field)
        row = (
            f"| `{env_name(name)}` | {cell(kind)}{f' ({limits})' if limits else ''} "
            f"| {f'`{cell(default)}`' if default is not None else 'unset'} | {cell(description(name))} |"
        )
        sections.setdefault(group_of(name), []).append(row)
    out = [
        "# Settings reference",
        "",
        "<!-- Generated by docs/gen_settings.py from app.core.config.Settings: edit the docstrings there,",
        "     then run `.venv/bin/python docs/gen_settings.py`. tests/docs/ fails while this page is stale. -->",
        "",
        "Every setting is an environment variable (names are case-insensitive), read once when the process",
        "starts; a `.env` file in the working directory is read too (`.env.example` lists every setting with",
        "its default). A value that breaks a rule below stops `python -m app` with exit status 2 and one line",
        "naming the setting, never its value; the serverless entry points answer `500 configuration_error`.",
        "Secrets and `DATABASE_URL` lose surrounding whitespace.",
        "",
        "OpenTelemetry reads its own `OTEL_*` variables: see [Telemetry](../telemetry.md).",
    ]
    for title, rows in sections.items():
        out += ["", f"## {title}", "", "| variable | type | default | what it does |", "| --- | --- | --- | --- |"]
        out += rows
    return "\n".join(out) + "\n"


def env_example() -> str:
    """.env.example: every setting, commented out at its default, under a one-line description."""
    out = [
        "# Every setting of agent-sessions, at its default (generated by docs/gen_settings.py from",
        "# app.core.config.Settings; the full reference is docs/operations/settings.md).",
        "# Copy this file to .env and uncomment what you change; .env is never committed.",
    ]
    group = None
    for name, field in Settings.model_fields.items():
        if group_of(name) != group:
            group = group_of(name)
            out += ["", f"# --- {group} ---"]
        default = default_text(field)
        out.append(f"# {description(name)}")
        out.append(f"# {env_name(name)}={default if default is not None else ''}")
    return "\n".join(out) + "\n"


def outputs() -> dict[Path, str]:
    """What each generated file must hold."""
    return {REFERENCE: reference(), ENV_EXAMPLE: env_example()}


def stale() -> list[Path]:
    """The generated files whose committed text differs from what this script writes."""
    return [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]


def main(argv: list[str]) -> int:
    """Rewrite the files (exit 0), or with --check report stale ones (exit 1)."""
    if "--check" in argv:
        old = stale()
        for path in old:
            print(
                f"{path.relative_to(ROOT)} is out of date: run .venv/bin/python docs/gen_settings.py", file=sys.stderr
            )
        return 1 if old else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
