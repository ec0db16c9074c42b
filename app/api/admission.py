"""Requests that start a turn enter in arrival order, a few at a time (app/runtime.py: Admission)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.limits import BodyTooLarge
from app.api.paths import route_path
from app.runtime import Admission

# scope["state"] key: time.monotonic() once the body had arrived, before any wait for a place
# (app/api/deps.py: received_at, where a webhook's acknowledgement budget starts).
ARRIVED = "body_arrived_at"


class Admit:
    """Pure ASGI middleware: a POST to one of `paths` (route paths: under a root path too) is admitted once
    its body has arrived.

    The body is read first, outside the admission, so a client that sends it slowly holds
    no place; the app then reads it from here. Inside BodyLimit: an oversized body is cut
    off there, and reaches the app as the same error when it reads (413 as before).
    The place is given back at the request's first statement (app/core/db.py: arun), or when
    the response starts or the request ends. A client that left before its body was whole takes no place.
    """

    def __init__(self, app: ASGIApp, admission: Admission, paths: tuple[str, ...]) -> None:
        self.app, self.admission, self.paths = app, admission, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        try:
            while not read or (read[-1]["type"] == "http.request" and read[-1].get("more_body", False)):
                read.append(await receive())
        except BodyTooLarge as err:
            await self.app(scope, _raising(err), send)  # the app's body read answers it, as without us
            return
        if read[-1]["type"] != "http.request":  # the client left before its body was whole: no place for it
            await self.app(scope, replay_only(read, receive), send)
            return
        scope.setdefault("state", {})[ARRIVED] = time.monotonic()  # a budget counted from arrival counts the wait
        release = await self.admission.admit()
        replay = replay_only(read, receive)

        async def send_started(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, replay, send_started)
        finally:
            release()


def replay_only(read: list[Message], receive: Receive) -> Receive:
    """The messages already read, then the client's own."""

    async def replay() -> Message:
        return read.pop(0) if read else await receive()

    return replay


def _raising(err: BodyTooLarge) -> Receive:
    async def receive() -> Message:
        raise err

    return receive
