"""The draft writer against PostgreSQL: appends are fenced by the lease epoch."""

from __future__ import annotations

import uuid

from app.ledger import Ledger
from app.streams.hub import Hub
from app.streams.writer import DraftWriter
from tests.utils import aio
from tests.utils.factories import scalar


async def make_writer(engine, lease, turn) -> DraftWriter:
    return DraftWriter(
        engine,
        Hub(),
        tenant=lease.tenant,
        device=lease.device,
        epoch=lease.epoch,
        attempt=turn.attempt,
        message_ids=[m.id for m in turn.messages],
        flush_seconds=0.1,
    )


def writer_for(engine, lease, turn) -> DraftWriter:
    return aio.run(make_writer, engine, lease, turn)


async def add_and_flush(writer: DraftWriter, text: str) -> bool:
    """The agent sends text, and the writer's next flush runs: True when it saw a stop request."""
    writer.add(text)
    return await writer._flush()


def draft(engine, device):
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT epoch, attempt, text FROM conversation_drafts WHERE device_id = %(d)s", {"d": device}
        ).first()


def test_a_worker_that_lost_its_lease_cannot_append(engine):
    device = str(uuid.uuid4())
    ledger = Ledger(engine, lease_seconds=30, default_ttl=60, context_cap=20)
    claim = aio.run(ledger.claim, "default", device, "hello", external_id=None, metadata={})
    old = writer_for(engine, claim.lease, claim.lease.first)
    assert aio.run(add_and_flush, old, "first ") is False and not old.lost
    assert tuple(draft(engine, device)) == (claim.lease.epoch, 1, "first ")

    # The lease lapses (the worker stalled) and another worker takes the device over: a rerun.
    scalar(
        engine,
        "UPDATE conversation_states SET lease_expires_at = now() - interval '1 second' "
        "WHERE device_id = %(d)s RETURNING 1",
        d=device,
    )
    lapsed_text = "after the lease lapsed "
    assert aio.run(add_and_flush, old, lapsed_text) is False and old.lost  # fenced: nothing written
    assert draft(engine, device).text == "first "

    new_lease = aio.run(ledger.take_free_lease, "default", device)
    turn = aio.run(ledger.next_turn, new_lease)
    assert turn.attempt == 2
    new = writer_for(engine, new_lease, turn)
    aio.run(add_and_flush, new, "rerun ")
    old.lost = False
    assert aio.run(add_and_flush, old, "late ") is False and old.lost  # a newer turn's draft is never written over
    assert tuple(draft(engine, device)) == (new_lease.epoch, 2, "rerun ")
