"""Example registry on the OpenAI Agents SDK: a triage manager, scheduling and billing.

    AGENTS=app.agents.openai_example:registry OPENAI_API_KEY=... make run

The OpenAI client reads OPENAI_API_KEY and OPENAI_BASE_URL (any server that speaks the
Chat Completions API), and the SDK reads OPENAI_DEFAULT_MODEL. The two tools are
deterministic and offline, so only the models need a network. Needs the
`openai-agents` extra.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from agents import Agent, Model, RunConfig, function_tool
from agents.models.openai_provider import OpenAIProvider

from app.agents.openai_agents import registry_from_agents


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


# Chat Completions: the API that OpenAI-compatible servers (OPENAI_BASE_URL) speak.
registry = registry_from_agents(build(), run_config=RunConfig(model_provider=OpenAIProvider(use_responses=False)))
