"""Metrics: counts after turns, refused messages, and GET /metrics in the Prometheus text format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.telemetry import recording

DEVICE = "4d3c2b1a-0f9e-4d8c-8b7a-6f5e4d3c2b1a"
ADMIN = {"Authorization": "Bearer admin-key-0123456789"}


def test_turns_are_counted_by_agent_and_outcome(database_url, engine):
    with recording() as recorded:
        pipeline = Pipeline(engine, {"manager": Scripted("manager")}, make_settings(database_url))
        for number in range(3):
            aio.run(pipeline.handle, Inbound("default", DEVICE, f"message {number}"))
        assert recorded.points("agent_sessions.turns") == [({"gen_ai.agent.name": "manager", "outcome": "answered"}, 3)]
        assert recorded.points("agent_sessions.turn.duration") == [
            ({"gen_ai.agent.name": "manager", "outcome": "answered"}, 3)
        ]


def test_a_message_past_the_device_rate_limit_is_counted(database_url, engine):
    with recording() as recorded:
        pipeline = Pipeline(
            engine, {"manager": Scripted("manager")}, make_settings(database_url, rate_limit_per_device=1)
        )
        aio.run(pipeline.handle, Inbound("default", DEVICE, "one"))
        try:
            aio.run(pipeline.handle, Inbound("default", DEVICE, "two"))
        except Exception as err:  # noqa: BLE001 - RateLimited, checked by name below
            assert type(err).__name__ == "RateLimited"
        assert recorded.points("agent_sessions.messages.rate_limited") == [({"scope": "device"}, 1)]


def scrape(client, **kwargs) -> dict[str, float]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


TURNS = "agent_sessions_turns_total{gen_ai_agent_name=manager,outcome=answered}"


def test_metrics_need_the_admin_key_and_move_as_messages_are_answered(database_url, engine):
    settings = make_settings(database_url, admin_api_keys="default:admin-key-0123456789")
    with recording(), app_client(settings) as client:
        use_registry(client, {"manager": Scripted("manager")})
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        client.post("/api/chat", json={"message": "hello"}, headers={"X-Device-ID": DEVICE})
        assert scrape(client, headers=ADMIN)[TURNS] == 1
        client.post("/api/chat", json={"message": "again"}, headers={"X-Device-ID": DEVICE})
        assert scrape(client, headers=ADMIN)[TURNS] == 2


def test_metrics_can_be_public(database_url, engine):
    settings = make_settings(database_url, metrics_public=True)
    with recording(), app_client(settings) as client:
        use_registry(client, {"manager": Scripted("manager")})
        client.post("/api/chat", json={"message": "hello"}, headers={"X-Device-ID": DEVICE})
        assert scrape(client)[TURNS] == 1
