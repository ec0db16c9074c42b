"""WhatsApp past the per-device limit: the webhook answers 200 (no redelivery), nothing is stored or sent."""

from __future__ import annotations

import logging

from tests.channels.conftest import wa_settings
from tests.channels.payloads import USER, USER_2, change, delivery, post, rows, text
from tests.utils.apps import app_client, join_background, use_registry


def test_a_message_past_the_limit_is_acknowledged_dropped_and_recorded(database_url, engine, graph, echo, caplog):
    caplog.set_level(logging.WARNING, logger="app.channels.whatsapp.webhook")
    with app_client(wa_settings(database_url, graph, rate_limit_per_device=2)) as client:
        use_registry(client, {"manager": echo})
        for n in range(2):
            assert post(client, delivery([change([text(f"m{n}", f"wamid.R{n}")])])).status_code == 200
        over = post(client, delivery([change([text("too many", "wamid.R2"), text("hi", "wamid.S0", USER_2)])]))
        assert over.status_code == 200
        assert over.json() == {"status": "ok", "stored": 1, "duplicates": 0, "ignored": 1}  # dropped: not stored
        # Meta redelivers the same message: still acknowledged, still dropped.
        assert post(client, delivery([change([text("too many", "wamid.R2")])])).status_code == 200
        assert join_background(client, 30)
    inbound = [(r["device_id"], r["content"]) for r in rows(engine) if r["role"] == "user"]
    assert inbound == [(USER, "m0"), (USER, "m1"), (USER_2, "hi")]
    assert sorted(message["text"]["body"] for message in graph.sent) == ["manager: hi", "manager: m0", "manager: m1"]
    dropped = [r for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(dropped) == 2 and all("wamid.R2" in r.getMessage() for r in dropped)
    assert all(USER not in r.getMessage() for r in dropped)  # the number is never logged
