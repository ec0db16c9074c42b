"""The operator inbox in headless Chromium at 1280x800 and 390x844, against the real app under uvicorn."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.channels.payloads import ACCESS_TOKEN, SECRET, USER, VERIFY_TOKEN
from tests.utils.browser import chromium, unavailable
from tests.utils.factories import scalar
from tests.utils.graph_api import GraphApi, graph_api
from tests.utils.inbox_seed import seed
from tests.utils.server import Server, app_env, running_app
from tests.web.inbox import SIZES, Inbox, web_chat, whatsapp_message, whatsapp_statuses

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

ADMIN_KEY = "console-test-admin-key-5b2e9c"


@pytest.fixture(scope="module")
def graph_stand_in() -> Iterator[GraphApi]:
    with graph_api() as api:
        yield api


def env(direct_url: str, graph: GraphApi, **more: object) -> dict[str, str]:
    return app_env(
        direct_url,
        admin_api_keys=f"default:{ADMIN_KEY}",
        whatsapp_app_secret=SECRET,
        whatsapp_verify_token=VERIFY_TOKEN,
        whatsapp_access_token=ACCESS_TOKEN,
        whatsapp_api_base_url=graph.url,
        **more,
    )


@pytest.fixture(scope="module")
def server(direct_url: str, graph_stand_in: GraphApi) -> Iterator[Server]:
    with running_app(env(direct_url, graph_stand_in)) as server:
        yield server


@pytest.fixture(params=list(SIZES))
def inbox(request, tmp_path: Path, server: Server, engine) -> Iterator[Inbox]:  # engine: every table emptied
    width, height = SIZES[request.param]
    driver = chromium(tmp_path / "operator", width=width, height=height)
    driver.set_window_size(width, height)
    try:
        yield Inbox(driver, server.url)
    finally:
        driver.quit()


def test_two_conversations_with_channel_preview_and_the_needs_a_person_mark(inbox, server, tmp_path):
    web, _ = web_chat(server.url, "hi")
    whatsapp_message(server.url, "hello from my phone", "wamid.C1", SECRET)
    httpx_take_over(server.url, web)
    web_chat(server.url, "can a person help me?", web)

    inbox.open(ADMIN_KEY)
    inbox.wait(lambda: len(inbox.items()) == 2, "two conversations are not listed")
    first, second = inbox.items()
    assert (first["device"], first["channel"], first["needs"]) == (web, "web", True)
    assert first["preview"] == "can a person help me?"
    assert "Web" in first["tags"] and "Needs a person (1)" in first["tags"]
    assert first["name"].startswith("Visitor ")
    assert (second["device"], second["channel"], second["needs"]) == (USER, "whatsapp", False)
    assert second["preview"].startswith("Manager: Hi! I can book an appointment")
    assert "WhatsApp" in second["tags"]
    assert inbox.overflow() <= 0
    inbox.driver.save_screenshot(str(tmp_path / "inbox.png"))


def test_take_over_reply_and_release_resumes_the_agent(inbox, server, engine):
    device, answer = web_chat(server.url, "I need to book an appointment")
    assert answer["agent"] == "scheduling"
    inbox.open(ADMIN_KEY)
    inbox.click(device)
    inbox.wait(lambda: len(inbox.history()) == 2, "the history is not shown")
    assert inbox.lock().startswith("Held by Scheduling")
    assert inbox.overflow() <= 0

    inbox.js("document.getElementById('operator').value = 'Ana'")
    inbox.js("document.getElementById('take-over').click()")
    inbox.wait(lambda: "Taken over by Ana" in inbox.lock(), "the takeover is not shown")
    web_chat(server.url, "is someone there?", device)
    inbox.wait(lambda: any("held" in m["classes"].split() for m in inbox.history()), "the held message is not shown")
    # The reply box is under the history.
    assert inbox.js(
        "return document.getElementById('reply').getBoundingClientRect().top"
        " > document.getElementById('history').getBoundingClientRect().bottom - 1"
    )
    inbox.js("document.getElementById('reply').value = 'Ana here: the scheduling agent will take it from here.'")
    inbox.js("document.getElementById('send-reply').click()")
    inbox.wait(lambda: inbox.history()[-1]["text"].startswith("Ana here"), "the reply is not in the history")
    assert "by-human" in inbox.history()[-1]["classes"]

    inbox.js("document.getElementById('release').click()")
    inbox.wait(lambda: inbox.lock().startswith("Held by Scheduling"), "the release does not show the agent back")
    device, answer = web_chat(server.url, "tomorrow", device)
    assert (answer["agent"], answer["reply"].startswith("What time on tomorrow?")) == ("scheduling", True)
    inbox.wait(lambda: inbox.history()[-1]["text"].startswith("What time on tomorrow?"), "the answer is not shown")
    events = scalar(
        engine,
        "SELECT string_agg(event || ':' || COALESCE(to_agent, '-'), ',' ORDER BY id) "
        "FROM conversation_audit WHERE device_id = %(d)s AND event IN ('takeover', 'release')",
        d=device,
    )
    assert events == "takeover:human,release:scheduling"
    assert inbox.overflow() <= 0


def test_whatsapp_delivery_state_follows_the_status_callbacks(inbox, server, graph_stand_in):
    whatsapp_message(server.url, "hello", "wamid.D1", SECRET)
    inbox.open(ADMIN_KEY)
    inbox.click(USER)
    inbox.wait(lambda: [m["delivery"] for m in inbox.history()] == [None, "sent"], "the sent reply is not shown")
    whatsapp_statuses(server.url, [graph_stand_in.status("delivered")], SECRET)
    inbox.wait(lambda: inbox.history()[-1]["delivery"] == "delivered", "delivered is not shown")
    whatsapp_statuses(server.url, [graph_stand_in.status("failed", error=(131026, "Message undeliverable"))], SECRET)
    inbox.wait(lambda: inbox.history()[-1]["delivery"] == "failed", "the failure is not shown")
    assert "Failed: 131026" in inbox.history()[-1]["meta"]
    assert inbox.overflow() <= 0


def httpx_take_over(url: str, device: str) -> None:
    import httpx

    response = httpx.post(
        f"{url}/api/sessions/{device}/takeover",
        json={"operator": "Ana"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    response.raise_for_status()


def network(driver) -> list[dict]:
    """Each request of the page: url, start and end (the browser's monotonic seconds; end None if open)."""
    requests: dict[str, dict] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            requests[params["requestId"]] = {"url": params["request"]["url"], "start": params["timestamp"], "end": None}
        elif (
            message["method"] in ("Network.loadingFinished", "Network.loadingFailed")
            and params["requestId"] in requests
        ):
            requests[params["requestId"]]["end"] = params["timestamp"]
    return list(requests.values())


def test_one_event_stream_and_no_overlapping_requests_while_the_server_is_slow(
    direct_url, graph_stand_in, tmp_path, engine
):
    with running_app(
        env(direct_url, graph_stand_in, slow_seconds=1.5), factory="tests.web.slow_app:create_app"
    ) as slow:
        driver = chromium(tmp_path / "slow", width=1280, height=800)
        try:
            inbox = Inbox(driver, slow.url).open(ADMIN_KEY)
            inbox.wait(
                lambda: driver.execute_script("return document.body.dataset.stream === 'open'"), "no event stream"
            )
            device, _ = web_chat(slow.url, "first")
            # A burst of changes while each refresh takes 1.5 s.
            senders = [threading.Thread(target=web_chat, args=(slow.url, f"message {n}", device)) for n in range(4)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            _, answer = web_chat(slow.url, "last one", device)
            newest = f"{answer['agent'].title()}: {answer['reply']}"[:20]
            inbox.wait(
                lambda: (inbox.items() or [{"preview": ""}])[0]["preview"].startswith(newest),
                "the last answer never shows",
            )
            seen = network(driver)
        finally:
            driver.quit()
    streams = [r for r in seen if "/api/inbox/events" in r["url"]]
    assert len(streams) == 1 and streams[0]["end"] is None
    reads = sorted(
        (r for r in seen if "/api/" in r["url"] and "/api/inbox/events" not in r["url"]), key=lambda r: r["start"]
    )
    assert len([r for r in reads if "/api/inbox?" in r["url"]]) >= 2
    # Every read of the page (agents, then each refresh's list) waits for the one before.
    for earlier, later in itertools.pairwise(reads):
        assert earlier["end"] is not None and earlier["end"] <= later["start"], (earlier, later)


def test_the_list_loads_more_at_its_end_and_a_change_keeps_the_loaded_ones(inbox, server, engine):
    with engine.begin() as conn:
        seed(conn, "default", 120)
    devices = [f"inbox-{i}" for i in range(1, 121)]
    inbox.open(ADMIN_KEY)
    inbox.wait(lambda: [i["device"] for i in inbox.items()] == devices[:50], "the first page is not listed")
    # Scrolling to the end of the list loads the next page; the button loads the one after.
    inbox.js("document.getElementById('load-more').scrollIntoView()")
    inbox.wait(lambda: len(inbox.items()) == 100, "scrolling to the end loaded nothing")
    inbox.js("document.getElementById('load-more').click()")
    inbox.wait(lambda: len(inbox.items()) == 120, "the button loaded nothing")
    assert [i["device"] for i in inbox.items()] == devices
    assert inbox.js("return document.getElementById('load-more').hidden")
    # A new conversation: the change event refreshes the list, and every loaded one keeps its place.
    refreshed = inbox.js("return document.body.dataset.refreshed")
    web, _ = web_chat(server.url, "hi")
    inbox.wait(lambda: inbox.js("return document.body.dataset.refreshed") != refreshed and len(inbox.items()) == 121)
    assert [i["device"] for i in inbox.items()] == [web, *devices]


def test_a_refresh_keeps_a_conversation_whose_time_has_no_fraction_of_a_second(inbox, server, engine):
    # More than one refresh's page (200) listed, all in one second; the oldest at a whole second, which
    # the server writes without a fraction ("...:00Z"), so that as a string it sorts after the others.
    with engine.begin() as conn:
        seed(conn, "default", 206)
        conn.exec_driver_sql(
            "UPDATE conversation_states SET last_message_at = date_trunc('second', now()) - interval '1 hour'"
            " + make_interval(secs => (206 - substr(device_id, 7)::integer) / 1e6)"
        )
    devices = [f"inbox-{i}" for i in range(1, 207)]
    inbox.open(ADMIN_KEY)
    inbox.wait(lambda: len(inbox.items()) == 50, "the first page is not listed")
    while len(inbox.items()) < 206:
        listed = len(inbox.items())
        inbox.js("document.getElementById('load-more').click()")
        inbox.wait(lambda listed=listed: len(inbox.items()) > listed, "the button loaded nothing")
    assert [i["device"] for i in inbox.items()] == devices
    refreshed = inbox.js("return document.body.dataset.refreshed")
    web, _ = web_chat(server.url, "hi")
    inbox.wait(lambda: inbox.js("return document.body.dataset.refreshed") != refreshed)
    assert [i["device"] for i in inbox.items()] == [web, *devices]
