"""The import body limit (IMPORT_MAX_BYTES): 413 past it, and other requests answered while an import streams."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ACTIVE, POOLER_SETTINGS
from tests.sessions.conftest import ADMIN_KEYS, A, admin_settings
from tests.sessions.test_transfer import seeded_document
from tests.utils.apps import app_client
from tests.utils.factories import snapshot
from tests.utils.server import app_env, running_app

MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


def test_a_2_mib_import_is_413_while_health_answers_during_it(database_url, engine):
    health: list[int] = []
    pooler = POOLER_SETTINGS if ACTIVE["pooler"] else {}
    with (
        running_app(app_env(database_url, admin_api_keys=ADMIN_KEYS, **pooler)) as server,
        httpx.Client(base_url=server.url, timeout=30) as other,
    ):

        def body():
            # No Content-Length: the server reads the first MiB (just under the limit) and waits for more.
            yield b'{"kind": "agent-sessions.export", "messages": ["' + b"x" * (MIB - 100)
            health.append(other.get("/api/health").status_code)  # asked while the import is in flight
            yield b"x" * MIB + b'"]}'

        response = httpx.post(f"{server.url}/api/sessions/import", content=body(), headers=A | JSON, timeout=30)
    assert health == [200]
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert snapshot(engine)["conversation_states"] == []


@pytest.mark.parametrize("limit", [None, 64 * 1024])
def test_a_document_of_exactly_the_limit_imports_and_one_byte_more_is_413(database_url, engine, limit):
    overrides = {} if limit is None else {"import_max_bytes": limit}
    with app_client(admin_settings(database_url, **overrides)) as client:
        limit = limit or MIB
        assert client.services.settings.import_max_bytes == limit
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        base = len(json.dumps(document).encode())
        document["messages"][0]["content"] += "x" * (limit - base - 10)
        body = json.dumps(document).encode()
        body += b" " * (limit - len(body))  # JSON allows trailing whitespace: exactly the limit
        assert len(body) == limit
        before = snapshot(engine)
        over = client.post("/api/sessions/import", content=body + b" ", headers=A | JSON)
        assert (over.status_code, over.json()["error"]["code"]) == (413, "payload_too_large")
        assert str(limit) in over.json()["error"]["message"]
        assert snapshot(engine) == before
        response = client.post("/api/sessions/import", content=body, headers=A | JSON)
        assert response.status_code == 201, response.text
