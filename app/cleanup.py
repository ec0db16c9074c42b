"""The scheduled housekeeping run shared by the cron route, the Lambda schedule and the CLI.

None of it is needed for correctness (every read filters expired locks); it keeps
tables small, honours retention, and picks up messages a crashed worker left.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from app import telemetry
from app.core.aio import call_async
from app.core.config import Settings
from app.core.db import run, run_batches
from app.core.engine import Engine
from app.errors import StoreError
from app.ledger import Answer, Pending
from app.pipeline import OnReply, Pipeline
from app.sessions import SessionService

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)


def _batch(table: str, where: str, set_clause: str | None = None) -> str:
    """One bounded batch deleting (or, with set_clause, updating) rows of table matching where; returns the count.

    SKIP LOCKED leaves rows live traffic is writing to the next run. The batch is
    joined back by ctid (the rows are locked, so it cannot change): a TID scan at
    any batch size, where a join on the key makes the planner hash large tables.
    """
    action = (
        f"UPDATE {table} t SET {set_clause} FROM batch WHERE t.ctid = batch.ctid"
        if set_clause
        else f"DELETE FROM {table} t USING batch WHERE t.ctid = batch.ctid"
    )
    return f"""
WITH batch AS (
    SELECT s.ctid FROM {table} s WHERE {where} LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), changed AS ({action} RETURNING 1)
SELECT count(*) FROM changed
"""


OLD_MESSAGE = "s.created_at < now() - make_interval(days => %(days)s) AND s.status IS DISTINCT FROM 'pending'"

# Messages past retention go, except that the ids deduplicating a channel's retries
# stay for the channel's retry period: their content is blanked instead.
DELETE_OLD_MESSAGES = _batch(
    "conversation_messages",
    f"{OLD_MESSAGE} AND (s.external_id IS NULL OR s.created_at < now() - make_interval(secs => %(dedup)s))",
)
BLANK_OLD_CONTENT = _batch(
    "conversation_messages",
    f"{OLD_MESSAGE} AND s.external_id IS NOT NULL AND s.content <> ''",
    set_clause="content = '', metadata = '{}'",
)
DELETE_OLD_AUDIT = _batch("conversation_audit", "s.at < now() - make_interval(days => %(days)s)")

# Rows without a lock, lease or pending message that saw no activity for the
# configured time; the user's preferences go with them.
DELETE_ORPHANS = _batch(
    "conversation_states",
    """s.active_agent IS NULL
      AND GREATEST(s.last_activity_at, s.updated_at) < now() - make_interval(hours => %(hours)s)
      AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now())
      AND NOT EXISTS (
          SELECT 1 FROM conversation_messages m
          WHERE m.tenant_id = s.tenant_id AND m.device_id = s.device_id AND m.status = 'pending')""",
)

# Keyed hashes of erased channel message ids past their replay window (app/erasure.py).
DELETE_EXPIRED_ERASED = _batch("erased_channel_messages", "s.expires_at <= now()")
# Rate limit windows that are over (app/rate_limits.py): the next hit would start afresh anyway.
DELETE_OVER_WINDOWS = _batch("rate_limit_windows", "s.window_start <= now() - interval '60 seconds'")

RECORD_RUN = """
INSERT INTO cleanup_runs (started_at, released, deleted_messages, deleted_states, recovered, duration_ms)
VALUES (now() - make_interval(secs => %(duration_ms)s / 1000.0), %(released)s, %(messages)s, %(states)s,
        %(recovered)s, %(duration_ms)s)
"""


@dataclass(frozen=True)
class CleanupResult:
    released: int
    deleted: int
    duration_ms: int
    recovered: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"released": self.released, "deleted": self.deleted, "duration_ms": self.duration_ms}


def run_cleanup(
    engine: Engine, settings: Settings, *, pipeline: Pipeline | None = None, on_reply: OnReply | None = None
) -> CleanupResult:
    """Release expired locks, apply retention, drop expired erasure hashes, recover stale pending messages,
    and record the run."""
    started = time.perf_counter()
    deadline = None if settings.cleanup_max_seconds is None else time.monotonic() + settings.cleanup_max_seconds
    batch = settings.cleanup_batch_size
    released = SessionService(engine).cleanup_expired_sessions(
        batch_size=batch, max_seconds=settings.cleanup_max_seconds
    )
    messages = states = 0
    if settings.message_retention_days:
        params = {"days": settings.message_retention_days, "dedup": settings.webhook_max_age_seconds}
        messages = run_batches(engine, DELETE_OLD_MESSAGES, params, batch_size=batch, deadline=deadline)
        run_batches(engine, BLANK_OLD_CONTENT, params, batch_size=batch, deadline=deadline)
        run_batches(engine, DELETE_OLD_AUDIT, params, batch_size=batch, deadline=deadline)
    run_batches(engine, DELETE_EXPIRED_ERASED, {}, batch_size=batch, deadline=deadline)
    if settings.orphan_after_hours:
        params = {"hours": settings.orphan_after_hours}
        states = run_batches(engine, DELETE_ORPHANS, params, batch_size=batch, deadline=deadline)
    run_batches(engine, DELETE_OVER_WINDOWS, {}, batch_size=batch, deadline=deadline)
    recovered = call_async(pipeline.recover, on_reply, deadline=deadline) if pipeline is not None else 0
    duration_ms = round((time.perf_counter() - started) * 1000)
    result = CleanupResult(released, messages + states, duration_ms, recovered)
    telemetry.cleaned(released, messages + states)
    run(
        engine,
        RECORD_RUN,
        {
            "released": released,
            "messages": messages,
            "states": states,
            "recovered": recovered,
            "duration_ms": duration_ms,
        },
    )
    logger.info(
        "cleanup released=%s deleted_messages=%s deleted_states=%s recovered=%s duration_ms=%s",
        released,
        messages,
        states,
        recovered,
        duration_ms,
    )
    return result


def channel_replies(services: Services, pipeline: Pipeline) -> OnReply:
    """The on_reply of a recovery: each answer goes out on the channel its message came from
    (a web message has none: its page reads the reply from the history)."""
    repliers = {name: channel.replier(pipeline.ledger) for name, channel in services.channels.items()}

    async def on_reply(pending: Pending, answer: Answer) -> None:  # the channels' repliers are coroutine functions
        channel = pending.metadata.get("channel")
        replier = repliers.get(channel) if channel is not None else None
        if replier is not None:
            await replier(pending, answer)

    return on_reply


async def keep_recovering(services: Services) -> None:
    """A server's own recovery (its lifespan runs this until shutdown): every RECOVERY_INTERVAL_SECONDS,
    answer the messages a crashed worker left pending once their lease lapsed, as the scheduled
    cleanup does. So a server with no schedule (`make run`, a container) never leaves such a
    message waiting for its device's next message. Several processes may run it: each device is
    taken with its lease, so a message is still answered once."""
    pipeline = services.pipeline()
    on_reply = channel_replies(services, pipeline)
    while True:
        await anyio.sleep(services.settings.recovery_interval_seconds)
        try:
            recovered = await pipeline.recover(on_reply)
        except StoreError as err:  # the next pass tries again
            logger.warning("recovery pass failed: %s", err)
            continue
        if recovered:
            logger.info("recovered %s messages a crashed worker left pending", recovered)


def scheduled_cleanup(services: Services) -> CleanupResult:
    """The scheduled run (cron route, Lambda schedule, CLI): release expired locks, apply
    retention, answer messages a crashed worker left pending, then send again the replies a
    channel could not deliver in time (with backoff), within what is left of CLEANUP_MAX_SECONDS.
    """
    started = time.monotonic()
    engine, settings = services.database.engine, services.settings
    pipeline = services.pipeline()
    result = run_cleanup(engine, settings, pipeline=pipeline, on_reply=channel_replies(services, pipeline))
    budget = settings.cleanup_max_seconds
    deadline = started + budget if budget is not None else time.monotonic() + 60
    for name, channel in services.channels.items():
        sent = channel.send_due(engine, deadline=deadline)
        if sent:
            logger.info("cleanup sent %s %s replies that were not delivered before", sent, name)
    return result
