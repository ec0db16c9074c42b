"""WhatsApp Cloud API channel: read webhook deliveries, run them through the pipeline, send the replies.

A sender is identified by its business-scoped user id (BSUID, `messages[].from_user_id`
or `contacts[].user_id`) when Meta sends one, else by its phone number (`from`). A reply
goes to the phone number when there is one (`to`), else to the BSUID (`recipient`).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

from app import validation
from app.core.config import Settings
from app.errors import InvalidInput, StoreError, StoreUnavailable
from app.ledger import Answer, Ledger, Pending
from app.pipeline import Inbound, OnReply, Pipeline

logger = logging.getLogger(__name__)

CHANNEL = "whatsapp"
DEFAULT_TENANT = "default"
MAX_TEXT = 4096  # the Cloud API's limit on a text message body
TEXT_ONLY_REPLY = "Sorry, I can only read text messages for now. Please type your message."
# Nothing the user expects an answer to: a reaction to a message, a number change notice.
SILENT_TYPES = frozenset({"reaction", "system"})
PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
BACKOFF_SECONDS = 0.2

# A message the agents cannot read is stored with its polite answer in one statement,
# without touching the device's lease or lock; a known message id inserts nothing.
@dataclass(frozen=True)
class UserMessage:
    """One user message of a webhook delivery and where its reply goes."""

    id: str
    kind: str  # the WhatsApp message type: text, image, audio, ...
    text: str | None
    timestamp: int | None
    device_id: str
    address: dict[str, str]  # {"to": phone} or, for a username-only sender, {"recipient": bsuid}
    phone_number_id: str

    @property
    def external_id(self) -> str:
        return f"wa:{self.id}"

    def metadata(self) -> dict[str, Any]:
        return {"channel": CHANNEL, "phone_number_id": self.phone_number_id, "wa_message_id": self.id, **self.address}


@dataclass
class DeliveryReport:
    """What became of the user messages of one delivery."""

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _timestamp(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _contact_user_id(contacts: list[dict[str, Any]], phone: str) -> str:
    for contact in contacts:
        if phone and _str(contact.get("wa_id")) == phone:
            return _str(contact.get("user_id"))
    if len(contacts) == 1 and not _str(contacts[0].get("wa_id")):
        return _str(contacts[0].get("user_id"))  # a username-only sender: no phone number to match on
    return ""


def _parse(message: dict[str, Any], contacts: list[dict[str, Any]], phone_number_id: str) -> UserMessage | None:
    ident = _str(message.get("id"))
    phone = _str(message.get("from"))
    user_id = _str(message.get("from_user_id")) or _contact_user_id(contacts, phone)
    if not ident or not (phone or user_id):
        logger.warning("whatsapp message without an id or a sender skipped (id %r)", ident)
        return None
    kind = _str(message.get("type"))[:40] or "unknown"
    text = (message.get("text") or {}).get("body") if kind == "text" else None
    return UserMessage(
        id=ident,
        kind=kind,
        text=text if isinstance(text, str) and text.strip() else None,
        timestamp=_timestamp(message.get("timestamp")),
        device_id=user_id or phone,
        address={"to": phone} if phone else {"recipient": user_id},
        phone_number_id=phone_number_id,
    )


def user_messages(payload: Any) -> Iterator[UserMessage]:
    """The user messages of a delivery, in the order Meta lists them; statuses and other events skipped."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in _dicts(entries):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict) or not value.get("messages"):
                continue  # statuses, errors, account events: acknowledged, nothing to answer
            metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
            phone_number_id = str(metadata.get("phone_number_id") or "")
            if not PHONE_NUMBER_ID.fullmatch(phone_number_id):
                logger.warning("whatsapp change without a valid metadata.phone_number_id skipped")
                continue
            contacts = list(_dicts(value.get("contacts")))
            for message in _dicts(value.get("messages")):
                parsed = _parse(message, contacts, phone_number_id)
                if parsed is None:
                    continue
                try:  # a redelivery would carry the same unstorable text: skip it, keep the batch going
                    validation.storable_json([parsed.id, parsed.device_id, parsed.text])
                except ValueError as err:
                    logger.warning("whatsapp message skipped: %s", err)
                    continue
                yield parsed


class WhatsAppSender:
    """Sends text messages through the Graph API: one HTTP client per app, bounded retries."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None):
        self.settings = settings
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        # Made on first send: importing httpx and building its TLS context would
        # otherwise lengthen every cold start, including those that never reply.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import httpx

                    self._client = httpx.Client(timeout=self.settings.whatsapp_timeout_seconds)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def send_text(self, metadata: dict[str, Any], body: str) -> str | None:
        """Send body to the sender named in a message's metadata; None when accepted, else the reason."""
        token = self.settings.whatsapp_access_token
        if token is None or not token.get_secret_value().strip():
            return "WHATSAPP_ACCESS_TOKEN is not set"
        phone_number_id = str(metadata.get("phone_number_id") or "")
        address = {key: metadata[key] for key in ("to", "recipient") if _str(metadata.get(key))}
        if not PHONE_NUMBER_ID.fullmatch(phone_number_id) or len(address) != 1:
            return "no phone_number_id or recipient in the message metadata"
        url = f"{self.settings.whatsapp_api_base_url.rstrip('/')}/{phone_number_id}/messages"
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **address,
            "type": "text",
            "text": {"body": body if len(body) <= MAX_TEXT else body[: MAX_TEXT - 1] + "…"},
        }
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
        attempts = self.settings.whatsapp_send_attempts
        for attempt in range(1, attempts + 1):
            retry, error = self._attempt(url, payload, headers)
            if error is None:
                return None
            logger.warning("whatsapp send attempt %s/%s failed: %s", attempt, attempts, error)
            if not retry:
                break
            if attempt < attempts:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        return f"{error} (after {attempt} attempt{'s' if attempt > 1 else ''})"[:500]

    def _attempt(self, url: str, payload: dict[str, Any], headers: dict[str, str]) -> tuple[bool, str | None]:
        """One POST: (worth retrying, error or None)."""
        import httpx

        try:
            response = self.client.post(url, json=payload, headers=headers)
        except httpx.TimeoutException as err:
            return True, f"timeout ({type(err).__name__})"
        except httpx.TransportError as err:
            return True, f"connection error ({type(err).__name__})"
        except (httpx.HTTPError, httpx.InvalidURL) as err:  # a misconfigured WHATSAPP_API_BASE_URL
            return False, f"request failed ({type(err).__name__})"
        if response.is_success:
            return False, None
        # 4xx: the request itself is refused (bad recipient, expired token): resending cannot help.
        retry = response.status_code >= 500 or response.status_code == 429
        return retry, f"HTTP {response.status_code}: {_graph_error(response)}"


def _graph_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('message', 'no message')} (code {error.get('code')})"
    except (ValueError, AttributeError):
        return response.text[:200] or "empty response"


def deliver(
    target: Settings | WhatsAppSender, pending: Pending, answer: Answer, *, ledger: Ledger | None = None
) -> bool:
    """Send a stored reply to the WhatsApp user who wrote pending and record it on ledger; False if not ours."""
    # The destination comes from the message's own metadata, not from the request at
    # hand: whoever drains the device (a later webhook, the cleanup run) sends it right.
    if pending.metadata.get("channel") != CHANNEL:
        return False
    sender = target if isinstance(target, WhatsAppSender) else WhatsAppSender(target)
    try:
        error = sender.send_text(pending.metadata, answer.reply)
    finally:
        if sender is not target:
            sender.close()
    if error is not None:
        logger.error(
            "reply %s to whatsapp message %s not delivered: %s",
            answer.reply_id, pending.metadata.get("wa_message_id"), error,
        )
    if ledger is not None and answer.reply_id is not None:
        try:
            ledger.record_delivery(answer.reply_id, error)
        except StoreError as err:  # the reply went (or not) either way; only the note is lost
            logger.error("could not record the delivery of reply %s: %s", answer.reply_id, err)
    return True


def replier(sender: WhatsAppSender, ledger: Ledger) -> OnReply:
    """The pipeline's on_reply for WhatsApp messages: deliver and record."""
    return functools.partial(deliver, sender, ledger=ledger)


def handle_delivery(payload: Any, pipeline: Pipeline, sender: WhatsAppSender, settings: Settings) -> DeliveryReport:
    """Run the user messages of one delivery in order; StoreUnavailable propagates so Meta redelivers."""
    report = DeliveryReport()
    on_reply = replier(sender, pipeline.ledger)
    oldest = time.time() - settings.webhook_max_age_seconds
    for message in user_messages(payload):
        if message.timestamp is None or message.timestamp < oldest:
            logger.info("whatsapp message %s is older than WEBHOOK_MAX_AGE_SECONDS: ignored", message.id)
            report.ignored += 1
            continue
        if message.kind in SILENT_TYPES or (message.kind == "text" and message.text is None):
            report.ignored += 1
            continue
        tenant = settings.whatsapp_tenants.get(message.phone_number_id, DEFAULT_TENANT)
        try:
            if message.kind == "text":
                inbound = Inbound(tenant, message.device_id, message.text, message.external_id, message.metadata())
                stored = not pipeline.handle(inbound, wait=False, on_reply=on_reply, stateless=False).duplicate
            else:
                stored = answer_unsupported(pipeline.ledger, sender, tenant, message)
        except StoreUnavailable:
            raise  # 503: Meta delivers again once the store is back
        except (InvalidInput, StoreError) as err:
            # A redelivery would carry the same value, and a statement the database
            # refuses would fail again: acknowledge and keep the batch going.
            logger.error("whatsapp message %s ignored: %s", message.id, err)
            report.ignored += 1
            continue
        if stored:
            report.stored += 1
        else:
            report.duplicates += 1
    return report


def answer_unsupported(ledger: Ledger, sender: WhatsAppSender, tenant: str, message: UserMessage) -> bool:
    """Store a non-text message with the text-only reply and send it, once per message id; False if known."""
    metadata, content = message.metadata(), f"[{message.kind}]"
    ids = ledger.record_exchange(
        validation.tenant_id(tenant), validation.device_id(message.device_id), content, TEXT_ONLY_REPLY,
        external_id=message.external_id, metadata=metadata,
    )
    if ids is None:
        return False
    inbound_id, reply_id = ids
    pending = Pending(inbound_id, content, metadata)
    deliver(sender, pending, Answer(TEXT_ONLY_REPLY, None, None, None, reply_id), ledger=ledger)
    return True
