"""Webhook deliveries as pydantic models, and the user messages they carry.

Shapes follow the Cloud API's `messages` webhook (Meta's "Webhooks: messages"
reference). The envelope is read leniently (an entry or change that does not fit is
skipped); each message is validated on its own, so one malformed message is logged
and skipped while the rest of its batch goes on.

A sender is identified by its business-scoped user id (BSUID, `messages[].from_user_id`
or `contacts[].user_id`) when Meta sends one, else by its phone number (`from`). A reply
goes to the phone number when there is one (`to`), else to the BSUID (`recipient`).

Where an outbound message goes is never read from what a client could have written:
the business number must belong to the message's tenant by WHATSAPP_TENANTS
(business_tenant), and the recipient is the device itself (recipient_of).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import validation
from app.errors import InvalidDeviceId

logger = logging.getLogger(__name__)

CHANNEL = "whatsapp"
DEFAULT_TENANT = "default"  # the tenant of business numbers WHATSAPP_TENANTS does not list
PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
WA_ID = re.compile(r"[0-9]{1,32}")  # a phone number as WhatsApp writes it (`from`, `wa_id`): digits only
# The metadata keys that say where a message came from and where its answer goes. Only
# the webhook writes them on inbound messages; an import drops them (app.admin.transfer).
ROUTING_KEYS = ("phone_number_id", "to", "recipient", "wa_message_id")
MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
# Nothing the user expects an answer to: a reaction to a message, a number change notice.
SILENT_TYPES = frozenset({"reaction", "system"})
MAX_TIMESTAMP = 2**40  # seconds: far beyond any real date, small enough for datetime


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Text(_Lenient):
    body: str


class Reply(_Lenient):
    """interactive.button_reply or interactive.list_reply: the tapped choice."""

    id: str = Field(min_length=1, max_length=256)
    title: str
    description: str | None = None


class Interactive(_Lenient):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None


class Button(_Lenient):
    """A tapped quick-reply button of a template message."""

    text: str
    payload: str | None = None


class Media(_Open):
    """image, audio, video, document, sticker: kept whole (filename, voice, animated, ...)."""

    id: str = Field(min_length=1)
    mime_type: str | None = None
    caption: str | None = None


class Location(_Open):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class Message(_Lenient):
    id: str = Field(min_length=1, max_length=512)
    type: str = Field("unknown", max_length=40)
    timestamp: int | None = Field(None, ge=0, lt=MAX_TIMESTAMP)  # Unix seconds, sent as a string
    sender: str | None = Field(None, alias="from")
    from_user_id: str | None = None
    text: Text | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    location: Location | None = None
    contacts: list[dict[str, Any]] | None = None
    image: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    document: Media | None = None
    sticker: Media | None = None


class Contact(_Lenient):
    wa_id: str | None = None
    user_id: str | None = None


class Metadata(_Lenient):
    phone_number_id: str = Field(pattern=PHONE_NUMBER_ID.pattern)


class Value(_Lenient):
    metadata: Metadata | None = None
    contacts: list[Contact] = []
    messages: list[Any] = []  # validated one by one


class Change(_Lenient):
    value: Value


class Entry(_Lenient):
    changes: list[Any] = []


class Delivery(_Lenient):
    entry: list[Any] = []


@dataclass(frozen=True)
class UserMessage:
    """One user message of a webhook delivery, as the pipeline gets it, and where its reply goes."""

    id: str
    kind: str  # the WhatsApp message type: text, interactive, button, image, ...
    text: str | None  # None: nothing to answer (an empty text, a reaction)
    sent_at: datetime | None  # the sender's own time (the message's `timestamp`), UTC
    device_id: str
    address: dict[str, str]  # {"to": phone} or, for a username-only sender, {"recipient": bsuid}
    phone_number_id: str
    choice_id: str | None = None
    choice_description: str | None = None
    attachments: tuple[dict[str, Any], ...] = field(default=())

    @property
    def external_id(self) -> str:
        return f"wa:{self.id}"

    def metadata(self) -> dict[str, Any]:
        """The message's metadata: the channel, where its reply goes, and the keys the pipeline reads."""
        data: dict[str, Any] = {
            "channel": CHANNEL,
            "phone_number_id": self.phone_number_id,
            "wa_message_id": self.id,
            **self.address,
        }
        if self.choice_id is not None:
            data["choice_id"] = self.choice_id
        if self.choice_description:
            data["choice_description"] = self.choice_description
        if self.attachments:
            data["attachments"] = list(self.attachments)
        return data


def business_tenant(tenants: dict[str, str], phone_number_id: str) -> str:
    """The tenant a business number belongs to: WHATSAPP_TENANTS, else DEFAULT_TENANT (inbound and outbound)."""
    return tenants.get(phone_number_id, DEFAULT_TENANT)


def recipient_of(device_id: str, inbound: dict[str, Any]) -> dict[str, str]:
    """Where a device's messages go: the device's own WhatsApp id, never an address stored for it.

    A device keyed by phone number gets {"to": device_id}. A device keyed by BSUID gets
    the phone of its latest inbound message when Meta sent one (inbound: that message's
    metadata, written by the webhook from a signed delivery; an import drops it), else
    {"recipient": device_id}.
    """
    if WA_ID.fullmatch(device_id):
        return {"to": device_id}
    phone = inbound.get("to")
    if isinstance(phone, str) and WA_ID.fullmatch(phone):
        return {"to": phone}
    return {"recipient": device_id}


def _addressable(device: str) -> bool:
    try:
        validation.addressable_device_id(device)
    except InvalidDeviceId:  # UnaddressableDeviceId is one
        return False
    return True


def _clean(value: str | None) -> str:
    return value.strip() if isinstance(value, str) else ""


def _content(message: Message) -> tuple[str | None, str | None, str | None, tuple[dict[str, Any], ...]]:
    """(text, choice id, choice description, attachments) of a message."""
    kind = message.type
    if kind == "text":
        return (message.text.body if message.text and message.text.body.strip() else None), None, None, ()
    if kind == "interactive" and message.interactive is not None:
        reply = message.interactive.button_reply or message.interactive.list_reply
        if reply is not None:
            return reply.title or reply.id, reply.id, reply.description, ()
    if kind == "button" and message.button is not None:
        return message.button.text or message.button.payload, message.button.payload or message.button.text, None, ()
    media = getattr(message, kind, None) if kind in MEDIA_TYPES else None
    if isinstance(media, Media):
        attachment = {"type": kind, **media.model_dump(exclude_none=True)}
        attachment.setdefault("caption", None)
        return _clean(media.caption) or f"[{kind}]", None, None, (attachment,)
    if kind == "location" and message.location is not None:
        place = message.location
        attachment = {
            "type": "location",
            "id": None,
            "mime_type": None,
            "caption": None,
            **place.model_dump(exclude_none=True),
        }
        return _clean(place.name) or _clean(place.address) or "[location]", None, None, (attachment,)
    if kind == "contacts" and message.contacts:
        attachment = {"type": "contacts", "id": None, "mime_type": None, "caption": None, "contacts": message.contacts}
        return "[contacts]", None, None, (attachment,)
    if kind in SILENT_TYPES:
        return None, None, None, ()
    # Anything else (an order, a flow reply, "unsupported"): an attachment the agent may not take.
    return f"[{kind}]", None, None, ({"type": kind, "id": None, "mime_type": None, "caption": None},)


def _contact_user_id(contacts: list[Contact], phone: str) -> str:
    for contact in contacts:
        if phone and _clean(contact.wa_id) == phone:
            return _clean(contact.user_id)
    if len(contacts) == 1 and not _clean(contacts[0].wa_id):
        return _clean(contacts[0].user_id)  # a username-only sender: no phone number to match on
    return ""


def _user_message(raw: Any, contacts: list[Contact], phone_number_id: str) -> UserMessage | None:
    try:
        message = Message.model_validate(raw)
    except ValidationError as err:
        ident = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        logger.warning("malformed whatsapp message %r skipped: %s", ident, err.errors(include_input=False)[:3])
        return None
    phone = _clean(message.sender)
    user_id = _clean(message.from_user_id) or _contact_user_id(contacts, phone)
    if not phone and not user_id:
        logger.warning("whatsapp message %r without a sender skipped", message.id)
        return None
    if (phone and not WA_ID.fullmatch(phone)) or (user_id and not _addressable(user_id)):
        # A device no route could address (the console, erasure), and a `to` that is no phone number.
        logger.warning("whatsapp message %r with a malformed sender skipped", message.id)
        return None
    text, choice_id, description, attachments = _content(message)
    sent_at = None if message.timestamp is None else datetime.fromtimestamp(message.timestamp, UTC)
    return UserMessage(
        id=message.id,
        kind=message.type,
        text=text,
        sent_at=sent_at,
        device_id=user_id or phone,
        address={"to": phone} if phone else {"recipient": user_id},
        phone_number_id=phone_number_id,
        choice_id=choice_id,
        choice_description=description,
        attachments=attachments,
    )


def _valid(model: type[BaseModel], raw: Any, what: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError:
        logger.warning("whatsapp %s that does not fit the webhook shape skipped", what)
        return None


def user_messages(payload: Any) -> Iterator[UserMessage | None]:
    """The user messages of a delivery in the order Meta lists them; None for each one skipped as malformed.

    Statuses, errors and account events carry no messages and yield nothing.
    """
    delivery = _valid(Delivery, payload, "delivery")
    for raw_entry in delivery.entry if delivery else ():
        entry = _valid(Entry, raw_entry, "entry")
        for raw_change in entry.changes if entry else ():
            change = _valid(Change, raw_change, "change")
            if change is None or not change.value.messages:
                continue  # statuses, errors, account events: acknowledged, nothing to answer
            if change.value.metadata is None:
                logger.warning("whatsapp change without a valid metadata.phone_number_id skipped")
                yield from (None for _ in change.value.messages)
                continue
            for raw in change.value.messages:
                parsed = _user_message(raw, change.value.contacts, change.value.metadata.phone_number_id)
                if parsed is not None:
                    try:  # a redelivery would carry the same unstorable value: skip it, keep the batch going
                        validation.storable_json([parsed.id, parsed.device_id, parsed.text, parsed.metadata()])
                    except ValueError as err:
                        logger.warning("whatsapp message skipped: %s", err)
                        parsed = None
                yield parsed
