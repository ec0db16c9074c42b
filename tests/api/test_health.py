"""GET /api/health runs on a connection of its own, never behind the turns' pool (app/core/pools.py)."""

from __future__ import annotations

from app.core.engine import lock_pools
from tests.conftest import make_settings
from tests.utils.apps import app_client


def test_health_answers_while_every_connection_of_the_turns_pool_is_lent(database_url):
    # DB_POOL_SIZE=1: the turns' pool opens at most 2 connections. Both are taken, as a burst
    # of claims would; health must not wait DB_POOL_TIMEOUT for one of them and report an outage.
    settings = make_settings(database_url, db_pool_size=1, db_pool_timeout=5)
    with app_client(settings) as client:
        engine = client.services.database.engine

        async def take_all() -> list:
            pool = await lock_pools(engine).async_pool()
            return [await pool.getconn(timeout=5) for _ in range(pool.max_size)]

        async def give_back(conns: list) -> None:
            pool = await lock_pools(engine).async_pool()
            for conn in conns:
                await pool.putconn(conn)

        lent = client.portal.call(take_all)
        try:
            response = client.get("/api/health")
        finally:
            client.portal.call(give_back, lent)
    assert len(lent) == 2
    assert (response.status_code, response.json()["database"]) == (200, "ok")
