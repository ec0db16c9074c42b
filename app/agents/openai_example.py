"""Example registry on the OpenAI Agents SDK: a triage manager, scheduling and billing.

    AGENTS=app.agents.openai_example:registry OPENAI_API_KEY=... make run

The models are reached through the Chat Completions API: OpenAI's with OPENAI_API_KEY, or
any server that speaks it at OPENAI_BASE_URL; the SDK reads OPENAI_DEFAULT_MODEL. With
neither set, the registry still loads but logs one warning naming both at start, and
every turn fails (the failure reply), logging the same line. The two tools are
deterministic and offline, so only the models need a network. Needs the `openai-agents`
extra.

Offline, two ways:

    # A local OpenAI-compatible server (Ollama, llama.cpp's llama-server, vLLM, ...) whose
    # model can call tools; no key is needed, a placeholder is sent.
    OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_DEFAULT_MODEL=<a model it serves> \
        AGENTS=app.agents.openai_example:registry make run

    # This graph on scripted models (tests/utils/openai_registry.py), no model at all.
    AGENTS=tests.utils.openai_registry:registry make run
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping

from agents import Agent, Model, ModelProvider, RunConfig, function_tool
from agents.models.openai_provider import OpenAIProvider

from app.agents.openai_agents import registry_from_agents
from app.errors import ConfigurationError

logger = logging.getLogger(__name__)

MISSING_KEY = (
    "OPENAI_API_KEY and OPENAI_BASE_URL are both unset: every turn of app.agents.openai_example fails; "
    "set OPENAI_API_KEY, or OPENAI_BASE_URL to a local OpenAI-compatible server"
)
# The OpenAI client refuses to start without a key even when OPENAI_BASE_URL names a server
# that takes none (most local ones): this stands in, sent as the bearer token.
LOCAL_SERVER_KEY = "no-key-for-a-local-server"


@function_tool
def book_slot(day: str, time: str) -> str:
    """Book an appointment.

    Args:
        day: The day as the person said it: a weekday, "today", "tomorrow" or YYYY-MM-DD.
        time: The time as HH:MM, 24-hour clock.
    """
    code = zlib.crc32(f"{day.lower()} {time}".encode()) % 10_000
    return f"Booked {day} at {time}, confirmation S-{code:04d}."


@function_tool
def invoice_status(invoice_number: str) -> str:
    """Look up an invoice's amount due.

    Args:
        invoice_number: The invoice number, digits only.
    """
    digits = "".join(ch for ch in invoice_number if ch.isdigit())
    if not 3 <= len(digits) <= 10:
        return f"No invoice {invoice_number} was found."
    amount = sum(int(d) for d in digits) * 7 + 20
    return f"Invoice {digits} has ${amount}.00 due."


def build(models: Mapping[str, Model | str] | None = None) -> Agent:
    """The agent graph, its triage agent first; models maps an agent name to its model (default: the SDK's)."""
    models = models or {}
    scheduling = Agent(
        name="Scheduling",
        instructions=(
            "You book appointments. Ask for the day and the time, then call book_slot and confirm "
            "the booking with its confirmation code. For anything else, hand back to Triage."
        ),
        tools=[book_slot],
        model=models.get("Scheduling"),
    )
    billing = Agent(
        name="Billing",
        instructions=(
            "You answer questions about invoices. Ask for the invoice number, then call "
            "invoice_status and tell the amount due. For anything else, hand back to Triage."
        ),
        tools=[invoice_status],
        model=models.get("Billing"),
    )
    triage = Agent(
        name="Triage",
        instructions=(
            "You greet people and route them: appointments to Scheduling, invoices and payments "
            "to Billing. Otherwise say briefly what you can help with."
        ),
        handoffs=[scheduling, billing],
        model=models.get("Triage"),
    )
    scheduling.handoffs = [triage]
    billing.handoffs = [triage]
    return triage


class _Unconfigured(ModelProvider):
    """The provider when neither OPENAI_API_KEY nor OPENAI_BASE_URL is set: each run fails saying so."""

    def get_model(self, model_name: str | None) -> Model:
        # The adapter logs only a failure's type (an SDK error's text may quote the conversation):
        # this line is what says why the turn failed.
        logger.warning(MISSING_KEY)
        raise ConfigurationError(MISSING_KEY)


def model_provider(environ: Mapping[str, str] = os.environ) -> ModelProvider:
    """The Chat Completions provider for environ (OPENAI_API_KEY, OPENAI_BASE_URL).

    Chat Completions is the API that OpenAI-compatible servers speak. With a key: OpenAI's
    client as configured by the environment. With only a base URL: that server, with
    LOCAL_SERVER_KEY as the key. With neither: logs MISSING_KEY once (one line) and returns
    a provider whose every run logs it again and raises ConfigurationError.
    """
    if environ.get("OPENAI_API_KEY"):
        return OpenAIProvider(use_responses=False)
    if environ.get("OPENAI_BASE_URL"):
        return OpenAIProvider(api_key=LOCAL_SERVER_KEY, base_url=environ["OPENAI_BASE_URL"], use_responses=False)
    logger.warning(MISSING_KEY)
    return _Unconfigured()


registry = registry_from_agents(build(), run_config=RunConfig(model_provider=model_provider()))
