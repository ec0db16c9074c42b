"""Reading sessions: the list with status and paging, one state, history, messages and audit."""

from __future__ import annotations

import pytest

from tests.sessions.conftest import A
from tests.utils.factories import make_audit, make_exchange, make_message, make_state

S1, S2 = "sess_20260101_000000_aaaaaa", "sess_20260102_000000_bbbbbb"


class TestList:
    def test_one_item_per_device_newest_activity_first(self, client, engine):
        make_state(engine, "old", "acme", idle_seconds=300)
        make_state(engine, "new", "acme", idle_seconds=5)
        make_state(engine, "mid", "acme", idle_seconds=60, agent="billing")
        body = client.get("/api/sessions", headers=A).json()
        assert [item["device_id"] for item in body["items"]] == ["new", "mid", "old"]
        assert body["total"] == 3
        mid = body["items"][1]
        assert set(mid) == {
            "device_id",
            "session_id",
            "status",
            "active_agent",
            "locked_at",
            "expires_at",
            "last_activity_at",
            "message_count",
        }
        assert (mid["session_id"], mid["status"], mid["active_agent"]) == (S1, "active", "billing")
        assert mid["locked_at"] is not None and mid["expires_at"] > mid["locked_at"]

    @pytest.mark.parametrize(
        ("state", "status"),
        [
            ({"agent": "scheduling"}, "active"),
            ({}, "idle"),
            ({"agent": "scheduling", "lock_seconds": -5}, "idle"),  # expired lock, recent activity
            ({"idle_seconds": 200, "session_ttl": 100}, "ended"),
            ({"agent": "scheduling", "lock_seconds": -5, "idle_seconds": 200, "session_ttl": 100}, "ended"),
            ({"agent": "scheduling", "idle_seconds": 200, "session_ttl": 100}, "active"),  # a live lock wins
        ],
    )
    def test_status(self, client, engine, state, status):
        make_state(engine, "dev", "acme", **state)
        item = client.get("/api/sessions", headers=A).json()["items"][0]
        assert item["status"] == status
        live = status == "active"
        assert (item["active_agent"] is not None, item["locked_at"] is not None, item["expires_at"] is not None) == (
            live,
            live,
            live,
        )
        assert client.get("/api/sessions/dev", headers=A).json()["status"] == status

    def test_filters_by_status_and_agent_and_counts_the_matches(self, client, engine):
        make_state(engine, "a1", "acme", agent="scheduling")
        make_state(engine, "a2", "acme", agent="billing")
        make_state(engine, "a3", "acme", agent="scheduling", lock_seconds=-1)
        make_state(engine, "i1", "acme")
        make_state(engine, "e1", "acme", idle_seconds=200, session_ttl=100)

        def devices(query):
            body = client.get(f"/api/sessions?{query}", headers=A).json()
            assert body["total"] == len(body["items"])
            return sorted(item["device_id"] for item in body["items"])

        assert devices("status=active") == ["a1", "a2"]
        assert devices("status=idle") == ["a3", "i1"]
        assert devices("status=ended") == ["e1"]
        assert devices("agent=scheduling") == ["a1"]  # a3's lock expired
        assert devices("agent=billing&status=idle") == []

    def test_message_count_covers_both_roles_of_the_current_session_only(self, client, engine):
        make_state(engine, "dev", "acme", session_id=S2)
        make_exchange(engine, "dev", "acme", session_id=S1)
        make_exchange(engine, "dev", "acme", session_id=S2)
        make_message(engine, "dev", "acme", session_id=S2, content="third")
        assert client.get("/api/sessions", headers=A).json()["items"][0]["message_count"] == 3
        assert client.get("/api/sessions/dev", headers=A).json()["message_count"] == 3

    def test_a_message_waiting_for_its_answer_counts_in_the_current_session(self, client, engine):
        make_state(engine, "dev", "acme", session_id=S2)
        make_exchange(engine, "dev", "acme", session_id=S2)
        make_message(engine, "dev", "acme", session_id=None, status="pending", content="still thinking")
        make_message(
            engine, "dev", "acme", session_id=None, status="done", content="before sessions existed", age_seconds=3600
        )
        assert client.get("/api/sessions", headers=A).json()["items"][0]["message_count"] == 3
        history = client.get("/api/sessions/dev/history", headers=A).json()["items"]
        assert [(h["session_id"], h["status"], h["message_count"]) for h in history] == [
            (S2, "idle", 3),
            (None, "ended", 1),
        ]

    def test_pages_walk_every_device_once(self, client, engine):
        for n in range(7):
            make_state(engine, f"dev{n}", "acme", idle_seconds=n * 10)
        seen = []
        for offset in range(0, 8, 3):
            body = client.get(f"/api/sessions?limit=3&offset={offset}", headers=A).json()
            assert body["total"] == 7
            seen += [item["device_id"] for item in body["items"]]
        assert seen == [f"dev{n}" for n in range(7)]

    def test_offset_past_the_end_is_an_empty_page_with_the_total(self, client, engine):
        make_state(engine, "dev", "acme")
        assert client.get("/api/sessions?offset=5", headers=A).json() == {"items": [], "total": 1}

    def test_limit_bounds(self, client, engine):
        for n in range(3):
            make_state(engine, f"dev{n}", "acme")
        assert len(client.get("/api/sessions?limit=1", headers=A).json()["items"]) == 1
        assert len(client.get("/api/sessions?limit=200", headers=A).json()["items"]) == 3
        assert len(client.get("/api/sessions", headers=A).json()["items"]) == 3

    @pytest.mark.parametrize(
        "query",
        [
            "limit=0",
            "limit=201",
            "limit=-1",
            "limit=x",
            "offset=-1",
            "offset=1.5",
            "status=busy",
            "agent=Bad",
            "agent=" + "a" * 51,
        ],
    )
    def test_bad_query_is_422(self, client, query):
        response = client.get(f"/api/sessions?{query}", headers=A)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"

    def test_empty_tenant(self, client):
        assert client.get("/api/sessions", headers=A).json() == {"items": [], "total": 0}


class TestOneSession:
    def test_state_with_normalized_context_and_live_lock(self, client, engine):
        make_state(
            engine,
            "dev",
            "acme",
            agent="scheduling",
            session_ttl=900,
            version=4,
            context={"conversation_state": {"step": "day"}},
        )
        body = client.get("/api/sessions/dev", headers=A).json()
        assert body["device_id"] == "dev"
        assert body["session_id"] == S1
        assert (body["status"], body["session_ttl"], body["version"]) == ("active", 900, 4)
        assert body["lock"]["agent"] == "scheduling"
        assert body["lock"]["expires_at"] > body["lock"]["locked_at"]
        assert body["context"] == {
            "conversation_state": {"step": "day"},
            "user_preferences": {},
            "interrupted_queries": [],
            "recent_interactions": [],
        }
        assert body["session_started_at"] is not None and body["created_at"] and body["updated_at"]

    def test_expired_lock_is_not_reported(self, client, engine):
        make_state(engine, "dev", "acme", agent="scheduling", lock_seconds=-1)
        assert client.get("/api/sessions/dev", headers=A).json()["lock"] == {
            "agent": None,
            "locked_at": None,
            "expires_at": None,
            "operator": None,
        }

    def test_device_with_messages_but_no_state_is_404_here(self, client, engine):
        make_exchange(engine, "dev", "acme")
        response = client.get("/api/sessions/dev", headers=A)
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "message": "no session data for this device"}}

    @pytest.mark.parametrize("device", ["has%20space", "x" * 129, "tab%09", "%00"])
    def test_invalid_device_id_is_400(self, client, device):
        for suffix in ("", "/history", "/messages", "/audit", "/export"):
            response = client.get(f"/api/sessions/{device}{suffix}", headers=A)
            assert response.status_code == 400, suffix
            assert response.json()["error"]["code"] == "invalid_device_id"


class TestHistory:
    def test_sessions_newest_first_with_counts_and_status(self, client, engine):
        make_exchange(engine, "dev", "acme", session_id=S1, age_seconds=3600)
        make_exchange(engine, "dev", "acme", session_id=S2)
        make_message(engine, "dev", "acme", session_id=S2, content="more")
        make_state(engine, "dev", "acme", session_id=S2, agent="billing")
        items = client.get("/api/sessions/dev/history", headers=A).json()["items"]
        assert [(i["session_id"], i["status"], i["message_count"]) for i in items] == [
            (S2, "active", 3),
            (S1, "ended", 2),
        ]
        assert items[1]["started_at"] <= items[1]["last_activity_at"] < items[0]["last_activity_at"]

    def test_current_session_without_messages_is_listed(self, client, engine):
        make_exchange(engine, "dev", "acme", session_id=S1, age_seconds=3600)
        make_state(engine, "dev", "acme", session_id=S2)
        items = client.get("/api/sessions/dev/history", headers=A).json()["items"]
        assert [(i["session_id"], i["status"], i["message_count"]) for i in items] == [
            (S2, "idle", 0),
            (S1, "ended", 2),
        ]

    def test_device_without_state_has_only_ended_sessions(self, client, engine):
        make_exchange(engine, "dev", "acme", session_id=S1)
        items = client.get("/api/sessions/dev/history", headers=A).json()["items"]
        assert [(i["session_id"], i["status"]) for i in items] == [(S1, "ended")]

    def test_device_with_only_a_state_and_no_session_yet(self, client, engine):
        make_state(engine, "dev", "acme", session_id=None, agent="scheduling")
        assert client.get("/api/sessions/dev/history", headers=A).json() == {"items": []}

    def test_unknown_device_is_404(self, client):
        assert client.get("/api/sessions/nobody/history", headers=A).status_code == 404


class TestMessages:
    def test_newest_first_with_fields(self, client, engine):
        asked, answered = make_exchange(engine, "dev", "acme", text="book", reply="which day?", agent="scheduling")
        failed = make_message(engine, "dev", "acme", content="boom", status="failed", has_error=True)
        body = client.get("/api/sessions/dev/messages", headers=A).json()
        assert [m["id"] for m in body["items"]] == [failed, answered, asked]
        assert body["next_before"] is None
        reply = body["items"][1]
        assert (reply["role"], reply["content"], reply["agent"], reply["reply_to"], reply["status"]) == (
            "assistant",
            "which day?",
            "scheduling",
            asked,
            None,
        )
        assert (body["items"][0]["status"], body["items"][0]["has_error"]) == ("failed", True)
        assert body["items"][2]["session_id"] == S1

    def test_cursor_walks_all_pages_without_duplicates_or_gaps(self, client, engine):
        ids = [make_message(engine, "dev", "acme", content=f"m{n}") for n in range(7)]
        make_message(engine, "other", "acme")  # another device's message never shows up
        seen, before, pages = [], None, 0
        while True:
            query = "limit=3" + (f"&before={before}" if before else "")
            body = client.get(f"/api/sessions/dev/messages?{query}", headers=A).json()
            seen += [m["id"] for m in body["items"]]
            pages += 1
            before = body["next_before"]
            if before is None:
                break
            assert before == body["items"][-1]["id"]
        assert seen == sorted(ids, reverse=True)
        assert pages == 3

    def test_exact_multiple_of_limit_ends_without_an_empty_page(self, client, engine):
        for n in range(4):
            make_message(engine, "dev", "acme", content=f"m{n}")
        first = client.get("/api/sessions/dev/messages?limit=2", headers=A).json()
        second = client.get(f"/api/sessions/dev/messages?limit=2&before={first['next_before']}", headers=A).json()
        assert len(second["items"]) == 2
        assert second["next_before"] is None

    def test_filter_by_session(self, client, engine):
        make_exchange(engine, "dev", "acme", session_id=S1, text="old")
        make_exchange(engine, "dev", "acme", session_id=S2, text="new")
        items = client.get(f"/api/sessions/dev/messages?session_id={S1}", headers=A).json()["items"]
        assert [m["content"] for m in items] == ["hello!", "old"]
        assert client.get("/api/sessions/dev/messages?session_id=sess_none", headers=A).json() == {
            "items": [],
            "next_before": None,
        }

    def test_known_device_without_messages_is_an_empty_page(self, client, engine):
        make_state(engine, "dev", "acme")
        assert client.get("/api/sessions/dev/messages", headers=A).json() == {"items": [], "next_before": None}

    @pytest.mark.parametrize(
        "query", ["limit=0", "limit=201", "before=0", "before=-3", "before=x", "session_id=", "session_id=a%20b"]
    )
    def test_bad_query_is_422(self, client, engine, query):
        make_state(engine, "dev", "acme")
        response = client.get(f"/api/sessions/dev/messages?{query}", headers=A)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"

    def test_unknown_device_is_404(self, client):
        assert client.get("/api/sessions/nobody/messages", headers=A).status_code == 404


class TestAudit:
    def test_oldest_first_with_timings(self, client, engine):
        make_audit(engine, "dev", "acme", event="set", to_agent="scheduling", age_seconds=20)
        make_audit(engine, "dev", "acme", event="handoff", from_agent="scheduling", to_agent="billing")
        body = client.get("/api/sessions/dev/audit", headers=A).json()
        assert [(a["event"], a["from_agent"], a["to_agent"]) for a in body["items"]] == [
            ("set", None, "scheduling"),
            ("handoff", "scheduling", "billing"),
        ]
        assert body["items"][0]["timings"] == {"db_ms": 1, "agent_ms": 2, "total_ms": 3}
        assert body["items"][0]["session_id"] == S1
        assert body["next_after"] is None

    def test_pages_with_after(self, client, engine):
        for n in range(5):
            make_audit(engine, "dev", "acme", event="refresh", age_seconds=100 - n)
        first = client.get("/api/sessions/dev/audit?limit=3", headers=A).json()
        rest = client.get(f"/api/sessions/dev/audit?limit=3&after={first['next_after']}", headers=A).json()
        ids = [a["id"] for a in first["items"] + rest["items"]]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert rest["next_after"] is None

    @pytest.mark.parametrize("query", ["limit=0", "limit=1001", "after=-1"])
    def test_bad_query_is_422(self, client, engine, query):
        make_state(engine, "dev", "acme")
        assert client.get(f"/api/sessions/dev/audit?{query}", headers=A).status_code == 422

    def test_known_device_without_events(self, client, engine):
        make_state(engine, "dev", "acme")
        assert client.get("/api/sessions/dev/audit", headers=A).json() == {"items": [], "next_after": None}
