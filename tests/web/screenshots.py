"""`make screenshots`: fill a running server with a few conversations, photograph the inbox and the chat page.

    SCREENSHOT_URL=http://127.0.0.1:8000 ADMIN_KEY=... [WHATSAPP_APP_SECRET=...] python -m tests.web.screenshots

ADMIN_KEY is a key of the tenant `default`. With WHATSAPP_APP_SECRET (the server's), one conversation
comes in through the signed webhook, so a WhatsApp conversation shows too. Writes
docs/images/inbox-1280.png, inbox-390.png and inbox-390-conversation.png, then books an
appointment on the chat page (the demo agents) and writes chat-1280.png and chat-390.png,
as tests/web/test_chat_layout.py does. Headless Debian Chromium (tests/utils/browser.py);
every conversation it makes is a new device on that server.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.utils.browser import chromium, unavailable
from tests.web.inbox import SIZES, Inbox, web_chat, whatsapp_message

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"


def seed(url: str, key: str, secret: str | None) -> str:
    """Three conversations (the scheduling agent, WhatsApp, one waiting for a person); returns the last."""
    web_chat(url, "I need to book an appointment")
    if secret:
        whatsapp_message(
            url, "Hello, is my invoice paid?", f"wamid.SHOT{int(time.time())}", secret, sender="15550001234"
        )
    device, _ = web_chat(url, "hi")
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(
        f"{url}/api/sessions/{device}/takeover", json={"operator": "Ana"}, headers=headers, timeout=30
    ).raise_for_status()
    web_chat(url, "Can a person look at my booking, please?", device)
    return device


def chat(url: str, tmp: Path, name: str, width: int, height: int) -> None:
    """The booking conversation on the chat page at width x height, up to the confirmation and its choices."""
    from tests.web.page import ChatPage

    driver = chromium(tmp / f"chat-{name}", width=width, height=height)
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": width < 600,
            },
        )
        page = ChatPage(driver, url).open()
        for text in ("hi", "I need to book an appointment"):
            page.say(text)
        page.click("#choices button")  # a weekday
        page.wait(lambda: page.replies()[-1].startswith("What time on") and page.idle(), "no reply to the choice")
        page.say("10am")
        page.wait(lambda: bool(page.all("#choices button")), "no choices after the confirmation question")
        driver.save_screenshot(str(OUT / f"chat-{width}.png"))
    finally:
        driver.quit()


def main() -> int:
    url = os.environ.get("SCREENSHOT_URL", "http://127.0.0.1:8000").rstrip("/")
    key = os.environ.get("ADMIN_KEY")
    if not key:
        print("ADMIN_KEY (an admin key of the tenant `default`) is required", file=sys.stderr)
        return 2
    if reason := unavailable():
        print(reason, file=sys.stderr)
        return 2
    device = seed(url, key, os.environ.get("WHATSAPP_APP_SECRET"))
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height) in SIZES.items():
            driver = chromium(Path(tmp) / name, width=width, height=height)
            try:
                driver.set_window_size(width, height)
                inbox = Inbox(driver, url).open(key)
                inbox.wait(lambda: len(inbox.items()) >= 2, "the inbox is empty")  # noqa: B023 - waited on within this pass
                if name == "wide":
                    inbox.click(device)
                    inbox.wait(lambda: len(inbox.history()) >= 3, "the conversation does not open")  # noqa: B023 - waited on within this pass
                    driver.save_screenshot(str(OUT / "inbox-1280.png"))
                else:
                    driver.save_screenshot(str(OUT / "inbox-390.png"))
                    inbox.click(device)
                    inbox.wait(lambda: len(inbox.history()) >= 3, "the conversation does not open")  # noqa: B023 - waited on within this pass
                    driver.save_screenshot(str(OUT / "inbox-390-conversation.png"))
            finally:
                driver.quit()
        for name, (width, height) in SIZES.items():
            chat(url, Path(tmp), name, width, height)
    print(f"screenshots written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
