"""The operator inbox as a browser test (and `make screenshots`) sees it, and conversations to fill it with."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.channels.payloads import PATH, USER, change, delivery, raw, sign, text
from tests.utils.browser import WAIT_SECONDS

SIZES = {"wide": (1280, 800), "phone": (390, 844)}


def web_chat(url: str, message: str, device: str | None = None) -> tuple[str, dict]:
    """One message from a web visitor through POST /api/chat; (device id, answer)."""
    device = device or str(uuid.uuid4())
    response = httpx.post(f"{url}/api/chat", json={"message": message}, headers={"X-Device-ID": device}, timeout=30)
    response.raise_for_status()
    return device, response.json()


def whatsapp_message(url: str, body: str, mid: str, secret: str, sender: str = USER) -> None:
    """A signed webhook delivery with one text message from sender."""
    payload = raw(delivery([change([text(body, mid, sender)])]))
    signed(url, payload, secret)


def whatsapp_statuses(url: str, callbacks: list[dict], secret: str) -> None:
    """A signed webhook delivery of status callbacks."""
    signed(url, raw(delivery([change(statuses=callbacks)])), secret)


def signed(url: str, body: bytes, secret: str) -> None:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}
    httpx.post(f"{url}{PATH}", content=body, headers=headers, timeout=30).raise_for_status()


class Inbox:
    """The console page in a driver: open with a key, read the list and the open conversation."""

    def __init__(self, driver: Any, url: str):
        self.driver, self.url = driver, url

    def wait(self, condition, message: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.05).until(lambda d: condition(), message)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def open(self, key: str) -> Inbox:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{self.url}/console")
        self.wait(lambda: self.js("return document.body.dataset.ready === 'true'"))
        self.driver.find_element(By.CSS_SELECTOR, "#key").send_keys(key)
        self.driver.find_element(By.CSS_SELECTOR, "#key-save").click()
        self.wait(lambda: self.js("return document.body.dataset.ready === 'true' && !!document.body.dataset.refreshed"))
        return self

    def items(self) -> list[dict]:
        """The conversations listed, top first: device, channel, name, preview, tags, whether it needs a person."""
        return self.js("""return [...document.querySelectorAll('#conversations li')].map(li => ({
            device: li.dataset.device, channel: li.dataset.channel,
            name: li.querySelector('.name').textContent, preview: li.querySelector('.preview').textContent,
            tags: [...li.querySelectorAll('.tag')].map(t => t.textContent),
            needs: li.classList.contains('needs-person')}))""")

    def click(self, device: str) -> None:
        """Open a conversation (the list is redrawn on updates: try again if the row was replaced)."""

        def go() -> bool:
            return self.js(
                """const li = [...document.querySelectorAll('#conversations li')]
                .find(l => l.dataset.device === arguments[0]);
                if (!li) return false; li.querySelector('button').click(); return true;""",
                device,
            )

        self.wait(go, "the conversation is not listed")

    def history(self) -> list[dict]:
        return self.js("""return [...document.querySelectorAll('#history li')].map(li => ({
            classes: li.className, text: li.querySelector('.text').textContent,
            meta: li.querySelector('.meta').textContent, delivery: li.dataset.delivery || null}))""")

    def lock(self) -> str:
        return self.js("return document.getElementById('detail-lock').textContent")

    def overflow(self) -> int:
        """How many pixels the page is wider than its viewport (0: no horizontal scroll)."""
        return self.js(
            "return Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - document.documentElement.clientWidth"
        )
