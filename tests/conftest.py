"""Fixtures: one real PostgreSQL per test run, one fresh database per run, truncated per test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import migrate
from app.core.config import Settings
from app.core.db import make_engine
from app.sessions import SessionService
from tests.utils.postgres import postgres_server, scratch_database

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with postgres_server() as (url, origin):
        logger.info("tests use PostgreSQL from %s", origin)
        yield url


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    with scratch_database(pg_server) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        migrate.upgrade(engine)
        engine.dispose()
        yield url


def make_settings(database_url: str, **overrides) -> Settings:
    """Settings for tests: never read from the developer's environment or .env."""
    values = {"database_url": database_url, "_env_file": None} | overrides
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
def _shared_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(make_settings(database_url))
    yield engine
    engine.dispose()


def truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        tables = conn.exec_driver_sql(
            "SELECT quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).scalars().all()
        if tables:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


@pytest.fixture
def engine(_shared_engine: Engine) -> Engine:
    truncate_all(_shared_engine)
    return _shared_engine


@pytest.fixture
def sessions(engine: Engine) -> SessionService:
    return SessionService(engine)
