"""Alembic migrations: up and down, step by step, from code and from the `alembic` command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from app.core import migrate
from app.core import schema as app_schema
from tests.utils.postgres import scratch_database

TABLES = {
    "conversation_states",
    "conversation_messages",
    "conversation_audit",
    "cleanup_runs",
    "erased_channel_messages",
    "rate_limit_windows",
    "conversation_drafts",
}
VIEWS = {"active_locks_by_agent", "expired_locks_pending", "lock_duration_by_agent", "cleanup_history"}
FUNCTIONS = {"cs_merge_object", "cs_append_capped", "cs_merge_context"}


def schema(url: str) -> dict[str, set[str]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:

            def names(sql: str) -> set[str]:
                return set(conn.exec_driver_sql(sql).scalars())

            return {
                "tables": names("SELECT tablename FROM pg_tables WHERE schemaname = 'public'") - {"alembic_version"},
                "views": names("SELECT viewname FROM pg_views WHERE schemaname = 'public'"),
                "functions": names("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"),
                "revision": names("SELECT version_num FROM alembic_version")
                if conn.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar()
                else set(),
            }
    finally:
        engine.dispose()


@pytest.fixture
def empty_url(pg_server):
    with scratch_database(pg_server, prefix="mig") as url:
        yield url


def test_upgrade_head_then_downgrade_base_leaves_nothing(empty_url):
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    migrate.upgrade(engine)
    head = schema(empty_url)
    assert head["tables"] == TABLES and head["views"] == VIEWS and head["functions"] == FUNCTIONS
    assert head["revision"] == {migrate.head_revision()}
    migrate.downgrade(engine)
    assert schema(empty_url) == {"tables": set(), "views": set(), "functions": set(), "revision": set()}
    migrate.upgrade(engine)  # and back up again: downgrades leave nothing behind that blocks it
    assert schema(empty_url)["tables"] == TABLES
    engine.dispose()


def test_every_revision_steps_up_and_down(empty_url):
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    revisions = [r.revision for r in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()]
    revisions.reverse()  # oldest first
    assert revisions[0] == "0001" and len(revisions) >= 3
    for revision in revisions:
        migrate.upgrade(engine, revision)
        assert schema(empty_url)["revision"] == {revision}
    for previous in reversed(["base", *revisions[:-1]]):
        migrate.downgrade(engine, previous)
        assert schema(empty_url)["revision"] == (set() if previous == "base" else {previous})
    engine.dispose()


def test_alembic_command_from_the_repository_root(empty_url):
    env = {**os.environ, "DATABASE_URL": empty_url}
    for command, expected_tables in (("upgrade head", TABLES), ("downgrade base", set()), ("upgrade head", TABLES)):
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *command.split()],
            cwd=migrate.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert schema(empty_url)["tables"] == expected_tables


def test_monitoring_views_answer_on_an_empty_schema(empty_url):
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        for view in sorted(VIEWS):
            conn.exec_driver_sql(f"SELECT * FROM {view}").all()
    engine.dispose()


# Citus distributes a table by one column, and every unique key must contain it.
DISTRIBUTED = ("conversation_states", "conversation_messages", "conversation_audit", "conversation_drafts")


def test_every_unique_key_of_the_device_tables_leads_with_tenant_and_device(empty_url):
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            keys = conn.exec_driver_sql(
                "SELECT c.conrelid::regclass::text AS tbl, c.conname, "
                "       array_agg(a.attname ORDER BY k.ord) AS columns "
                "FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                "WHERE c.contype IN ('p', 'u') AND c.conrelid::regclass::text = ANY(%(tables)s) "
                "GROUP BY 1, 2",
                {"tables": list(DISTRIBUTED)},
            ).all()
            unique_indexes = (
                conn.exec_driver_sql(
                    "SELECT indexrelid::regclass::text FROM pg_index "
                    "WHERE indisunique AND indrelid::regclass::text = ANY(%(tables)s) "
                    "AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE contype IN ('p', 'u'))",
                    {"tables": list(DISTRIBUTED)},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert {row.tbl for row in keys} == set(DISTRIBUTED)
    assert {(row.tbl, tuple(row.columns[:2])) for row in keys} == {(t, ("tenant_id", "device_id")) for t in DISTRIBUTED}
    assert {row.conname: row.columns for row in keys}["conversation_messages_external_id"] == [
        "tenant_id",
        "device_id",
        "external_id",
    ]
    assert unique_indexes == []


U1 = "9b2e4f6a-1c3d-4e5f-8a7b-6c5d4e3f2a1b"
U2 = "0b7e7f7e-2222-4c4c-9d9d-000000000002"
# (tenant, device as stored before 0007): spellings the routes read as U1/U2, and ids they keep as they are.
OLD_ROWS = [
    ("acme", "{" + U1.upper() + "}"),  # only spelling of U1 in acme: becomes U1
    ("globex", "urn:uuid:" + U1),  # another tenant: its own U1
    ("acme", U2),  # canonical already ...
    ("acme", U2.upper()),  # ... so this twin cannot take its name
    ("acme", U2.replace("-", "")),  # nor this one
    ("acme", "15551230001"),  # not a UUID: kept
    ("acme", "a/b"),  # unaddressable, but no UUID to turn it into: kept
]


def device_rows(conn) -> dict[str, list[tuple[str, str]]]:
    return {
        table: conn.exec_driver_sql(f"SELECT tenant_id, device_id FROM {table} ORDER BY 1, 2").all()
        for table in ("conversation_states", "conversation_messages", "conversation_audit")
    }


def test_0007_stores_every_uuid_device_id_in_the_form_the_routes_use(empty_url):
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    try:
        migrate.upgrade(engine, "0006")
        with engine.begin() as conn:
            for tenant, device in OLD_ROWS:
                key = {"t": tenant, "d": device}
                conn.exec_driver_sql(
                    "INSERT INTO conversation_states (tenant_id, device_id) VALUES (%(t)s, %(d)s)", key
                )
                conn.exec_driver_sql(
                    "INSERT INTO conversation_messages (tenant_id, device_id, role, content, status) "
                    "VALUES (%(t)s, %(d)s, 'user', %(d)s, 'done')",
                    key,
                )
                conn.exec_driver_sql(
                    "INSERT INTO conversation_audit (tenant_id, device_id, event) VALUES (%(t)s, %(d)s, 'set')", key
                )
        migrate.upgrade(engine)
        with engine.begin() as conn:
            rows = device_rows(conn)
            contents = dict(
                conn.exec_driver_sql(
                    "SELECT content, device_id FROM conversation_messages WHERE tenant_id = 'acme'"
                ).all()
            )
        expected = sorted(
            [
                ("acme", U1),
                ("globex", U1),
                ("acme", U2),
                ("acme", f"{U2}~dup1"),
                ("acme", f"{U2}~dup2"),
                ("acme", "15551230001"),
                ("acme", "a/b"),
            ]
        )
        assert rows == {table: expected for table in rows}
        # Each twin keeps its own rows together under its new name, in the order the ids sort.
        assert contents[U2] == U2
        assert {contents[U2.upper()], contents[U2.replace("-", "")]} == {f"{U2}~dup1", f"{U2}~dup2"}
        assert contents["{" + U1.upper() + "}"] == U1
        migrate.downgrade(engine, "0006")  # nothing to undo: the canonical form was always valid
        with engine.begin() as conn:
            assert device_rows(conn)["conversation_states"] == expected
    finally:
        engine.dispose()


def test_the_schema_check_reads_the_same_chain_as_alembic():
    # The health check reads the head from the scripts' text (app/core/schema.py) so that a
    # request imports no Alembic; that reading must agree with Alembic's on every revision.
    script = ScriptDirectory.from_config(migrate.alembic_config())
    chain = app_schema._chain()
    assert chain is not None, "the migration scripts no longer read as one plain chain: the check falls back"
    head, known = chain
    assert head == script.get_current_head() == app_schema.head()
    assert known == {rev.revision for rev in script.walk_revisions()}
    assert app_schema.state(head) == "current"
    assert {app_schema.state(rev) for rev in known - {head}} == {"behind"}
    assert app_schema.state("ffffffffffff") == "ahead"
    assert app_schema.state(None) == "missing"


def test_an_unexpected_script_spelling_falls_back_to_alembic(tmp_path, monkeypatch):
    # A second head (two scripts revising the same parent) is not a chain the text reading
    # trusts: Alembic answers, and the scripts it reads are the repository's.
    for name, down in (("a.py", "None"), ("b.py", '"0001"'), ("c.py", '"0001"')):
        rev = name.removesuffix(".py")
        (tmp_path / name).write_text(f'revision = "{rev if rev != "a" else "0001"}"\ndown_revision = {down}\n')
    monkeypatch.setattr(app_schema, "VERSIONS", tmp_path)
    app_schema._chain.cache_clear()
    try:
        assert app_schema._chain() is None
        assert app_schema.head() == migrate.head_revision()
    finally:
        app_schema._chain.cache_clear()


def test_the_context_merge_is_inlined_into_a_generic_plan(engine):
    # FINISH runs as a prepared statement under a generic plan: a merge that is not inlined
    # is set up again on every turn (migration 0012). The merge must still do what it did.
    with engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("PREPARE merge(jsonb, jsonb, integer) AS SELECT cs_merge_context($1, $2, $3)")
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN (VERBOSE) EXECUTE merge('{}', '{}', 2)").scalars())
        merged = conn.exec_driver_sql(
            'EXECUTE merge(\'{"user_preferences": {"a": 1, "b": 2}, "recent_interactions": [1, 2]}\', '
            '\'{"user_preferences": {"b": null, "c": 3}, "recent_interactions": [3]}\', 2)'
        ).scalar()
    assert "cs_merge_context" not in plan, plan
    assert merged == {"user_preferences": {"a": 1, "c": 3}, "recent_interactions": [2, 3]}
