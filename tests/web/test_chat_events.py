"""The chat page's live updates: one event stream per page (GET /api/chat/events), no polling while a person
holds the conversation, and no overlapping requests while the server is slow."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.browser import chromium, unavailable
from tests.utils.server import Server, app_env, running_app
from tests.web.test_console import network

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from tests.web.page import ChatPage  # noqa: E402 - needs selenium, checked just above

ADMIN_KEY = "chat-events-test-admin-key-7d41a0"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EVENTS = "/api/chat/events"


@pytest.fixture(scope="module")
def server(direct_url: str) -> Iterator[Server]:
    with running_app(app_env(direct_url, admin_api_keys=f"default:{ADMIN_KEY}")) as server:
        yield server


def take_over(url: str, device: str) -> None:
    httpx.post(
        f"{url}/api/sessions/{device}/takeover", json={"operator": "Ana"}, headers=ADMIN, timeout=30
    ).raise_for_status()


def operator_reply(url: str, device: str, text: str) -> None:
    httpx.post(
        f"{url}/api/sessions/{device}/messages", json={"text": text}, headers=ADMIN, timeout=30
    ).raise_for_status()


def stream_open(page: ChatPage) -> bool:
    return page.driver.execute_script("return document.body.dataset.stream === 'open'")


def test_an_operator_reply_during_a_takeover_appears_without_a_reload(server, browser, engine):
    page = ChatPage(browser, server.url).open()
    assert page.say("I need to book an appointment").startswith("Sure, let me get you to scheduling")
    page.wait(lambda: stream_open(page), "the page opened no event stream")
    browser.execute_script("window.notReloaded = true")
    device = page.device_id()

    take_over(server.url, device)
    page.wait(
        lambda: page.text("#lock").startswith("A person is handling this conversation"), "the takeover is not shown"
    )
    operator_reply(server.url, device, "Hello, Ana here. I can help with your booking.")
    page.wait(
        lambda: page.log()[-1] == ("assistant", "A person", "Hello, Ana here. I can help with your booking."),
        "the operator's reply is not shown",
    )
    httpx.delete(f"{server.url}/api/sessions/{device}/takeover", headers=ADMIN, timeout=30).raise_for_status()
    page.wait(lambda: page.text("#lock").startswith("Handled by Scheduling"), "the release is not shown")
    assert browser.execute_script("return window.notReloaded === true")
    streams = [r for r in network(browser) if EVENTS in r["url"]]
    assert len(streams) == 1 and streams[0]["end"] is None


def test_one_event_stream_and_no_overlapping_requests_while_the_server_is_slow(direct_url, tmp_path: Path, engine):
    env = app_env(direct_url, admin_api_keys=f"default:{ADMIN_KEY}", slow_seconds=1.5)
    with running_app(env, factory="tests.web.slow_app:create_app") as slow:
        driver = chromium(tmp_path / "slow", width=1280, height=800)
        try:
            page = ChatPage(driver, slow.url).open()
            device = page.device_id()
            httpx.post(
                f"{slow.url}/api/chat", json={"message": "hi"}, headers={"X-Device-ID": device}, timeout=30
            ).raise_for_status()
            page.wait(lambda: stream_open(page) and len(page.log()) == 2, "no event stream, or the reply is not shown")
            take_over(slow.url, device)
            # A burst of replies while each read of the page takes 1.5 s.
            for n in range(5):
                operator_reply(slow.url, device, f"reply {n}")
            page.wait(lambda: page.log()[-1] == ("assistant", "A person", "reply 4"), "the last reply never shows")
            assert page.text("#lock").startswith("A person is handling this conversation")
            seen = network(driver)
        finally:
            driver.quit()
    streams = [r for r in seen if EVENTS in r["url"]]
    assert len(streams) == 1 and streams[0]["end"] is None
    reads = sorted((r for r in seen if "/api/" in r["url"] and EVENTS not in r["url"]), key=lambda r: r["start"])
    assert len([r for r in reads if "/api/chat/messages" in r["url"]]) >= 2
    # Every request of the page waits for the one before.
    for earlier, later in itertools.pairwise(reads):
        assert earlier["end"] is not None and earlier["end"] <= later["start"], (earlier, later)
