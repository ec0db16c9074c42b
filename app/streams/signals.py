"""Stop requests and finished turns across instances: PostgreSQL's LISTEN/NOTIFY instead of polling.

Two channels, each payload a JSON array `["<tenant>", "<device>"]`, delivered by PostgreSQL
to every listening session when the notifying statement commits:

| channel        | sent by                                     | what a listener does here                     |
|----------------|---------------------------------------------|-----------------------------------------------|
| STOP_CHANNEL   | STOP and INTERRUPT (app/streams/statements) | pokes the device's draft writer, which runs   |
|                |                                             | one CHECK: its SQL decides if the stop is for |
|                |                                             | its turn                                      |
| DONE_CHANNEL   | FINISH, when the turn answered another      | wakes the device's waiters (Runtime.wakeups), |
|                | request's message (app/ledger/statements)   | which poll at once instead of within 1 s      |

Each server process keeps one `Listener`: a dedicated connection (not from the pool, never
through a transaction-mode pooler, which cannot hold a LISTEN).

| listener state                         | how a draft writer learns of a stop                  |
|----------------------------------------|------------------------------------------------------|
| connected and listening                | the notification: one CHECK, no polling              |
| connecting, reconnecting, or absent    | a CHECK every STOP_CHECK_SECONDS (app/streams/writer)|
| (DB_POOLER=transaction, no lifespan)   |                                                      |
| just (re)connected                     | every writer here checks once: a request made while  |
|                                        | the listener was away is seen too                    |

So a turn that streams nothing and is never stopped costs no statement, and a stop is seen
within a round trip of its request on whichever instance runs the turn. Waiters keep their
poll (at most one a second) whatever the listener does: a notification only hastens it.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from app.ledger.statements import DONE_CHANNEL
from app.streams.hub import Hub
from app.streams.statements import STOP_CHANNEL

logger = logging.getLogger(__name__)

# A connection dropped without a word (a NAT or proxy forgetting it) never ends the LISTEN: after
# this long without a notification the listener asks the server something, and reconnects when
# no answer comes within PING_TIMEOUT_SECONDS.
PING_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 5.0


if TYPE_CHECKING:
    from app.runtime import Wakeups


def parse(payload: str) -> tuple[str, str] | None:
    """The (tenant, device) a notification names; None (and a warning) for anything else."""
    try:
        tenant, device = json.loads(payload)
    except (ValueError, TypeError):
        tenant = device = None
    if isinstance(tenant, str) and isinstance(device, str):
        return tenant, device
    logger.warning("ignored a notification that is not [tenant, device]")
    return None


class Listener:
    """One LISTEN connection per process, feeding the process's `Hub` and `Wakeups`; see the module doc.

    conninfo and connect_kwargs: how to reach PostgreSQL directly (the pools' own, see
    app/core/pools.py); `run` returns only when cancelled (the app's lifespan ends).
    """

    def __init__(self, hub: Hub, wakeups: Wakeups, conninfo: str, connect_kwargs: dict[str, Any]):
        self.hub, self.wakeups = hub, wakeups
        self.conninfo = conninfo
        self.connect_kwargs = {k: v for k, v in connect_kwargs.items() if k != "autocommit"}

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (0.2 s to 5 s apart, with jitter) after each drop."""
        while True:
            try:
                await self._listen()
            except (psycopg.Error, TimeoutError) as err:
                logger.warning("listener lost its connection (%r): draft writers poll meanwhile", err)
            except Exception:  # a fault here must not end the app's lifespan: listen again
                logger.exception("listener failed: draft writers poll meanwhile")
                await anyio.sleep(1.0)
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
            await conn.execute(f"LISTEN {STOP_CHANNEL}")
            await conn.execute(f"LISTEN {DONE_CHANNEL}")
            self.hub.listening = True
            self.hub.poke_all()  # a stop asked while nobody listened
            logger.info("listener connected: draft writers stop polling")
            while True:
                async for notify in conn.notifies(timeout=PING_SECONDS):
                    self._dispatch(notify)
                with anyio.fail_after(PING_TIMEOUT_SECONDS):
                    await conn.execute("SELECT 1")

    def _dispatch(self, notify: psycopg.Notify) -> None:
        key = parse(notify.payload)
        if key is None:
            return
        if notify.channel == STOP_CHANNEL:
            self.hub.poke(key)
        else:
            self.wakeups.notify(key)
