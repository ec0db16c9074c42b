"""A deterministic, offline demo registry: manager, scheduling and billing.

The agents are async (`async def handle`), as the agent contract prefers: the
pipeline awaits them on its event loop, with no worker thread. They do no I/O, so
each turn runs to its end without yielding.
"""

from __future__ import annotations

import datetime as dt
import re

from app.agents import AgentInput, AgentReply, Choice, Handoff, Keep, Release

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CANCEL = re.compile(r"\b(cancel|stop)\b")
YES = re.compile(r"^\s*(yes|y|yep|yeah|confirm|ok|okay|sure)\b")
NO = re.compile(r"^\s*(no|n|nope)\b")


def _words(text: str) -> str:
    return text.lower()


class Manager:
    """Greets and routes; holds no lock of its own."""

    async def handle(self, message: AgentInput) -> AgentReply:
        text = _words(message.text)
        if re.search(r"\b(appointment|schedul|book)", text):
            return AgentReply("Sure, let me get you to scheduling.", lock=Handoff("scheduling"))
        if re.search(r"\b(bill|invoice|payment)", text):
            return AgentReply("Sure, let me get you to billing.", lock=Handoff("billing"))
        return AgentReply(
            "Hi! I can book an appointment or help with a bill. What would you like to do?", lock=Release()
        )


def parse_day(text: str) -> str | None:
    """A weekday name, "today", "tomorrow" or an ISO date, as written."""
    text = _words(text)
    for word in ("today", "tomorrow", *WEEKDAYS):
        if re.search(rf"\b{word}\b", text):
            return word
    found = re.search(r"\b(\d{4}-\d{2}-\d{2})\b", text)
    if found:
        try:
            return dt.date.fromisoformat(found.group(1)).isoformat()
        except ValueError:
            return None
    return None


def parse_time(text: str) -> str | None:
    """ "HH:MM", "10am", "3pm", "3:30pm" as HH:MM."""
    text = _words(text)
    found = re.search(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b", text)
    if found:
        hour, minute = int(found.group(1)), int(found.group(2) or 0)
        if 1 <= hour <= 12 and minute < 60:
            hour = hour % 12 + (12 if found.group(3) == "pm" else 0)
            return f"{hour:02d}:{minute:02d}"
        return None
    found = re.search(r"\b(\d{1,2}):(\d{2})\b", text)
    if found and int(found.group(1)) < 24 and int(found.group(2)) < 60:
        return f"{int(found.group(1)):02d}:{found.group(2)}"
    return None


# Offered with the questions: a list of days (a WhatsApp list message) and Yes/No (reply buttons).
# A tap comes back with the title as its text, so the typed flow and the tapped one are the same.
DAY_CHOICES = [Choice(f"day:{day}", day.capitalize()) for day in WEEKDAYS]
CONFIRM_CHOICES = [Choice("confirm:yes", "Yes"), Choice("confirm:no", "No")]
# A button these agents never offered (a template's quick reply, payload CONFIRM_YES) has an id
# they cannot know, so it is read like typed text: by its title.
OFFERED_IDS = frozenset(choice.id for choice in [*DAY_CHOICES, *CONFIRM_CHOICES])

FLOW_RESET = {"flow": None, "step": None, "day": None, "time": None, "invoice": None}


class Scheduling:
    """Asks for a day, then a time, then confirmation; holds the lock for the whole flow."""

    async def handle(self, message: AgentInput) -> AgentReply:
        state = message.context.get("conversation_state", {})
        text = message.text
        tapped = message.choice_id if message.choice_id in OFFERED_IDS else None
        if CANCEL.search(_words(text)):
            return AgentReply("No problem, I've cancelled that booking.", lock=Release(), context=_reset())
        in_flow = state.get("flow") == "scheduling"
        day = state.get("day") if in_flow else None
        time = state.get("time") if in_flow else None
        if in_flow and state.get("step") == "confirm":
            if tapped == "confirm:yes" or (tapped is None and YES.search(_words(text))):
                booked = {"type": "appointment", "day": day, "time": time}
                return AgentReply(
                    f"You're booked for {day} at {time}. See you then!",
                    lock=Release(),
                    context={**_reset(), "recent_interactions": [booked]},
                )
            if tapped == "confirm:no" or (tapped is None and NO.search(_words(text))):
                day = time = None
            else:
                return self._ask(day, time, "confirm")
        choice = message.choice_id or ""
        picked = choice.removeprefix("day:") if choice.startswith("day:") else None
        day = day or (picked if picked in WEEKDAYS else None) or parse_day(text)
        if day and not time:
            time = parse_time(text)
        if not day:
            return self._ask(None, None, "day")
        if not time:
            return self._ask(day, None, "time")
        return self._ask(day, time, "confirm")

    def _ask(self, day: str | None, time: str | None, step: str) -> AgentReply:
        question = {
            "day": "What day would you like? (a weekday, today, tomorrow or YYYY-MM-DD)",
            "time": f"What time on {day}? (for example 10am, 3pm or 14:30)",
            "confirm": f"Book {day} at {time}, confirm? (yes/no)",
        }[step]
        state = {"flow": "scheduling", "step": step, "day": day, "time": time}
        choices = {"day": DAY_CHOICES, "confirm": CONFIRM_CHOICES}.get(step, [])
        return AgentReply(question, lock=Keep(), context={"conversation_state": state}, choices=list(choices))


class Billing:
    """Asks for an invoice number, then offers a payment link; releases the lock at the end."""

    async def handle(self, message: AgentInput) -> AgentReply:
        state = message.context.get("conversation_state", {})
        text = _words(message.text)
        if CANCEL.search(text):
            return AgentReply("Okay, billing request cancelled.", lock=Release(), context=_reset())
        if state.get("flow") == "billing" and state.get("step") == "link":
            invoice = state.get("invoice")
            if YES.search(text):
                reply = f"Here is your payment link: https://pay.example.com/invoices/{invoice}"
            elif NO.search(text):
                reply = f"Alright, invoice {invoice} stays open. Anything else?"
            else:
                return AgentReply("Would you like a payment link? (yes/no)")
            done = {"type": "billing", "invoice": invoice}
            return AgentReply(reply, lock=Release(), context={**_reset(), "recent_interactions": [done]})
        found = re.search(r"\b(?:inv-?)?(\d{3,10})\b", text)
        if not found:
            state = {"flow": "billing", "step": "invoice"}
            return AgentReply("What is your invoice number?", context={"conversation_state": state})
        invoice = found.group(1)
        amount = sum(int(d) for d in invoice) * 7 + 20
        state = {"flow": "billing", "step": "link", "invoice": invoice}
        return AgentReply(
            f"Invoice {invoice} has ${amount}.00 due. Would you like a payment link? (yes/no)",
            context={"conversation_state": state},
        )


def _reset() -> dict:
    return {"conversation_state": dict(FLOW_RESET)}


registry = {"manager": Manager(), "scheduling": Scheduling(), "billing": Billing()}
