"""GET /api/stats and `python -m app stats`: the same figures, per tenant, from the monitoring views."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from app.cleanup import run_cleanup
from tests.conftest import make_settings, subprocess_env
from tests.sessions.conftest import A, B
from tests.utils.factories import make_message, make_state

ROOT = Path(__file__).resolve().parents[2]


def seed(engine) -> None:
    make_state(engine, "s1", "acme", agent="scheduling", locked_ago=60)
    make_state(engine, "s2", "acme", agent="scheduling", locked_ago=120)
    make_state(engine, "b1", "acme", agent="billing", locked_ago=30)
    make_state(engine, "x1", "acme", agent="billing", lock_seconds=-10)  # expired, not yet released
    make_state(engine, "x2", "acme", agent="scheduling", lock_seconds=-10)
    make_state(engine, "idle", "acme")
    for n in range(3):
        make_message(engine, "s1", "acme", content=f"recent {n}", age_seconds=60 * n)
    make_message(engine, "s1", "acme", content="two hours ago", age_seconds=7200)
    make_state(engine, "g1", "globex", agent="scheduling", locked_ago=5000)
    make_state(engine, "g2", "globex", agent="billing", lock_seconds=-10)
    make_message(engine, "g1", "globex")


def run_stats(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "stats", *args],
        env=subprocess_env(database_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def parse_table(output: str) -> tuple[str, dict[str, str]]:
    title, header, rule, *rows = output.strip().splitlines()
    assert header.split() == ["figure", "value"] and set(rule.replace(" ", "")) == {"-"}
    return title, dict(row.split(None, 1) for row in rows)


class TestApi:
    def test_figures_of_the_callers_tenant(self, client, engine):
        seed(engine)
        stats = client.get("/api/stats", headers=A).json()
        assert stats["active_locks_by_agent"] == {"scheduling": 2, "billing": 1}
        assert stats["expired_pending"] == 2
        assert stats["messages_last_hour"] == 3
        ages = stats["avg_lock_age_seconds_by_agent"]
        assert set(ages) == {"scheduling", "billing"}
        assert 90 <= ages["scheduling"] < 150  # locked 60 s and 120 s before the read
        assert 30 <= ages["billing"] < 90
        assert stats["last_cleanup"] is None

        other = client.get("/api/stats", headers=B).json()
        assert other["active_locks_by_agent"] == {"scheduling": 1}
        assert (other["expired_pending"], other["messages_last_hour"]) == (1, 1)
        assert other["avg_lock_age_seconds_by_agent"]["scheduling"] >= 5000

    def test_empty_tenant(self, client):
        assert client.get("/api/stats", headers=A).json() == {
            "active_locks_by_agent": {},
            "expired_pending": 0,
            "avg_lock_age_seconds_by_agent": {},
            "messages_last_hour": 0,
            "last_cleanup": None,
        }

    def test_last_cleanup_is_the_latest_run(self, client, engine, database_url):
        seed(engine)
        run_cleanup(engine, make_settings(database_url, orphan_after_hours=0))
        second = run_cleanup(engine, make_settings(database_url, orphan_after_hours=0))
        stats = client.get("/api/stats", headers=B).json()  # cleanup runs are global: every tenant sees them
        assert stats["expired_pending"] == 0
        last = stats["last_cleanup"]
        assert (last["released"], last["deleted"], last["duration_ms"]) == (0, 0, second.duration_ms)
        with engine.begin() as conn:
            runs = conn.exec_driver_sql("SELECT released, finished_at FROM cleanup_runs ORDER BY id").all()
        assert [r.released for r in runs] == [3, 0]
        assert datetime.fromisoformat(last["at"]) == runs[1].finished_at


class TestCommandLine:
    def test_prints_the_same_figures_as_the_api(self, client, engine, database_url):
        seed(engine)
        run_cleanup(engine, make_settings(database_url, orphan_after_hours=0))
        make_state(engine, "x3", "acme", agent="billing", lock_seconds=-10)
        done = run_stats(database_url, "--tenant", "acme")
        assert done.returncode == 0, done.stderr
        title, figures = parse_table(done.stdout)
        api = client.get("/api/stats", headers=A).json()
        assert title == "stats for tenant acme"
        assert figures["active_locks_by_agent.scheduling"] == str(api["active_locks_by_agent"]["scheduling"]) == "2"
        assert figures["active_locks_by_agent.billing"] == "1"
        assert figures["expired_pending"] == str(api["expired_pending"]) == "1"
        assert figures["messages_last_hour"] == str(api["messages_last_hour"]) == "3"
        assert float(figures["avg_lock_age_seconds_by_agent.scheduling"]) == pytest.approx(
            api["avg_lock_age_seconds_by_agent"]["scheduling"], abs=30
        )
        assert figures["last_cleanup.released"] == str(api["last_cleanup"]["released"]) == "3"
        assert figures["last_cleanup.duration_ms"] == str(api["last_cleanup"]["duration_ms"])

    def test_all_tenants_by_default(self, engine, database_url):
        seed(engine)
        done = run_stats(database_url)
        assert done.returncode == 0, done.stderr
        title, figures = parse_table(done.stdout)
        assert title == "stats for all tenants"
        assert figures["active_locks_by_agent.scheduling"] == "3"
        assert figures["expired_pending"] == "3"
        assert figures["messages_last_hour"] == "4"
        assert figures["last_cleanup"] == "never"

    def test_empty_figures(self, engine, database_url):
        done = run_stats(database_url, "--tenant", "nobody")
        _, figures = parse_table(done.stdout)
        assert figures == {
            "active_locks_by_agent": "-",
            "expired_pending": "0",
            "avg_lock_age_seconds_by_agent": "-",
            "messages_last_hour": "0",
            "last_cleanup": "never",
        }

    def test_invalid_tenant_is_a_clear_error(self, engine, database_url):
        done = run_stats(database_url, "--tenant", "has space")
        assert done.returncode == 2
        assert "tenant id must be" in done.stderr
        assert "Traceback" not in done.stderr


class TestCliEdges:
    def test_a_database_never_migrated_is_told_to_run_migrate(self, pg_server):
        from tests.utils.postgres import scratch_database

        with scratch_database(pg_server) as empty:
            done = run_stats(empty)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.strip().splitlines()[-1] == (
            "python -m app stats: the database has no schema yet: run `python -m app migrate` first"
        )
        assert "Traceback" not in done.stderr

    def test_a_reader_that_goes_away_ends_it_quietly(self, database_url, engine):
        seed(engine)
        # `python -m app stats | head -1`: the pipe closes after the first line.
        stats = subprocess.Popen(
            [sys.executable, "-m", "app", "stats"],
            env=subprocess_env(database_url),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert stats.stdout is not None and stats.stderr is not None
        stats.stdout.close()  # the reader is gone before the table is written
        errors = stats.stderr.read()
        assert stats.wait(120) == 1
        assert "Traceback" not in errors and "BrokenPipeError" not in errors
