"""Streamed web chat: the AI SDK's UI message stream, resume, and stop.

- POST /api/chat/stream: the request body of the AI SDK's DefaultChatTransport (`id`,
  `messages`, `trigger`, `messageId`); answers the last user message through the
  pipeline (the server keeps the history: earlier messages in the body are not stored
  again), under the limits, bounds and idempotency of POST /api/chat (the UI message's
  id is the idempotency key unless Idempotency-Key is sent). Errors before the stream
  starts are the usual JSON errors (422, 429, 503).
- GET /api/chat/stream/{id}/stream: DefaultChatTransport's reconnect (useChat's
  `resume: true`): 204 when the device has no turn in flight, else its stream from the
  first delta, on any instance.
- POST /api/chat/stop: ask the device's turn in flight to stop.

The turn runs in the process's stream task group (app/streams/hub.py), not in the
request: a client that goes away does not stop it. Without that group (Mangum on
Lambda, which cannot stream a response) the stream comes as one body once the turn ends.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Path
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import WebDevice
from app.api.deps import Db, Pipe
from app.api.errors import ApiError, ErrorBody
from app.api.routes.chat import NO_NUL, idempotency_external_id
from app.core.db import arun
from app.pipeline import Inbound, Pipeline, Result
from app.streams import statements as sql
from app.streams.protocol import HEADERS, Encoder
from app.streams.reader import Final, Follower, ending, read

router = APIRouter(tags=["chat"])

STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "the AI SDK's UI message stream (SSE)"},
    **{code: {"model": ErrorBody} for code in (400, 401, 413, 422, 429, 503)},
}


class UIPart(BaseModel):
    """A part of a UI message; only text parts are read."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(max_length=100)
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart] = Field(max_length=100)


class StreamRequest(BaseModel):
    """DefaultChatTransport's body; extra keys (its `body` option) are ignored but choice_id."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=255, description="the chat's id (the device holds one conversation)")
    messages: list[UIMessage] = Field(min_length=1, max_length=2000)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = Field(None, max_length=255)  # noqa: N815 - the AI SDK's name
    choice_id: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL)


class StopResult(BaseModel):
    stopping: bool = Field(description="a turn was in flight and is asked to stop")
    status: Literal["stopping", "already_stopping", "idle"]
    message_id: int | None = Field(description="the message whose turn stops")
    message: str


def last_user_text(body: StreamRequest) -> tuple[UIMessage, str]:
    """The last message, which must be the user's, and its text (its text parts joined); 422 otherwise."""
    last = body.messages[-1]
    text = "".join(part.text or "" for part in last.parts if part.type == "text")
    if last.role != "user" or not 1 <= len(text) <= 4096 or "\x00" in text:
        raise ApiError(422, "invalid_message", "the last message must be the user's, with 1-4096 characters of text")
    return last, text


class Flight:
    """A streamed request's turn, run in the stream task group: ready once the message is stored."""

    def __init__(self) -> None:
        self.ready, self.done = anyio.Event(), anyio.Event()
        self.message_id: int | None = None
        self.result: Result | None = None
        self.error: Exception | None = None

    def claimed(self, message_id: int | None) -> None:
        self.message_id = message_id
        self.ready.set()

    async def run(self, pipeline: Pipeline, inbound: Inbound, slot: contextlib.ExitStack) -> None:
        with slot:
            try:
                self.result = await pipeline.handle(inbound, on_claimed=self.claimed)
            except Exception as err:  # noqa: BLE001 - handed to the request, which answers it
                self.error = err
            finally:
                self.done.set()
                self.ready.set()
                pipeline.runtime.streams.notify((inbound.tenant_id, inbound.device_id))

    def final(self) -> Final | None:
        result = self.result
        if result is None:
            return None
        if result.status == "answered":
            return Final(
                "answered",
                result.reply or "",
                result.agent,
                result.stopped,
                result.lock_agent,
                result.lock_expires_at,
                result.choices,
            )
        return Final(result.status, result.reply, result.agent, False, result.lock_agent, result.lock_expires_at)


def whole(message_id: str, final: Final) -> str:
    """A complete stream from an outcome alone (no deltas): the one-body answer."""
    encoder = Encoder(message_id)
    return encoder.start() + ending(encoder, "", final)


def _deadline(pipeline: Pipeline) -> float:
    settings = pipeline.settings
    return time.monotonic() + settings.chat_wait_seconds + settings.agent_timeout_seconds


@router.post("/api/chat/stream", response_class=StreamingResponse, responses=STREAM_RESPONSES)
async def chat_stream(
    body: StreamRequest,
    device: WebDevice,
    pipeline: Pipe,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Send the last user message; the reply comes as the AI SDK's UI message stream.

    Parts: start (messageId "reply-<message id>", the same on resume), text-start /
    text-delta / text-end, tool-input-available / tool-output-available, data-status
    ({"status": "restarted" | "stopped" | "queued" | "held" | "degraded"}), data-lock
    ({"agent", "expires_at", "answered_by"}), data-choices ([{"id", "title"}]), finish, [DONE].
    """
    last, text = last_user_text(body)
    external_id = idempotency_external_id(device.device_id, idempotency_key or f"ui:{last.id}")
    metadata: dict[str, Any] = {"channel": "web"}
    if body.choice_id is not None:
        metadata["choice_id"] = body.choice_id
    inbound = Inbound(device.tenant_id, device.device_id, text, external_id, metadata)
    hub, background = pipeline.runtime.streams, pipeline.runtime.background
    if not background.running:  # no lifespan, so no task to outlive the request: one body at the end
        with pipeline.runtime.slot():
            result = await pipeline.handle(inbound)
        flight = Flight()
        flight.result = result
        final = flight.final()
        assert final is not None
        return Response(whole(f"reply-{result.message_id or 0}", final), headers=HEADERS)
    slot = contextlib.ExitStack()
    slot.enter_context(pipeline.runtime.slot())  # 503 now when the instance is full; the turn holds it
    flight = Flight()
    background.start(flight.run, pipeline, inbound, slot)
    await flight.ready.wait()
    if flight.error is not None:
        raise flight.error
    if flight.message_id is None:  # answered without the store (degraded)
        final = flight.final()
        assert final is not None
        return Response(whole("reply-0", final), headers=HEADERS)
    follower = Follower(
        pipeline.ledger.engine,
        hub,
        device.tenant_id,
        device.device_id,
        flight.message_id,
        poll_seconds=pipeline.settings.stream_flush_ms / 1000,
        deadline=_deadline(pipeline),
        final=flight.final,
    )
    return StreamingResponse(follower.parts(), headers=HEADERS)


@router.get(
    "/api/chat/stream/{chat_id}/stream",
    response_class=StreamingResponse,
    responses={204: {"description": "no turn in flight"}, **STREAM_RESPONSES},
)
async def resume_stream(
    chat_id: Annotated[str, Path(min_length=1, max_length=255)], device: WebDevice, pipeline: Pipe
) -> Response:
    """The device's turn in flight as a UI message stream from its first delta, then live; 204 when none.

    When the turn's worker died, this instance runs it again once its lease has lapsed
    (attempt 2): the stream says data-status restarted and goes on with the rerun.
    """
    engine, hub = pipeline.ledger.engine, pipeline.runtime.streams
    row = await read(engine, device.tenant_id, device.device_id, 0)
    if row["message_id"] is None:
        return Response(status_code=204)

    def rerun() -> None:
        # Not on an instance that is stopping: the page follows the turn again elsewhere (Follower).
        if pipeline.runtime.background.running and not pipeline.runtime.stopping:
            pipeline.runtime.background.start(pipeline.drain, device.tenant_id, device.device_id)

    follower = Follower(
        engine,
        hub,
        device.tenant_id,
        device.device_id,
        row["message_id"],
        poll_seconds=pipeline.settings.stream_flush_ms / 1000,
        deadline=_deadline(pipeline),
        rerun=rerun,
    )
    return StreamingResponse(follower.parts(), headers=HEADERS)


@router.post("/api/chat/stop", response_model=StopResult, responses={c: {"model": ErrorBody} for c in (400, 401)})
async def stop(device: WebDevice, database: Db) -> StopResult:
    """Stop the device's turn in flight, whichever instance runs it (it sees the request within about
    half a second). Its partial reply is stored, marked stopped. Nothing running, or asked already: 200."""
    row = await arun(database.engine, sql.STOP, {"tenant": device.tenant_id, "device": device.device_id})
    if row["message_id"] is None:
        return StopResult(stopping=False, status="idle", message_id=None, message="no turn is in flight")
    if row["already"]:
        return StopResult(
            stopping=True,
            status="already_stopping",
            message_id=row["message_id"],
            message="this turn was already asked to stop",
        )
    return StopResult(
        stopping=True,
        status="stopping",
        message_id=row["message_id"],
        message="the turn stops; its partial reply is kept, marked stopped",
    )
