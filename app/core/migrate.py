"""Run Alembic migrations from code (CLI, tests), with the repository's alembic.ini."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    import sqlalchemy as sa

    from app.core.engine import Engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    return Config(str(ROOT / "alembic.ini"))


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def upgrade(engine: Engine | sa.Engine, revision: str = "head") -> None:
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine | sa.Engine, revision: str = "base") -> None:
    _run(engine, command.downgrade, revision)


def _run(engine: Engine | sa.Engine, step, revision: str) -> None:
    from app.core.db import store_errors

    cfg = alembic_config()
    # An unreachable or silent server raises StoreUnavailable within DB_CONNECT_TIMEOUT.
    with store_errors(), engine.connect() as conn:
        # The app's engines autocommit; a migration must be all or nothing.
        conn.execution_options(isolation_level="READ COMMITTED")
        cfg.attributes["connection"] = conn
        step(cfg, revision)
        conn.commit()
