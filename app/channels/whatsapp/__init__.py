"""WhatsApp Cloud API channel: read webhook deliveries, run them through the pipeline, send the replies.

inbound: the webhook's payload models; graph: the Graph API client (async, one per event loop); outbox: sending
stored replies exactly once, in order, inside the customer-service window; webhook:
a delivery through the pipeline within the acknowledgement budget.
"""

from app.channels.whatsapp.graph import GraphApi, SendOutcome, message_payload
from app.channels.whatsapp.inbound import CHANNEL, UserMessage, user_messages
from app.channels.whatsapp.outbox import Outbox, SendResult, send_to_device
from app.channels.whatsapp.webhook import (
    DeliveryReport,
    WhatsAppSender,
    handle_delivery,
    replier,
    typist,
)

__all__ = [
    "CHANNEL",
    "DeliveryReport",
    "GraphApi",
    "Outbox",
    "SendOutcome",
    "SendResult",
    "UserMessage",
    "WhatsAppSender",
    "handle_delivery",
    "message_payload",
    "replier",
    "send_to_device",
    "typist",
    "user_messages",
]
