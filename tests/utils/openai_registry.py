"""The example SDK graph (app.agents.openai_example) on scripted models: runs offline.

    AGENTS=tests.utils.openai_registry:registry make run      # from the repository root

The models follow rules on the conversation, so any process gives the same answers:
triage hands "bill"/"invoice"/"pay" to Billing and "book"/"appointment" to Scheduling;
billing asks for the invoice number, looks it up with invoice_status, then calls
release_conversation; scheduling books "<day> <time>" with book_slot, releases on
"thanks", and hands a billing question back to Triage. Environment, for tests:
FAKE_LLM_LOG (a file: every model call as a JSON line) and FAKE_LLM_BLOCKED_LOG
(refuse non-loopback connections in this process, and record them there).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from app.agents.demo import parse_day, parse_time
from app.agents.openai_agents import RELEASE_TOOL, registry_from_agents
from app.agents.openai_example import build
from tests.utils.fake_llm import Call, FakeModel, HandTo, Say, Seen

GREETING = "Hi! I can book an appointment or help with a bill. What would you like to do?"
ASK_INVOICE = "What is the invoice number?"
ASK_SLOT = "Which day and time would suit you?"


def triage(seen: Seen) -> Say | HandTo:
    text = seen.last_user().lower()
    if re.search(r"\b(bill|invoice|pay)", text):
        return HandTo("Billing")
    if re.search(r"\b(book|appointment)", text):
        return HandTo("Scheduling")
    return Say(GREETING)


def billing(seen: Seen) -> Say | Call:
    if seen.last_is_output_of(RELEASE_TOOL):
        return Say(f"{seen.tool_output('invoice_status')} Anything else, just ask.")
    if seen.last_is_output_of("invoice_status"):
        return Call(RELEASE_TOOL)
    found = re.search(r"\b(\d{3,10})\b", seen.last_user())
    if found:
        return Call("invoice_status", {"invoice_number": found.group(1)})
    return Say(ASK_INVOICE)


def scheduling(seen: Seen) -> Say | Call | HandTo:
    if seen.last_is_output_of(RELEASE_TOOL):
        return Say("You're welcome, see you then!")
    if seen.last_is_output_of("book_slot"):
        return Say(str(seen.tool_output("book_slot")))
    text = seen.last_user()
    if re.search(r"\b(bill|invoice)", text.lower()):
        return HandTo("Triage")
    if re.search(r"\b(thanks|thank you|bye)\b", text.lower()):
        return Call(RELEASE_TOOL)
    day, time = parse_day(text), parse_time(text)
    if day and time:
        return Call("book_slot", {"day": day, "time": time})
    return Say(ASK_SLOT)


def models(log: str | Path | None = None) -> dict[str, FakeModel]:
    """One scripted model per agent of the example graph, by agent name."""
    return {
        "Triage": FakeModel("triage", triage, log=log),
        "Billing": FakeModel("billing", billing, log=log),
        "Scheduling": FakeModel("scheduling", scheduling, log=log),
    }


if os.environ.get("FAKE_LLM_BLOCKED_LOG"):
    from tests.utils.no_network import install_for_process

    install_for_process(Path(os.environ["FAKE_LLM_BLOCKED_LOG"]))

registry = registry_from_agents(build(models(os.environ.get("FAKE_LLM_LOG"))))
