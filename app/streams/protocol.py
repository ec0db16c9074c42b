"""The AI SDK's UI message stream (protocol v1, AI SDK 5 and later): SSE events of JSON parts.

Each part is one `data: {json}` event; the stream ends with `data: [DONE]`. Parts used:
start {messageId}, text-start/text-delta/text-end {id, delta}, tool-input-available
{toolCallId, toolName, input}, tool-output-available {toolCallId, output}, data-lock,
data-choices and data-status {data}, error {errorText}, finish. Only the fields the
protocol defines are sent, so strict and loose client schemas both accept them.
"""

from __future__ import annotations

import json
from typing import Any

HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",  # nginx and alike: pass each event on at once
}
DONE = "data: [DONE]\n\n"
# An SSE comment: keeps idle proxies from closing a stream while the agent thinks; clients ignore it.
KEEPALIVE = ": keep-alive\n\n"


def event(part: dict[str, Any]) -> str:
    return f"data: {json.dumps(part, separators=(',', ':'), ensure_ascii=False, default=str)}\n\n"


class Encoder:
    """Turns text, tool events and data into parts, opening and closing text parts as needed."""

    def __init__(self, message_id: str):
        self.message_id = message_id
        self._text_id: str | None = None
        self._parts = 0

    def start(self) -> str:
        return event({"type": "start", "messageId": self.message_id})

    def text(self, delta: str) -> str:
        if not delta:
            return ""
        out = ""
        if self._text_id is None:
            self._parts += 1
            self._text_id = f"{self.message_id}-t{self._parts}"
            out += event({"type": "text-start", "id": self._text_id})
        return out + event({"type": "text-delta", "id": self._text_id, "delta": delta})

    def end_text(self) -> str:
        if self._text_id is None:
            return ""
        part, self._text_id = event({"type": "text-end", "id": self._text_id}), None
        return part

    def tool(self, item: dict[str, Any]) -> str:
        """A draft's tool event ({"type": "tool-call" | "tool-result", "call_id", ...}) as its part."""
        out = self.end_text()
        if item.get("type") == "tool-call":
            return out + event(
                {
                    "type": "tool-input-available",
                    "toolCallId": str(item["call_id"]),
                    "toolName": str(item.get("name") or "tool"),
                    "input": item.get("input"),
                }
            )
        return out + event(
            {"type": "tool-output-available", "toolCallId": str(item["call_id"]), "output": item.get("output")}
        )

    def data(self, name: str, data: Any) -> str:
        return event({"type": f"data-{name}", "data": data})

    def error(self, text: str) -> str:
        return self.end_text() + event({"type": "error", "errorText": text})

    def finish(self) -> str:
        return self.end_text() + event({"type": "finish"}) + DONE
