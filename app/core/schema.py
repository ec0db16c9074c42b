"""Is the database's schema at the code's migration? Read at first connect and by the health check."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

SchemaState = Literal["current", "behind", "ahead", "missing"]
REVISION = "SELECT version_num FROM alembic_version"
_warned: set[tuple[str | None, str]] = set()


# Where alembic.ini's script_location (%(here)s/migrations) keeps the migration scripts.
VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
# `revision = "0011"` and `down_revision = "0010"` (or None), as every script here spells them.
_ASSIGNMENT = re.compile(r"""^(revision|down_revision) = (?:"([^"]+)"|'([^']+)'|None)$""", re.MULTILINE)


@functools.cache
def _script():
    # Parsed on first use, not at import: serverless cold starts that never ask pay nothing.
    from alembic.script import ScriptDirectory

    from app.core.migrate import alembic_config

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one INFO line per plugin
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _chain() -> tuple[str, frozenset[str]] | None:
    """(head, every revision), read from the scripts' text; None unless they form one plain chain.

    The health check and the first connection ask for the head; reading it here spares a
    request path Alembic and SQLAlchemy (about as long to import as the rest of the app).
    Anything this reading does not expect (a merge, a branch, another spelling, two
    heads) returns None, and Alembic answers instead.
    """
    revisions: dict[str, str | None] = {}
    for path in sorted(VERSIONS.glob("*.py")):
        if path.name.startswith("__init__"):
            continue
        found = {m[1]: m[2] or m[3] or None for m in _ASSIGNMENT.finditer(path.read_text(encoding="utf-8"))}
        if "revision" not in found or "down_revision" not in found or found["revision"] in revisions:
            return None
        revisions[str(found["revision"])] = found["down_revision"]
    parents = {down for down in revisions.values() if down is not None}
    heads = set(revisions) - parents
    if len(heads) != 1 or not parents <= set(revisions):
        return None
    return heads.pop(), frozenset(revisions)


def head() -> str:
    """The newest migration this code knows."""
    chain = _chain()
    if chain is not None:
        return chain[0]
    return _script().get_current_head() or ""


def state(revision: str | None) -> SchemaState:
    """Where a database at revision stands against the code: current, behind (migrate it), ahead, missing."""
    if revision is None:
        return "missing"
    if revision == head():
        return "current"
    chain = _chain()
    if chain is not None:
        return "behind" if revision in chain[1] else "ahead"
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


def on_first_connect(dbapi_conn, record) -> None:
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
    except Exception:  # a check must never break the connection it rides on
        logger.exception("could not compare the database schema with the code")
