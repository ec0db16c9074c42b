"""Retention through app.cleanup.run_cleanup on backdated rows, as the admin API then sees them."""

from __future__ import annotations

from app.cleanup import run_cleanup
from tests.conftest import make_settings
from tests.sessions.conftest import A
from tests.utils.factories import make_audit, make_message, make_state, scalar
from tests.utils.states import row

DAY = 86400


def messages(engine):
    with engine.begin() as conn:
        return {
            r.content or f"<blank {r.external_id}>": (r.external_id, r.metadata)
            for r in conn.exec_driver_sql("SELECT content, external_id, metadata FROM conversation_messages")
        }


def test_retention_deletes_old_rows_keeps_recent_ones_and_records_the_run(client, engine, database_url):
    settings = make_settings(database_url, message_retention_days=1, orphan_after_hours=48)
    make_state(engine, "talking", "acme", agent="billing", idle_seconds=3 * DAY)  # live lock: kept however old
    make_state(engine, "recent", "acme", idle_seconds=3600)  # idle for an hour: kept
    make_state(engine, "orphan", "acme", idle_seconds=3 * DAY, context={"user_preferences": {"lang": "en"}})
    make_message(engine, "talking", "acme", content="old", age_seconds=2 * DAY)
    make_message(engine, "talking", "acme", content="new", age_seconds=3600)
    make_message(engine, "talking", "acme", content="old deduped", external_id="wamid.A", age_seconds=2 * DAY)
    make_message(engine, "talking", "acme", content="ancient deduped", external_id="wamid.B", age_seconds=8 * DAY)
    make_message(engine, "recent", "acme", content="old pending", status="pending", age_seconds=2 * DAY)
    make_audit(engine, "talking", "acme", event="set", age_seconds=2 * DAY)
    make_audit(engine, "talking", "acme", event="refresh", age_seconds=60)

    result = run_cleanup(engine, settings)

    kept = messages(engine)
    assert set(kept) == {"new", "old pending", "<blank wamid.A>"}
    assert kept["<blank wamid.A>"] == ("wamid.A", {})  # the channel id still deduplicates retries
    assert row(engine, "orphan", "acme") is None
    assert row(engine, "talking", "acme")["active_agent"] == "billing"
    assert row(engine, "recent", "acme") is not None
    assert [a["event"] for a in client.get("/api/sessions/talking/audit", headers=A).json()["items"]] == ["refresh"]
    # Deleted: two messages past retention (one of them past the dedup window) and the orphaned state.
    assert (result.released, result.deleted) == (0, 3)
    with engine.begin() as conn:
        run = conn.exec_driver_sql(
            "SELECT released, deleted_messages, deleted_states, duration_ms FROM cleanup_runs"
        ).one()
    assert tuple(run) == (0, 2, 1, result.duration_ms)
    assert client.get("/api/stats", headers=A).json()["last_cleanup"]["deleted"] == 3
    assert client.get("/api/sessions/orphan", headers=A).status_code == 404


def test_retained_history_reads_the_same_through_the_api(client, engine, database_url):
    make_state(engine, "dev", "acme", session_id="sess_new")
    make_message(engine, "dev", "acme", content="gone", session_id="sess_old", age_seconds=2 * DAY)
    make_message(engine, "dev", "acme", content="kept", session_id="sess_new", age_seconds=60)
    run_cleanup(engine, make_settings(database_url, message_retention_days=1))
    history = client.get("/api/sessions/dev/history", headers=A).json()["items"]
    assert [(h["session_id"], h["message_count"]) for h in history] == [("sess_new", 1)]
    assert scalar(engine, "SELECT count(*) FROM conversation_messages") == 1


def test_retention_off_keeps_every_message(engine, database_url):
    make_message(engine, "dev", "acme", content="ancient", age_seconds=400 * DAY)
    run_cleanup(engine, make_settings(database_url, message_retention_days=0, orphan_after_hours=0))
    assert set(messages(engine)) == {"ancient"}
