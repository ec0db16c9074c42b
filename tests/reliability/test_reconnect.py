"""A connection the server kills between requests costs the user nothing."""

from __future__ import annotations

import sqlalchemy as sa

from app.core.engine import lock_pools
from tests.utils.agents import wait_for
from tests.utils.apps import app_client

DEVICE = "1d4f6a8c-0b2e-4c6d-8e0f-1a2b3c4d5e6f"


APP_BACKENDS = "FROM pg_stat_activity WHERE application_name = 'agent-sessions' AND datname = current_database()"


def terminate_app_connections(database_url: str) -> int:
    """pg_terminate_backend on every connection of the app, as a DBA or a failover would; waits until they are gone."""
    killer = sa.create_engine(database_url, poolclass=sa.pool.NullPool, connect_args={"application_name": "killer"})
    try:
        with killer.connect() as conn:
            killed = conn.exec_driver_sql(f"SELECT count(pg_terminate_backend(pid)) {APP_BACKENDS}").scalar()
        # A backend that has exited has closed its socket: the app's side of it is readable.
        assert wait_for(lambda: _count(killer) == 0, seconds=10)
        return killed
    finally:
        killer.dispose()


def _count(engine: sa.Engine) -> int:
    # The listener (app/streams/signals.py) connects again at once: its new backend is not counted.
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            f"SELECT count(*) {APP_BACKENDS} AND query NOT LIKE 'LISTEN agent_sessions_%%'"
        ).scalar()


def test_killed_pooled_connections_are_replaced_without_errors(settings, engine, database_url):
    with app_client(settings) as client:
        headers = {"X-Device-ID": DEVICE}
        assert client.post("/api/chat", json={"message": "book"}, headers=headers).status_code == 200
        assert lock_pools(client.services.database.engine).idle() >= 1  # idle, waiting for reuse
        assert terminate_app_connections(database_url) >= 1
        for text in ("monday", "3pm"):
            response = client.post("/api/chat", json={"message": text}, headers=headers)
            assert response.status_code == 200
            body = response.json()
            assert body["degraded"] is False and body["agent"] == "scheduling"
        assert client.get("/api/health").json()["status"] == "ok"
