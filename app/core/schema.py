"""Is the database's schema at the code's migration? Read at first connect and by the health check."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Literal

logger = logging.getLogger(__name__)

SchemaState = Literal["current", "behind", "ahead", "missing"]
REVISION = "SELECT version_num FROM alembic_version"
_warned: set[tuple[str | None, str]] = set()


@functools.cache
def _script():  # noqa: ANN202
    # Parsed on first use, not at import: serverless cold starts that never ask pay nothing.
    from alembic.script import ScriptDirectory

    from app.core.migrate import alembic_config

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one INFO line per plugin
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest migration this code knows."""
    return _script().get_current_head() or ""


def state(revision: str | None) -> SchemaState:
    """Where a database at revision stands against the code: current, behind (migrate it), ahead, missing."""
    if revision is None:
        return "missing"
    if revision == head():
        return "current"
    try:
        known = _script().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        known = False
    return "behind" if known else "ahead"


def report(revision: str | None) -> SchemaState:
    """state(revision), logged once per process and revision when it is not current."""
    found = state(revision)
    if found != "current" and (revision, found) not in _warned:
        _warned.add((revision, found))
        if found == "ahead":
            logger.warning("database schema %s is newer than this code (%s): deploy the newer code", revision, head())
        else:
            logger.warning(
                "database schema is behind the code (database %s, code %s): run `python -m app migrate`",
                revision or "not migrated",
                head(),
            )
    return found


def on_first_connect(dbapi_conn, record) -> None:  # noqa: ANN001
    """Engine first_connect hook: read the revision and say once if the schema is behind the code."""
    autocommit = getattr(dbapi_conn, "autocommit", True)
    try:
        with dbapi_conn.cursor() as cursor:
            cursor.execute(REVISION)
            row = cursor.fetchone()
        revision = row[0] if row else None
    except Exception:  # noqa: BLE001 - no alembic_version table: never migrated
        revision = None
    finally:
        if not autocommit:
            with contextlib.suppress(Exception):
                dbapi_conn.rollback()
    try:
        report(revision)
    except Exception:  # noqa: BLE001 - a check must never break the connection it rides on
        logger.exception("could not compare the database schema with the code")
