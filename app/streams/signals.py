"""Stop requests across instances: PostgreSQL's LISTEN/NOTIFY instead of each turn polling.

STOP and INTERRUPT (app/streams/statements.py) record a stop request and, in the same
statement, `pg_notify(CHANNEL, '["<tenant>", "<device>"]')`, which PostgreSQL delivers to
every listening session when that statement commits. Each server process keeps one
`StopListener`: a dedicated connection (not from the pool, never through a transaction-mode
pooler, which cannot hold a LISTEN) that pokes the device's draft writer in this process,
if it has one; the writer then runs one CHECK, whose SQL decides whether the request is
for its turn.

| listener state                         | how a draft writer learns of a stop                  |
|----------------------------------------|------------------------------------------------------|
| connected and listening                | the notification: one CHECK, no polling              |
| connecting, reconnecting, or absent    | a CHECK every STOP_CHECK_SECONDS (app/streams/writer)|
| (DB_POOLER=transaction, no lifespan)   |                                                      |
| just (re)connected                     | every writer here checks once: a request made while  |
|                                        | the listener was away is seen too                    |

So a turn that streams nothing and is never stopped costs no statement, and a stop is seen
within a round trip of its request on whichever instance runs the turn.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import psycopg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from app.streams.hub import Hub
from app.streams.statements import STOP_CHANNEL as CHANNEL

logger = logging.getLogger(__name__)


def parse(payload: str) -> tuple[str, str] | None:
    """The (tenant, device) a notification names; None (and a warning) for anything else."""
    try:
        tenant, device = json.loads(payload)
    except (ValueError, TypeError):
        tenant = device = None
    if isinstance(tenant, str) and isinstance(device, str):
        return tenant, device
    logger.warning("ignored a notification on %s that is not [tenant, device]", CHANNEL)
    return None


class StopListener:
    """One LISTEN connection per process, feeding the process's `Hub`; see the module doc.

    conninfo and connect_kwargs: how to reach PostgreSQL directly (the pools' own, see
    app/core/pools.py); `run` returns only when cancelled (the app's lifespan ends).
    """

    def __init__(self, hub: Hub, conninfo: str, connect_kwargs: dict[str, Any]):
        self.hub = hub
        self.conninfo = conninfo
        self.connect_kwargs = {k: v for k, v in connect_kwargs.items() if k != "autocommit"}

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (0.2 s to 5 s apart, with jitter) after each drop."""
        while True:
            try:
                await self._listen()
            except psycopg.Error as err:
                logger.warning("stop listener lost its connection (%s): draft writers poll meanwhile", err)
            finally:
                if self.hub.listening:
                    self.hub.listening = False
                    self.hub.wake_all()  # the writers go back to polling

    async def _connect(self) -> psycopg.AsyncConnection:
        # A fresh backoff for each drop: an outage yesterday does not slow today's reconnect.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(psycopg.OperationalError),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            sleep=anyio.sleep,
            reraise=True,
        )
        conn: psycopg.AsyncConnection | None = None
        async for attempt in retrying:
            with attempt:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, **self.connect_kwargs)
        assert conn is not None  # the loop ends only once connected (reraise=True: else it raises)
        return conn

    async def _listen(self) -> None:
        conn = await self._connect()
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.hub.listening = True
            self.hub.poke_all()  # a stop asked while nobody listened
            logger.info("stop listener connected: draft writers stop polling")
            async for notify in conn.notifies():
                key = parse(notify.payload)
                if key is not None:
                    self.hub.poke(key)
