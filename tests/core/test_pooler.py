"""Behind PgBouncer in transaction mode, one setting is enough: DB_POOLER=transaction, or DB_PREPARE=false."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from app.core.config import Settings
from app.core.engine import make_engine
from app.errors import StoreUnavailable
from app.sessions import SessionService

DEVICE = "pooler-device-1"
# Each setting exactly as a pooler guide has people write it, in the environment.
ONE_SETTING = [{"DB_POOLER": "transaction"}, {"DB_PREPARE": "false"}]


def from_environment(monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str], **overrides) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None, **overrides)


@pytest.mark.parametrize("env", ONE_SETTING, ids=lambda env: ",".join(env))
def test_one_setting_works_behind_pgbouncer_transaction_mode(pooled_url, direct_url, monkeypatch, env, caplog):
    settings = from_environment(monkeypatch, pooled_url, env)
    with caplog.at_level(logging.INFO, logger="app.core.engine"):
        engine = make_engine(settings, serverless=True)
    try:
        sessions = SessionService(engine)
        # More runs than psycopg's prepare threshold (5), on connections PgBouncer shares.
        for agent in ("billing", "scheduling") * 4:
            assert sessions.set_session_lock(DEVICE, agent) is True
            assert sessions.get_session_lock(DEVICE) == agent
    finally:
        engine.dispose()
    said = [record.getMessage() for record in caplog.records if record.name == "app.core.engine"]
    assert any("statement timeout set per transaction (SET LOCAL)" in line for line in said), said


@pytest.mark.parametrize("env", ONE_SETTING, ids=lambda env: ",".join(env))
def test_one_setting_keeps_the_statement_timeout_behind_pgbouncer(pooled_url, direct_url, monkeypatch, env):
    settings = from_environment(monkeypatch, pooled_url, env, db_statement_timeout_ms=300)
    engine = make_engine(settings, serverless=True)
    blocker = sa.create_engine(direct_url, poolclass=sa.pool.NullPool)
    try:
        SessionService(engine).set_session_lock(DEVICE, "billing")
        with blocker.connect() as conn:
            conn.exec_driver_sql("SELECT 1 FROM conversation_states WHERE device_id = %(d)s FOR UPDATE", {"d": DEVICE})
            with pytest.raises(StoreUnavailable, match="QueryCanceled"):
                SessionService(engine).set_session_lock(DEVICE, "scheduling")
            conn.rollback()
        assert SessionService(engine).get_session_lock(DEVICE) == "billing"
    finally:
        engine.dispose()
        blocker.dispose()


def test_explicit_modes_still_win(monkeypatch, direct_url):
    settings = from_environment(
        monkeypatch, direct_url, {"DB_PREPARE": "false", "DB_STATEMENT_TIMEOUT_MODE": "startup"}
    )
    assert (settings.prepare, settings.statement_timeout_mode) == (False, "startup")
    pooled = from_environment(monkeypatch, direct_url, {"DB_POOLER": "transaction", "DB_PREPARE": "true"})
    assert (pooled.prepare, pooled.statement_timeout_mode) == (False, "local")
    direct = from_environment(monkeypatch, direct_url, {})
    assert (direct.prepare, direct.statement_timeout_mode) == (True, "startup")
