"""Command line: `python -m app serve|migrate|cleanup|invoke|stats`.

Without DATABASE_URL every command uses the embedded PostgreSQL of this checkout
(DATA_DIR, default .data/postgres), started on demand.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from datetime import datetime
from typing import Any, TextIO

from pydantic import ValidationError

from app.core.config import Settings, settings_problem
from app.core.logging import configure_logging
from app.core.times import utc_text
from app.errors import ConfigurationError, StoreUnavailable

logger = logging.getLogger("app.cli")


def _database_url(settings: Settings, notice: TextIO | None = None) -> str:
    """DATABASE_URL, or the embedded PostgreSQL of this checkout (started here; notice: where to say so, stdout)."""
    if settings.database_url:
        return settings.database_url
    from app.core.embedded import start_embedded

    url = start_embedded(settings.data_dir)
    print(f"DATABASE_URL is not set: using embedded PostgreSQL in {settings.data_dir} ({url})", file=notice, flush=True)
    return url


def _resolved(settings: Settings, notice: TextIO | None = None) -> Settings:
    """Settings with DATABASE_URL resolved (the embedded PostgreSQL started when unset)."""
    return settings.model_copy(update={"database_url": _database_url(settings, notice)})


def _migrate(settings: Settings) -> None:
    from sqlalchemy import event

    from app.core import migrate, schema
    from app.core.engine import make_engine

    engine = make_engine(settings, serverless=True)
    # This engine brings the schema up to date: "the schema is behind" would be noise here.
    event.remove(engine.sqlalchemy, "first_connect", schema.on_first_connect)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    embedded = settings.database_url is None
    if embedded or args.migrate:
        # The embedded default (and `make run`) migrate first. An external database is
        # migrated by `python -m app migrate`: serve starts without it, answers degraded,
        # and reports the schema in /api/health once the database answers.
        settings = _resolved(settings)
        try:
            _migrate(settings)
        except StoreUnavailable as err:
            print(f"serve: cannot migrate, the database is unavailable: {err}", file=sys.stderr, flush=True)
            return 1
    host, port = args.host or settings.host, args.port or settings.port
    base = f"http://{host}:{port}"
    print(f"serving on {base}; chat page: {base}/; operator console: {base}/console", flush=True)
    if not settings.admin_api_keys:
        print("the console asks for an admin key: set ADMIN_API_KEYS=default:<key> to use it", flush=True)
    # uvicorn's workers read Settings from their environment: the resolved URL goes into
    # the child's environment only, and this process becomes uvicorn (same pid, same signals).
    env = {**os.environ, "DATABASE_URL": settings.database_url or ""}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:serve_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--log-level",
        settings.log_level.lower(),
        "--no-access-log",  # app.access logs each request, with its request id
        # On SIGTERM uvicorn stops accepting, lets running turns finish for this long, then
        # cancels them: their leases are given back and the next holder runs them again.
        "--timeout-graceful-shutdown",
        str(math.ceil(settings.shutdown_grace_seconds)),
    ]
    if not embedded:
        os.execve(sys.executable, command, env)  # this process becomes uvicorn (same pid, same signals)
    return _serve_beside_embedded(command, env)


def _serve_beside_embedded(command: list[str], env: dict[str, str]) -> int:
    """Run uvicorn as a child and wait: the embedded PostgreSQL this process started stops when it ends.

    SIGTERM is passed on to uvicorn; SIGINT (Ctrl-C) reaches it from the terminal directly,
    so it is not passed on twice (a second one makes uvicorn quit without its grace period).
    """
    import signal
    import subprocess

    child = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = child.wait()
    print("server stopped; stopping the embedded PostgreSQL", flush=True)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.core.migrate import head_revision

    _migrate(_resolved(settings))
    print(f"database is at migration {head_revision()}")
    return 0


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from app.cleanup import scheduled_cleanup
    from app.services import build_services

    services = build_services(_resolved(settings), serverless=True)
    try:
        result = scheduled_cleanup(services)
    finally:
        services.close()
    print(json.dumps(result.as_dict()))
    return 0


class NotMigrated(Exception):
    """The database has no schema: `migrate` was never run on it."""


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import AdminStore
    from app.core import schema
    from app.core.db import run
    from app.core.engine import make_engine
    from app.errors import InvalidInput, StoreError

    engine = make_engine(_resolved(settings), serverless=True)  # reads: no migration
    try:
        try:
            run(engine, schema.REVISION, {}, rows="scalar", read_only=True)
        except StoreUnavailable:
            raise
        except StoreError as err:  # no alembic_version table
            raise NotMigrated from err
        figures = AdminStore(engine).stats(args.tenant)
    except InvalidInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(stats_table(figures, args.tenant), flush=True)
    return 0


def stats_table(figures: dict[str, Any], tenant: str | None) -> str:
    """The figures of stats() as a two-column terminal table, keys named as in GET /api/stats."""
    lines: list[tuple[str, str]] = []
    for name, value in figures.items():
        if isinstance(value, dict) and value:
            lines += [(f"{name}.{key}", _cell(item)) for key, item in sorted(value.items())]
        elif isinstance(value, dict):
            lines.append((name, "-"))
        elif value is None:
            lines.append((name, "never"))
        else:
            lines.append((name, _cell(value)))
    width = max(len(name) for name, _ in [("figure", ""), *lines])
    title = f"stats for tenant {tenant}" if tenant is not None else "stats for all tenants"
    rows = [f"{'figure':<{width}}  value", f"{'-' * width}  {'-' * 5}"]
    rows += [f"{name:<{width}}  {value}" for name, value in lines]
    return "\n".join([title, *rows])


def _cell(value: Any) -> str:
    return utc_text(value) if isinstance(value, datetime) else str(value)


def cmd_invoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.invoke import InvalidEvent, event_kind, load_event
    from app.invoke import main as invoke

    if settings.database_url is not None:
        return invoke(args.event)  # the deployed handlers, configured from the environment
    try:
        event_kind(load_event(args.event))
    except InvalidEvent:
        return invoke(args.event)  # it says why, and exits 2, before any database starts
    # The embedded default, migrated as serve migrates it; its notice goes to stderr so that
    # stdout stays the handler's result, JSON a script can read.
    settings = _resolved(settings, notice=sys.stderr)
    _migrate(settings)
    return invoke(args.event, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the HTTP API with uvicorn",
        description="Serve the HTTP API with uvicorn. On SIGTERM running turns get SHUTDOWN_GRACE_SECONDS.",
    )
    serve.add_argument("--host", help="address to bind (default: the HOST setting, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: the PORT setting, 8000)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: 1)")
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="apply migrations first (default: only for the embedded database, which is always migrated)",
    )
    serve.set_defaults(run=cmd_serve)
    sub.add_parser(
        "migrate",
        help="apply database migrations (the only command that changes the schema)",
        description="Apply database migrations up to this code's newest; safe to run again.",
    ).set_defaults(run=cmd_migrate)
    sub.add_parser(
        "cleanup",
        help="release expired locks, apply message retention, answer messages a crashed worker left pending "
        "and send again replies not delivered in time",
        description="One scheduled cleanup run, within CLEANUP_MAX_SECONDS.",
    ).set_defaults(run=cmd_cleanup)
    invoke = sub.add_parser(
        "invoke",
        help="run the Lambda handler on an event file (see events/)",
        description="Run the Lambda entry points on one event, as AWS would, and print the result. Events: "
        "API Gateway REST (v1) and HTTP (v2) proxy events, Application Load Balancer events and Lambda "
        "Function URL events go to the HTTP handler; an EventBridge scheduled event runs the cleanup. "
        "Examples are in events/.",
    )
    invoke.add_argument("event", help="path to the event's JSON file")
    invoke.set_defaults(run=cmd_invoke)
    stats = sub.add_parser(
        "stats",
        help="print the figures of GET /api/stats as a table",
        description="Print the figures of GET /api/stats (locks by agent, messages, the last cleanup) as a table.",
    )
    stats.add_argument("--tenant", help="one tenant (default: all tenants)")
    stats.set_defaults(run=cmd_stats)
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as err:
        # One line, never the values: a setting may be a secret.
        print(f"{parser.prog} {args.command}: {settings_problem(err)}", file=sys.stderr, flush=True)
        return 2
    configure_logging(settings, serverless=False)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        return args.run(args, settings)
    except StoreUnavailable as err:
        print(f"{parser.prog} {args.command}: the database is unavailable: {err}", file=sys.stderr, flush=True)
        return 1
    except ConfigurationError as err:
        print(f"{parser.prog} {args.command}: {err}", file=sys.stderr, flush=True)
        return 2
    except NotMigrated:
        print(
            f"{parser.prog} {args.command}: the database has no schema yet: run `python -m app migrate` first",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except BrokenPipeError:
        # The reader went away (`python -m app stats | head`): end quietly, as the Python docs advise,
        # with stdout pointed at devnull so that the interpreter's own flush at exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
