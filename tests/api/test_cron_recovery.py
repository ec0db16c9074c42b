"""The cleanup run picks up messages a crashed worker left pending once their lease expired."""

from __future__ import annotations

from app.ledger import Ledger
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.apps import app_client

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
        rows = conn.exec_driver_sql("SELECT role, status, agent FROM conversation_messages ORDER BY id").all()
        recovered = conn.exec_driver_sql("SELECT recovered FROM cleanup_runs").scalar()
        lock = conn.exec_driver_sql("SELECT active_agent FROM conversation_states").scalar()
    assert [tuple(r) for r in rows] == [("user", "done", "scheduling"), ("assistant", None, "scheduling")]
    assert (recovered, lock) == (1, "scheduling")


def test_the_recovery_pass_starts_no_device_past_the_cleanup_deadline(database_url, engine):
    """CLEANUP_MAX_SECONDS bounds the agent turns the recovery runs too; what is left waits for the next run."""
    from app.cleanup import run_cleanup
    from app.pipeline import Pipeline
    from tests.utils.load_agents import registry

    ledger = Ledger(engine, lease_seconds=30, default_ttl=86400, context_cap=20)
    aio.run(ledger.claim, "default", DEVICE, "book an appointment", external_id=None, metadata={"channel": "web"})
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
    # A microsecond: the release and retention statements before it take longer, so the deadline has passed.
    settings = make_settings(database_url, cleanup_max_seconds=1e-6)
    result = run_cleanup(engine, settings, pipeline=Pipeline(engine, registry, settings))
    assert result.recovered == 0
    with engine.begin() as conn:
        statuses = conn.exec_driver_sql("SELECT status FROM conversation_messages").scalars().all()
    assert statuses == ["pending"]
