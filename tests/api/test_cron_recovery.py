"""The cleanup run picks up messages a crashed worker left pending once their lease expired."""

from __future__ import annotations

from app.ledger import Ledger
from tests.conftest import make_settings
from tests.utils.apps import app_client
from tests.utils import aio

DEVICE = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"


def test_cron_cleanup_recovers_a_crashed_workers_message(database_url, engine):
    ledger = Ledger(engine, lease_seconds=30, default_ttl=86400, context_cap=20)
    aio.run(ledger.claim, "default", DEVICE, "book an appointment", external_id=None, metadata={"channel": "web"})
    with engine.begin() as conn:  # the worker died; its lease ran out
        conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
    settings = make_settings(database_url, cron_secret="c" * 32)
    with app_client(settings) as client:
        response = client.get("/api/cron/cleanup", headers={"Authorization": "Bearer " + "c" * 32})
    assert response.status_code == 200
    with engine.begin() as conn:
        rows = conn.exec_driver_sql(
            "SELECT role, status, agent FROM conversation_messages ORDER BY id"
        ).all()
        recovered = conn.exec_driver_sql("SELECT recovered FROM cleanup_runs").scalar()
        lock = conn.exec_driver_sql("SELECT active_agent FROM conversation_states").scalar()
    assert [tuple(r) for r in rows] == [("user", "done", "scheduling"), ("assistant", None, "scheduling")]
    assert (recovered, lock) == (1, "scheduling")
