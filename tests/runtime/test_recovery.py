"""A server's own recovery pass (app/cleanup.py keep_recovering): a message a crashed worker left
pending is answered once its lease lapses, with no request and no scheduled cleanup."""

from __future__ import annotations

import uuid

from app.ledger import Ledger
from app.main import lifespan_tasks
from app.services import build_services
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.apps import app_client
from tests.utils.factories import scalar


def status(engine, message_id: int) -> str:
    return scalar(engine, "SELECT status FROM conversation_messages WHERE id = %(id)s", id=message_id)


def test_a_server_answers_what_a_crashed_worker_left_without_any_request(database_url, engine):
    device = str(uuid.uuid4())
    # The crashed worker: it claimed the message and its lease (1 s), then never ran the turn.
    crashed = Ledger(engine, lease_seconds=1, default_ttl=60, context_cap=20)
    claim = aio.run(crashed.claim, "default", device, "hi", external_id=None, metadata={})
    assert claim.lease is not None and status(engine, claim.message_id) == "pending"
    with app_client(make_settings(database_url, lease_seconds=1, recovery_interval_seconds=0.2)):
        assert wait_for(lambda: status(engine, claim.message_id) == "done", 30), "never recovered"
    replies = scalar(
        engine,
        "SELECT count(*) FROM conversation_messages WHERE reply_to = %(id)s AND role = 'assistant'",
        id=claim.message_id,
    )
    attempts = scalar(engine, "SELECT attempts FROM conversation_messages WHERE id = %(id)s", id=claim.message_id)
    assert (replies, attempts) == (1, 2)  # answered once, by the rerun


def test_recovery_interval_zero_leaves_it_to_the_cleanup(database_url):
    on = build_services(make_settings(database_url))
    off = build_services(make_settings(database_url, recovery_interval_seconds=0))
    assert len(lifespan_tasks(on)) == len(lifespan_tasks(off)) + 1


def test_a_serverless_app_runs_nothing_beside_its_requests(database_url):
    # No LISTEN connection held by a function instance, no recovery loop: the schedule recovers.
    assert lifespan_tasks(build_services(make_settings(database_url), serverless=True)) == []
