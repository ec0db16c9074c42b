"""Typed dependencies: routes ask for what they need, tests swap it with dependency_overrides.

They do no I/O (the engine connects on first use), so they are async: FastAPI would
otherwise send each one through the thread pool.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request

from app.admin import AdminStore
from app.admin.takeover import OperatorChannel
from app.agents import Registry
from app.api.admission import ARRIVED
from app.channels.whatsapp import WhatsAppSender
from app.chat_history import ChatHistory
from app.core.config import Settings
from app.core.engine import Database
from app.erasure import ReplayGuard
from app.pipeline import Pipeline
from app.services import Services
from app.sessions import SessionService


async def get_services(request: Request) -> Services:
    """The services create_app was built with: the only read of app.state."""
    return request.app.state.services


AppServices = Annotated[Services, Depends(get_services)]


async def get_settings(services: AppServices) -> Settings:
    return services.settings


async def get_database(services: AppServices) -> Database:
    return services.database


async def get_registry(services: AppServices) -> Registry:
    return services.registry


AppSettings = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Database, Depends(get_database)]
Agents = Annotated[Registry, Depends(get_registry)]


async def get_sessions(database: Db, settings: AppSettings) -> SessionService:
    return SessionService(
        database.engine, default_ttl=settings.default_session_ttl, context_cap=settings.context_list_cap
    )


async def get_pipeline(services: AppServices, registry: Agents) -> Pipeline:
    return Pipeline(services.database.engine, registry, services.settings, services.runtime)


async def get_chat_history(database: Db, settings: AppSettings) -> ChatHistory:
    return ChatHistory(database.engine, ReplayGuard.of(settings))


Sessions = Annotated[SessionService, Depends(get_sessions)]
Pipe = Annotated[Pipeline, Depends(get_pipeline)]
History = Annotated[ChatHistory, Depends(get_chat_history)]


async def get_whatsapp(services: AppServices) -> WhatsAppSender:
    """The process's one WhatsApp sender (Graph API client and background work)."""
    return services.whatsapp


async def received_at(request: Request) -> float:
    """time.monotonic() when the request was read: the start of a webhook's acknowledgement budget.

    Before any wait for an admission place (app/api/admission.py): that wait counts against the budget.
    """
    arrived = request.scope.get("state", {}).get(ARRIVED)
    return time.monotonic() if arrived is None else arrived


WhatsApp = Annotated[WhatsAppSender, Depends(get_whatsapp)]
Received = Annotated[float, Depends(received_at)]


async def get_operator_channel(database: Db, whatsapp: WhatsApp) -> OperatorChannel:
    return OperatorChannel(database.engine, whatsapp)


OperatorSend = Annotated[OperatorChannel, Depends(get_operator_channel)]


async def get_admin(database: Db, settings: AppSettings) -> AdminStore:
    """The session admin store on the process's engine."""
    return AdminStore(database.engine, context_cap=settings.context_list_cap, guard=ReplayGuard.of(settings))


Admin = Annotated[AdminStore, Depends(get_admin)]
