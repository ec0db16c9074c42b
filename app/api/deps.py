"""Typed dependencies: routes ask for what they need, tests swap it with dependency_overrides.

They do no I/O (the engine connects on first use), so they are async: FastAPI would
otherwise send each one through the thread pool.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from app.channels.whatsapp import WhatsAppSender
from app.chat_history import ChatHistory
from app.core.config import Settings
from app.core.db import Database
from app.pipeline import Pipeline
from app.sessions import SessionService
from app.takeover import OperatorChannel


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.database


AppSettings = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Database, Depends(get_database)]


async def get_sessions(database: Db, settings: AppSettings) -> SessionService:
    return SessionService(
        database.engine, default_ttl=settings.default_session_ttl, context_cap=settings.context_list_cap
    )


async def get_pipeline(request: Request, database: Db, settings: AppSettings) -> Pipeline:
    return Pipeline(database.engine, request.app.state.registry, settings)


async def get_chat_history(database: Db) -> ChatHistory:
    return ChatHistory(database.engine)


Sessions = Annotated[SessionService, Depends(get_sessions)]
Pipe = Annotated[Pipeline, Depends(get_pipeline)]
History = Annotated[ChatHistory, Depends(get_chat_history)]


async def get_whatsapp(request: Request) -> WhatsAppSender:
    """The app's one WhatsApp sender (Graph API client and background work), made by create_app."""
    return request.app.state.whatsapp


async def received_at() -> float:
    """time.monotonic() when the request was read: the start of a webhook's acknowledgement budget."""
    return time.monotonic()


WhatsApp = Annotated[WhatsAppSender, Depends(get_whatsapp)]
Received = Annotated[float, Depends(received_at)]


async def get_operator_channel(database: Db, whatsapp: WhatsApp) -> OperatorChannel:
    return OperatorChannel(database.engine, whatsapp)


OperatorSend = Annotated[OperatorChannel, Depends(get_operator_channel)]
