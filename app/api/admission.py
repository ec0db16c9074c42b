"""Requests that start a turn enter in arrival order, a few at a time (app/runtime.py: Admission)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.limits import BodyTooLarge
from app.runtime import Admission


class Admit:
    """Pure ASGI middleware: a POST to one of `paths` is admitted once its body has arrived.

    The body is read first, outside the admission, so a client that sends it slowly holds
    no place; the app then reads it from here. Inside BodyLimit: an oversized body is cut
    off there, and reaches the app as the same error when it reads (413 as before).
    The place is given back by the pipeline before its claim, or when the response starts
    or the request ends.
    """

    def __init__(self, app: ASGIApp, admission: Admission, paths: tuple[str, ...]) -> None:
        self.app, self.admission, self.paths = app, admission, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        try:
            while not read or (read[-1]["type"] == "http.request" and read[-1].get("more_body", False)):
                read.append(await receive())
        except BodyTooLarge as err:
            await self.app(scope, _raising(err), send)  # the app's body read answers it, as without us
            return
        release = await self.admission.admit()

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        async def send_started(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, replay, send_started)
        finally:
            release()


def _raising(err: BodyTooLarge) -> Receive:
    async def receive() -> Message:
        raise err

    return receive
