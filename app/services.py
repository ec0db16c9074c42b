"""The process's services, built once by create_app, the Lambda handler or the CLI, and passed on.

Routes reach them through app/api/deps.py; the cleanup run and the CLI take them as
an argument. Nothing here connects: the engine is created on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.agents import Registry, load_registry
from app.channels.whatsapp import WhatsAppSender
from app.core.config import Settings
from app.core.engine import Database, Engine
from app.ledger import Ledger
from app.pipeline import ChannelReplier, Pipeline
from app.runtime import Runtime


class ReplyChannel(Protocol):
    """A channel that pushes replies to people (WhatsApp); web chat replies are read, not pushed."""

    def replier(self, ledger: Ledger) -> ChannelReplier:
        """The pipeline's on_reply for this channel's messages (a coroutine function)."""

    def send_due(self, engine: Engine, *, deadline: float) -> int:
        """Send replies a failed or late send left behind, until time.monotonic() reaches deadline; how many.

        Sync (the scheduled cleanup's entry points are): the channel goes through call_async.
        """

    async def aclose(self) -> None:
        """Close the running loop's HTTP client (the app's shutdown)."""

    def close(self) -> None: ...


@dataclass
class Services:
    """Settings, database, agent registry, reply channels (keyed by the "channel" a message names) and turn runtime."""

    settings: Settings
    database: Database
    registry: Registry
    whatsapp: WhatsAppSender
    runtime: Runtime

    @property
    def channels(self) -> dict[str, ReplyChannel]:
        return {"whatsapp": self.whatsapp}

    def pipeline(self, registry: Registry | None = None) -> Pipeline:
        return Pipeline(self.database.engine, registry or self.registry, self.settings, self.runtime)

    def close(self) -> None:
        """Dispose of the engine's connections and close the channels' HTTP clients."""
        self.database.dispose()
        for channel in self.channels.values():
            channel.close()


def build_services(settings: Settings, *, serverless: bool = False, database: Database | None = None) -> Services:
    """Load the registry (ConfigurationError when AGENTS is wrong) and make the rest, unconnected."""
    return Services(
        settings=settings,
        database=database or Database(settings, serverless=serverless),
        registry=load_registry(settings.agents),
        whatsapp=WhatsAppSender(settings),  # one Graph API client per process; connects on first send
        runtime=Runtime(settings),
    )
