"""SessionService against real PostgreSQL: every lock rule of the core issue."""

from __future__ import annotations

import math
import threading

import psycopg
import pytest
import sqlalchemy as sa

from app import (
    InvalidAgentKey,
    InvalidDeviceId,
    InvalidInput,
    InvalidTenantId,
    InvalidTTL,
    SessionService,
    StoreUnavailable,
)
from app.core.engine import make_engine
from tests.conftest import make_settings
from tests.utils.counting import count_statements, work
from tests.utils.states import expire, insert_locks, row

DEVICE = "3f2b8c1e-9d4a-4c7e-8b1a-2f6d5e4c3b2a"
WA_ID = "15551234567"


class TestGetSet:
    def test_no_lock_for_unknown_device(self, sessions: SessionService):
        assert sessions.get_session_lock(DEVICE) is None

    def test_set_then_get(self, sessions: SessionService, engine):
        assert sessions.set_session_lock(DEVICE, "scheduling") is True
        assert sessions.get_session_lock(DEVICE) == "scheduling"
        state = row(engine, DEVICE)
        assert state["version"] == 0
        assert state["session_ttl"] == 86400
        assert 86390 < state["remaining"] <= 86400

    def test_set_replaces_agent_and_bumps_version(self, sessions: SessionService, engine):
        sessions.set_session_lock(WA_ID, "scheduling")
        sessions.set_session_lock(WA_ID, "billing")
        assert sessions.get_session_lock(WA_ID) == "billing"
        assert row(engine, WA_ID)["version"] == 1

    def test_resetting_same_agent_keeps_locked_at(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "scheduling")
        first = row(engine, DEVICE)["locked_at"]
        sessions.set_session_lock(DEVICE, "scheduling")
        assert row(engine, DEVICE)["locked_at"] == first
        sessions.set_session_lock(DEVICE, "billing")
        assert row(engine, DEVICE)["locked_at"] > first

    def test_ttl_override_becomes_session_ttl(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing", ttl=120)
        state = row(engine, DEVICE)
        assert state["session_ttl"] == 120
        assert 110 < state["remaining"] <= 120
        # A later set without ttl keeps the row's own ttl, not the default.
        sessions.set_session_lock(DEVICE, "scheduling")
        assert row(engine, DEVICE)["session_ttl"] == 120

    def test_service_default_ttl(self, engine):
        service = SessionService(engine, default_ttl=600)
        service.set_session_lock(DEVICE, "billing")
        assert row(engine, DEVICE)["session_ttl"] == 600


class TestExpiry:
    def test_expired_lock_is_never_returned(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "scheduling")
        expire(engine, DEVICE)
        assert sessions.get_session_lock(DEVICE) is None
        # The row still holds the stale agent: only the read filters it out.
        assert row(engine, DEVICE)["active_agent"] == "scheduling"

    def test_expired_lock_cannot_be_touched_or_cleared(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "scheduling")
        expire(engine, DEVICE)
        assert sessions.touch_session_lock(DEVICE) is False
        assert sessions.clear_session_lock(DEVICE) is False
        assert row(engine, DEVICE)["version"] == 0

    def test_set_after_expiry_takes_a_fresh_lock(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "scheduling")
        expire(engine, DEVICE, seconds_ago=3600)
        before = row(engine, DEVICE)["locked_at"]
        sessions.set_session_lock(DEVICE, "scheduling")
        state = row(engine, DEVICE)
        assert state["locked_at"] > before
        assert sessions.get_session_lock(DEVICE) == "scheduling"


class TestClearTouch:
    def test_clear_reports_whether_a_lock_was_held(self, sessions: SessionService, engine):
        assert sessions.clear_session_lock(DEVICE) is False
        sessions.set_session_lock(DEVICE, "billing")
        assert sessions.clear_session_lock(DEVICE) is True
        assert sessions.get_session_lock(DEVICE) is None
        assert sessions.clear_session_lock(DEVICE) is False
        state = row(engine, DEVICE)
        assert (state["active_agent"], state["locked_at"], state["expires_at"]) == (None, None, None)
        assert state["version"] == 1

    def test_clear_keeps_row_and_context(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET context = '{\"k\": 1}'")
        sessions.clear_session_lock(DEVICE)
        assert row(engine, DEVICE)["context"] == {"k": 1}

    def test_touch_slides_expiry(self, sessions: SessionService, engine):
        assert sessions.touch_session_lock(DEVICE) is False
        sessions.set_session_lock(DEVICE, "scheduling", ttl=300)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() + interval '5 seconds'")
        assert sessions.touch_session_lock(DEVICE) is True
        state = row(engine, DEVICE)
        assert 290 < state["remaining"] <= 300
        assert state["active_agent"] == "scheduling"
        assert state["version"] == 1  # the direct UPDATE above does not count

    def test_touch_without_row_creates_nothing(self, sessions: SessionService, engine):
        sessions.touch_session_lock(DEVICE)
        assert row(engine, DEVICE) is None


class TestHandoff:
    def test_handoff_from_holder(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "manager")
        assert sessions.handoff_session_lock(DEVICE, "manager", "scheduling") is True
        assert sessions.get_session_lock(DEVICE) == "scheduling"
        assert row(engine, DEVICE)["version"] == 1

    def test_handoff_from_wrong_agent_changes_nothing(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing")
        assert sessions.handoff_session_lock(DEVICE, "manager", "scheduling") is False
        assert sessions.get_session_lock(DEVICE) == "billing"
        assert row(engine, DEVICE)["version"] == 0

    def test_handoff_from_none_when_free(self, sessions: SessionService):
        assert sessions.handoff_session_lock(DEVICE, None, "scheduling", ttl=60) is True
        assert sessions.get_session_lock(DEVICE) == "scheduling"

    def test_handoff_from_none_refused_while_locked(self, sessions: SessionService):
        sessions.set_session_lock(DEVICE, "billing")
        assert sessions.handoff_session_lock(DEVICE, None, "scheduling") is False
        assert sessions.get_session_lock(DEVICE) == "billing"

    def test_expired_lock_never_blocks_a_handoff(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing")
        expire(engine, DEVICE)
        assert sessions.handoff_session_lock(DEVICE, None, "scheduling") is True
        assert sessions.get_session_lock(DEVICE) == "scheduling"

    def test_expired_holder_cannot_hand_off(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing")
        expire(engine, DEVICE)
        assert sessions.handoff_session_lock(DEVICE, "billing", "scheduling") is False

    def test_handoff_ttl_becomes_session_ttl(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "manager")
        sessions.handoff_session_lock(DEVICE, "manager", "billing", ttl=45)
        state = row(engine, DEVICE)
        assert state["session_ttl"] == 45
        assert 40 < state["remaining"] <= 45


class TestTenants:
    def test_tenants_never_see_each_other(self, sessions: SessionService):
        sessions.set_session_lock(DEVICE, "billing", tenant_id="acme")
        assert sessions.get_session_lock(DEVICE) is None
        assert sessions.get_session_lock(DEVICE, tenant_id="globex") is None
        assert sessions.clear_session_lock(DEVICE, tenant_id="globex") is False
        assert sessions.touch_session_lock(DEVICE, tenant_id="globex") is False
        assert sessions.handoff_session_lock(DEVICE, "billing", "manager", tenant_id="globex") is False
        assert sessions.get_session_lock(DEVICE, tenant_id="acme") == "billing"

    def test_same_device_in_two_tenants_is_two_rows(self, sessions: SessionService, engine):
        sessions.set_session_lock(DEVICE, "billing", tenant_id="acme")
        sessions.set_session_lock(DEVICE, "scheduling", tenant_id="globex")
        assert sessions.get_session_lock(DEVICE, tenant_id="acme") == "billing"
        assert sessions.get_session_lock(DEVICE, tenant_id="globex") == "scheduling"
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM conversation_states").scalar() == 2


BAD_DEVICE_IDS = ["", "x" * 129, "has space", "new\nline", "tab\there", "nul\x00", "\x7f", None, 42, b"bytes"]
BAD_AGENTS = ["", "Scheduling", "1agent", "a" * 51, "sched uling", "billing;drop", "café", None, 7]
BAD_TTLS = [0, -1, 30 * 24 * 3600 + 1, 1.5, True, "60"]


class TestValidation:
    @pytest.mark.parametrize("device", BAD_DEVICE_IDS)
    def test_bad_device_id(self, sessions: SessionService, engine, device):
        for call in (
            lambda: sessions.get_session_lock(device),
            lambda: sessions.set_session_lock(device, "billing"),
            lambda: sessions.clear_session_lock(device),
            lambda: sessions.touch_session_lock(device),
            lambda: sessions.handoff_session_lock(device, None, "billing"),
        ):
            with pytest.raises(InvalidDeviceId):
                call()
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM conversation_states").scalar() == 0

    def test_good_device_ids(self, sessions: SessionService):
        for device in ("a", "x" * 128, WA_ID, DEVICE, "ünïcödé-id", "';DROP/**/TABLE/**/conversation_states;--"):
            assert sessions.set_session_lock(device, "billing") is True
            assert sessions.get_session_lock(device) == "billing"

    @pytest.mark.parametrize("agent", BAD_AGENTS)
    def test_bad_agent_key(self, sessions: SessionService, engine, agent):
        with pytest.raises(InvalidAgentKey):
            sessions.set_session_lock(DEVICE, agent)
        with pytest.raises(InvalidAgentKey):
            sessions.handoff_session_lock(DEVICE, None, agent)
        with pytest.raises(InvalidAgentKey):
            sessions.handoff_session_lock(DEVICE, agent if agent else "", "billing")
        assert row(engine, DEVICE) is None

    @pytest.mark.parametrize("ttl", BAD_TTLS)
    def test_bad_ttl(self, sessions: SessionService, engine, ttl):
        with pytest.raises(InvalidTTL):
            sessions.set_session_lock(DEVICE, "billing", ttl=ttl)
        with pytest.raises(InvalidTTL):
            sessions.handoff_session_lock(DEVICE, None, "billing", ttl=ttl)
        assert row(engine, DEVICE) is None

    def test_bounds_of_ttl_are_accepted(self, sessions: SessionService, engine):
        assert sessions.set_session_lock(DEVICE, "billing", ttl=1)
        assert sessions.set_session_lock(DEVICE, "billing", ttl=30 * 24 * 3600)
        assert row(engine, DEVICE)["session_ttl"] == 30 * 24 * 3600

    def test_bad_tenant(self, sessions: SessionService):
        with pytest.raises(InvalidTenantId):
            sessions.get_session_lock(DEVICE, tenant_id="")
        with pytest.raises(InvalidTenantId):
            sessions.set_session_lock(DEVICE, "billing", tenant_id="a b")

    def test_errors_share_one_base(self):
        for error in (InvalidDeviceId, InvalidAgentKey, InvalidTTL, InvalidTenantId):
            assert issubclass(error, InvalidInput)
            assert issubclass(error, ValueError)

    def test_bad_batch_size(self, sessions: SessionService):
        with pytest.raises(InvalidInput):
            sessions.cleanup_expired_sessions(batch_size=0)


class TestRoundTrips:
    def test_every_method_is_one_statement(self, sessions: SessionService, engine, backend):
        calls = [
            lambda: sessions.get_session_lock(DEVICE),
            lambda: sessions.set_session_lock(DEVICE, "manager", ttl=60),
            lambda: sessions.touch_session_lock(DEVICE),
            lambda: sessions.handoff_session_lock(DEVICE, "manager", "billing"),
            lambda: sessions.handoff_session_lock(DEVICE, "nobody", "billing"),
            lambda: sessions.clear_session_lock(DEVICE),
            lambda: sessions.handoff_session_lock(DEVICE, None, "billing"),
            lambda: sessions.get_session_lock(DEVICE),
        ]
        for call in calls:
            with count_statements(engine) as statements:
                call()
            assert len(work(statements)) == 1, statements
            # Behind a pooler the timeout is set per transaction: that is the only extra.
            assert len(statements) == (2 if backend == "pgbouncer" else 1)

    def test_local_timeout_mode_adds_only_set_local(self, database_url):
        """One statement plus the SET LOCAL that carries the timeout through a pooler."""
        engine = make_engine(make_settings(database_url, db_statement_timeout_mode="local"))
        service = SessionService(engine)
        try:
            with count_statements(engine) as statements:
                service.set_session_lock(DEVICE, "billing")
            assert len(statements) == 2
            assert statements[0].startswith("SET LOCAL statement_timeout")
        finally:
            engine.dispose()


class TestCleanup:
    def test_releases_expired_in_batches_and_spares_live_locks(self, sessions: SessionService, engine):
        insert_locks(engine, 2345, expired=True, prefix="old")
        insert_locks(engine, 300, expired=False, prefix="live")
        with count_statements(engine) as statements:
            released = sessions.cleanup_expired_sessions(batch_size=1000)
        assert released == 2345
        assert len(work(statements)) == 3  # 1000 + 1000 + 345
        with engine.begin() as conn:
            counts = conn.exec_driver_sql(
                "SELECT count(*) FILTER (WHERE active_agent IS NOT NULL),"
                " count(*) FILTER (WHERE active_agent IS NULL AND locked_at IS NULL AND expires_at IS NULL),"
                " count(*) FILTER (WHERE version = 1), count(*)"
                " FROM conversation_states"
            ).one()
        assert tuple(counts) == (300, 2345, 2345, 2645)
        assert sessions.cleanup_expired_sessions() == 0

    def test_exact_multiple_of_batch_size(self, sessions: SessionService, engine):
        insert_locks(engine, 2000, expired=True)
        with count_statements(engine) as statements:
            assert sessions.cleanup_expired_sessions(batch_size=1000) == 2000
        assert len(work(statements)) == math.ceil(2000 / 1000) + 1

    def test_max_seconds_bounds_the_run(self, sessions: SessionService, engine):
        insert_locks(engine, 500, expired=True)
        assert sessions.cleanup_expired_sessions(batch_size=100, max_seconds=0) == 100
        assert sessions.cleanup_expired_sessions(batch_size=1000) == 400

    def test_skips_rows_locked_by_live_traffic(self, sessions: SessionService, engine, database_url):
        insert_locks(engine, 10, expired=True)
        other = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        with other.connect() as conn:
            conn.exec_driver_sql("SELECT 1 FROM conversation_states WHERE device_id = 'dev1' FOR UPDATE")
            # Would wait for (and time out on) the held row without SKIP LOCKED.
            assert sessions.cleanup_expired_sessions() == 9
            conn.rollback()
        other.dispose()
        assert sessions.cleanup_expired_sessions() == 1

    def test_monitoring_counts_drop(self, sessions: SessionService, engine):
        insert_locks(engine, 40, expired=True, agent="billing", prefix="b")
        insert_locks(engine, 25, expired=False, agent="scheduling", prefix="s")
        assert monitoring(engine)["expired_count"] == 40
        sessions.cleanup_expired_sessions(batch_size=7)
        after = monitoring(engine)
        assert after["expired_count"] == 0
        assert after["by_agent"] == {"scheduling": 25}


def monitoring(engine) -> dict:
    """The three queries of the old runbook, verbatim."""
    with engine.begin() as conn:
        by_agent = conn.exec_driver_sql(
            "SELECT active_agent, COUNT(*) as count FROM conversation_states "
            "WHERE active_agent IS NOT NULL GROUP BY active_agent;"
        ).all()
        expired = conn.exec_driver_sql(
            "SELECT COUNT(*) as expired_count FROM conversation_states "
            "WHERE active_agent IS NOT NULL AND locked_at < NOW() - INTERVAL '24 hours';"
        ).scalar()
        durations = conn.exec_driver_sql(
            "SELECT active_agent, AVG(EXTRACT(EPOCH FROM (NOW() - locked_at))) as avg_duration_seconds "
            "FROM conversation_states WHERE active_agent IS NOT NULL GROUP BY active_agent;"
        ).all()
    return {
        "by_agent": {agent: count for agent, count in by_agent},
        "expired_count": expired,
        "durations": {agent: float(seconds) for agent, seconds in durations},
    }


class TestMonitoringQueries:
    def test_runbook_queries(self, sessions: SessionService, engine):
        sessions.set_session_lock("a", "scheduling")
        sessions.set_session_lock("b", "scheduling")
        sessions.set_session_lock("c", "billing")
        insert_locks(engine, 3, expired=True, agent="billing", prefix="old")
        result = monitoring(engine)
        assert result["by_agent"] == {"scheduling": 2, "billing": 4}
        assert result["expired_count"] == 3
        assert result["durations"]["scheduling"] < 60
        assert result["durations"]["billing"] > 3600


class TestStoreUnavailable:
    def test_unreachable_database_raises_store_unavailable(self):
        settings = make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none", db_connect_timeout=2)
        engine = make_engine(settings)
        with pytest.raises(StoreUnavailable) as caught:
            SessionService(engine).get_session_lock(DEVICE)
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError | psycopg.OperationalError)

    @pytest.mark.parametrize("mode", ["startup", "local"])
    def test_statement_timeout_surfaces_as_store_unavailable(self, database_url, engine, mode, backend):
        if backend == "pgbouncer" and mode == "startup":
            pytest.skip("PgBouncer refuses startup options: behind it the timeout is set with SET LOCAL")
        SessionService(engine).set_session_lock(DEVICE, "billing")
        slow = make_engine(make_settings(database_url, db_statement_timeout_ms=300, db_statement_timeout_mode=mode))
        blocker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        try:
            with blocker.connect() as conn:
                conn.exec_driver_sql("SELECT 1 FROM conversation_states FOR UPDATE")
                with pytest.raises(StoreUnavailable, match="QueryCanceled"):
                    SessionService(slow).set_session_lock(DEVICE, "scheduling")
                conn.rollback()
        finally:
            slow.dispose()
            blocker.dispose()
        assert SessionService(engine).get_session_lock(DEVICE) == "billing"


class TestConcurrency:
    THREADS = 16
    OPS = 200

    def test_no_duplicates_no_lost_updates(self, database_url, engine):
        """16 threads x 200 compare-and-set increments on 4 shared devices."""
        hammer = make_engine(make_settings(database_url, db_pool_size=self.THREADS))
        service = SessionService(hammer)
        devices = [f"shared-{i}" for i in range(4)]
        for device in devices:
            service.set_session_lock(device, "n0")
        wins = {device: 0 for device in devices}
        counter_lock = threading.Lock()
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            device = devices[index % len(devices)]
            try:
                for step in range(self.OPS):
                    if step % 5 == 4:
                        service.touch_session_lock(device)
                        with counter_lock:
                            wins[device] += 1
                        continue
                    current = service.get_session_lock(device)
                    following = f"n{int(current[1:]) + 1}"
                    if service.handoff_session_lock(device, current, following):
                        with counter_lock:
                            wins[device] += 1
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        hammer.dispose()
        assert not errors, errors[:3]
        touches_per_device = (self.THREADS // len(devices)) * (self.OPS // 5)
        with engine.begin() as conn:
            rows = conn.exec_driver_sql(
                "SELECT device_id, active_agent, version FROM conversation_states ORDER BY device_id"
            ).all()
        assert [r.device_id for r in rows] == sorted(devices)
        for device_id, agent, version in rows:
            handoffs = wins[device_id] - touches_per_device
            assert handoffs > 0
            # Every successful handoff moved the counter by exactly one: none lost.
            assert agent == f"n{handoffs}"
            assert version == wins[device_id]
