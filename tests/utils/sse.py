"""Read the AI SDK's UI message stream (SSE) with httpx: its parts, one by one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

DONE = {"type": "[DONE]"}


def parts(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON parts of a streaming response, then DONE for `data: [DONE]`; comments skipped."""
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :]
        yield DONE if payload == "[DONE]" else json.loads(payload)


def text_of(items: list[dict[str, Any]], *, after_restart: bool = False) -> str:
    """The text the parts spell (with after_restart: only what follows the last data-status restarted)."""
    if after_restart:
        marks = [i for i, p in enumerate(items) if p["type"] == "data-status" and p["data"]["status"] == "restarted"]
        items = items[marks[-1] + 1 :] if marks else items
    return "".join(p["delta"] for p in items if p["type"] == "text-delta")
