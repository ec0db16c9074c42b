"""Long statements go to PostgreSQL with numbered placeholders converted once (app/core/placeholders.py)."""

from __future__ import annotations

import pytest

from app.core.db import arun, run
from app.core.placeholders import CACHED_BY_PSYCOPG, numbered
from app.ledger import statements
from tests.utils import aio
from tests.utils.counting import count_statements, work

# Past psycopg's cache limit by a comment, as the ledger's are by theirs.
PADDING = "-- " + "x" * CACHED_BY_PSYCOPG + "\n"
# A name used twice, a literal percent sign, a cast right after a placeholder.
LONG = PADDING + "SELECT %(a)s::int + %(b)s::int + %(a)s::int AS total, '100%%' AS pct, %(label)s::text AS label"


def test_a_short_statement_is_left_to_psycopg():
    assert numbered("SELECT %(a)s") is None
    assert numbered("SELECT 'é' || %(a)s " + "-" * (CACHED_BY_PSYCOPG - 40)) is None


def test_a_long_statement_is_numbered_as_psycopg_numbers_it():
    long = numbered(LONG)
    assert long is not None
    assert long.query.endswith("SELECT $1::int + $2::int + $1::int AS total, '100%' AS pct, $3::text AS label")
    assert long.names == ("a", "b", "label")
    assert long.values({"label": "x", "b": 2, "a": 1, "unused": 0}) == [1, 2, "x"]
    assert numbered(LONG) is long  # converted once


@pytest.mark.parametrize("token", ["%s", "%(a)b", "%(a)t", "50% off"])
def test_any_other_placeholder_is_refused(token):
    with pytest.raises(ValueError, match="only %\\(name\\)s placeholders"):
        numbered(PADDING + f"SELECT {token}")


def test_a_missing_parameter_names_itself():
    long = numbered(LONG)
    assert long is not None
    with pytest.raises(KeyError, match="label"):
        long.values({"a": 1, "b": 2})


def test_the_ledgers_long_statements_are_numbered():
    # The statements the conversion exists for: were they ever cut below the limit, this would say so.
    assert numbered(statements.CLAIM) is not None and numbered(statements.FINISH) is not None


def test_a_long_statement_runs_with_its_values_sync_and_async(engine):
    params = {"a": 20, "b": 2, "label": "it's"}
    expected = {"total": 42, "pct": "100%", "label": "it's"}
    with count_statements(engine) as issued:
        assert run(engine, LONG, params, rows="first") == expected
        assert aio.run(arun, engine, LONG, params, rows="first") == expected
    long = numbered(LONG)
    assert long is not None and work(issued) == [long.query, long.query]
