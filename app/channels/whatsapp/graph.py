"""The Graph API client: message payloads, sends with bounded retries, the read + typing call.

Payload shapes and limits follow Meta's Cloud API references ("Text messages",
"Interactive reply buttons messages", "Interactive list messages", "Template
messages", "Typing indicators"). Every call is bounded by a deadline (a
time.monotonic() value): a webhook must answer Meta in time, whatever the Graph API does.

Calls are coroutines on an httpx.AsyncClient: one per event loop (a client's
connections belong to the loop that opened them), made on first use. The app's
lifespan closes its loop's client at shutdown; a loop of call_async's own closes
its client when it ends (app.core.aio.at_loop_end).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, wait_exponential

from app import telemetry
from app.core.aio import at_loop_end
from app.core.config import Settings

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

MAX_TEXT = 4096  # a text message body
MAX_BUTTON_BODY = 1024  # the body of a reply buttons message
MAX_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_BUTTON_ID = 256
MAX_ROWS = 10  # rows of a list message, over all its sections
MAX_ROW_TITLE = 24
MAX_ROW_ID = 200
MAX_LIST_BUTTON = 20
LIST_BUTTON = "Choose"
TYPING_TIMEOUT = 2.0  # seconds: the indicator is a nicety, never worth a slow webhook
MIN_ATTEMPT_SECONDS = 0.05  # less than this left of a deadline: no new attempt
RE_ENGAGEMENT = 131047  # "more than 24 hours have passed since the recipient last replied"

Status = Literal["sent", "retry", "failed", "outside_window"]


@dataclass(frozen=True)
class SendOutcome:
    """What the Graph API made of one send.

    Sent (with its message id), worth retrying, refused, or outside the window.
    """

    status: Status
    error: str | None = None
    message_id: str | None = None
    attempts: int = 0


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message_payload(
    address: dict[str, str], body: str, choices: Sequence[dict[str, Any]] = (), template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The /messages body: a template if given, else text with up to 3 reply buttons or 4-10 list rows.

    address: {"to": phone} or {"recipient": bsuid}. Titles and ids are cut to the
    platform's limits; choices past the 10th are dropped.
    """
    envelope: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", **address}
    if template is not None:
        spec = {"name": template["name"], "language": template.get("language") or {"code": "en_US"}}
        if isinstance(spec["language"], str):
            spec["language"] = {"code": spec["language"]}
        if template.get("components"):
            spec["components"] = template["components"]
        return envelope | {"type": "template", "template": spec}
    choices = [c for c in choices if str(c.get("id") or "") and str(c.get("title") or "")][:MAX_ROWS]
    if not choices:
        return envelope | {"type": "text", "text": {"body": _cut(body, MAX_TEXT)}}
    if len(choices) <= MAX_BUTTONS:
        buttons = [
            {
                "type": "reply",
                "reply": {"id": str(c["id"])[:MAX_BUTTON_ID], "title": _cut(str(c["title"]), MAX_BUTTON_TITLE)},
            }
            for c in choices
        ]
        interactive = {"type": "button", "body": {"text": _cut(body, MAX_BUTTON_BODY)}, "action": {"buttons": buttons}}
    else:
        rows = [{"id": str(c["id"])[:MAX_ROW_ID], "title": _cut(str(c["title"]), MAX_ROW_TITLE)} for c in choices]
        action = {"button": LIST_BUTTON[:MAX_LIST_BUTTON], "sections": [{"rows": rows}]}
        interactive = {"type": "list", "body": {"text": _cut(body, MAX_TEXT)}, "action": action}
    return envelope | {"type": "interactive", "interactive": interactive}


class GraphApi:
    """The Cloud API's /messages endpoint, on one httpx.AsyncClient per event loop."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None):
        self.settings = settings
        self._given = client  # a test's own client, used on whatever loop calls
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def client(self) -> httpx.AsyncClient:
        """This loop's client, made on first send (call it on the loop)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # Imported here: importing httpx and building its TLS context would otherwise
            # lengthen every cold start, including those that never reply.
            import httpx

            client = self._clients[loop] = httpx.AsyncClient(timeout=self.settings.whatsapp_timeout_seconds)
            at_loop_end(self.aclose)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (the app's shutdown, or the end of a loop of call_async's own)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _token(self) -> str | None:
        token = self.settings.whatsapp_access_token
        value = token.get_secret_value().strip() if token is not None else ""
        return value or None

    def url(self, phone_number_id: str) -> str:
        settings = self.settings
        return f"{settings.whatsapp_api_base_url}/{settings.whatsapp_api_version}/{phone_number_id}/messages"

    @telemetry.whatsapp_send  # a client span (status, attempts) and a count by status
    async def send(self, phone_number_id: str, payload: dict[str, Any], *, deadline: float) -> SendOutcome:
        """POST one message, retrying timeouts, connection errors, 429 and 5xx until accepted or out of time.

        At most WHATSAPP_SEND_ATTEMPTS tries, none started past deadline, each bounded by
        WHATSAPP_TIMEOUT_SECONDS and by what is left. 131047 (outside the customer-service
        window) and other 4xx answers are not retried.
        """
        token = self._token()
        if token is None:
            return SendOutcome("failed", "WHATSAPP_ACCESS_TOKEN is not set")
        headers = {"Authorization": f"Bearer {token}"}
        attempts = self.settings.whatsapp_send_attempts

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= attempts or deadline - time.monotonic() < MIN_ATTEMPT_SECONDS

        def wait(state: RetryCallState) -> float:
            return min(backoff(state), max(0.0, deadline - time.monotonic()))

        backoff = wait_exponential(multiplier=0.2, max=2)
        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_result(lambda outcome: outcome.status == "retry"),
            retry_error_callback=_last_outcome,
            before_sleep=_log_retry,
        )
        if deadline - time.monotonic() < MIN_ATTEMPT_SECONDS:
            return SendOutcome("retry", "no time left to send before the webhook's acknowledgement")
        # A SendOutcome: _post's or _last_outcome's (tenacity leaves its call's return type unbound).
        outcome: SendOutcome = await retrying(self._post, self.url(phone_number_id), payload, headers, deadline)
        tries = retrying.statistics.get("attempt_number", 1)
        error = None if outcome.error is None else f"{outcome.error} (after {tries} attempt{'s' if tries > 1 else ''})"
        if outcome.status == "sent":
            logger.info("whatsapp message sent (attempt %s)", tries)
        return SendOutcome(outcome.status, error and error[:500], outcome.message_id, tries)

    async def _post(self, url: str, payload: dict[str, Any], headers: dict[str, str], deadline: float) -> SendOutcome:
        import httpx

        timeout = max(MIN_ATTEMPT_SECONDS, min(self.settings.whatsapp_timeout_seconds, deadline - time.monotonic()))
        try:
            response = await self.client.post(url, json=payload, headers=headers, timeout=timeout)
        except httpx.TimeoutException as err:
            return SendOutcome("retry", f"timeout ({type(err).__name__})")
        except httpx.TransportError as err:
            return SendOutcome("retry", f"connection error ({type(err).__name__})")
        except (httpx.HTTPError, httpx.InvalidURL) as err:  # a misconfigured WHATSAPP_API_BASE_URL
            return SendOutcome("failed", f"request failed ({type(err).__name__})")
        if response.is_success:
            return SendOutcome("sent", message_id=_message_id(response))
        code, message = _graph_error(response)
        error = f"HTTP {response.status_code}: {message} (code {code})"
        if code == RE_ENGAGEMENT:
            return SendOutcome("outside_window", error)
        # 4xx: the request itself is refused (bad recipient, expired token): resending cannot help.
        retry = response.status_code >= 500 or response.status_code == 429
        return SendOutcome("retry" if retry else "failed", error)

    async def typing(self, phone_number_id: str, message_id: str, *, deadline: float) -> bool:
        """Mark an inbound message read and show "typing..." (one call); best effort, False on any failure.

        Bounded by TYPING_TIMEOUT and deadline; a call under way is not cut short by a
        cancellation (the request may be on the wire: it ends, then the reply may go).
        """
        import httpx

        token = self._token()
        timeout = min(TYPING_TIMEOUT, deadline - time.monotonic())
        if token is None or timeout < MIN_ATTEMPT_SECONDS:
            return False
        payload = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }
        response = None
        with anyio.move_on_after(timeout, shield=True):
            try:
                response = await self.client.post(
                    self.url(phone_number_id),
                    json=payload,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=timeout,
                )
            except (httpx.HTTPError, httpx.InvalidURL) as err:
                logger.info("whatsapp typing indicator failed: %s", type(err).__name__)
                return False
        if response is None:
            logger.info("whatsapp typing indicator failed: no answer within %ss", round(timeout, 2))
            return False
        if not response.is_success:
            logger.info("whatsapp typing indicator refused: HTTP %s", response.status_code)
        else:
            logger.info("whatsapp typing indicator sent")
        return response.is_success


def _last_outcome(state: RetryCallState) -> SendOutcome:
    """What send returns once the retries stop: the last attempt's SendOutcome ("retry" included)."""
    if state.outcome is None:  # tenacity calls retry_error_callback only after an attempt, which sets it
        raise RuntimeError("no attempt has run")
    return state.outcome.result()


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome.result() if state.outcome is not None else None
    logger.warning("whatsapp send attempt %s failed: %s", state.attempt_number, outcome and outcome.error)


def _message_id(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["messages"][0]["id"])
    except (ValueError, LookupError, TypeError):
        return None


def _graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json().get("error") or {}
        code = error.get("code")
        return (code if isinstance(code, int) else None), str(error.get("message", "no message"))[:200]
    except (ValueError, AttributeError):
        return None, response.text[:200] or "empty response"
