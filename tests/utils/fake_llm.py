"""A scripted model for the OpenAI Agents SDK: a subclass of its Model interface, offline.

Each call records what the model saw (instructions, input items, tools, handoffs) and
answers with the next step of a list, or with what a rule (a function of the call)
picks. Steps: Say (the final text), Call (a function tool call), HandTo (the handoff
tool offered for an agent name), Fail (raise). With a log path every call is also
appended there as a JSON line, so a test can read what a model in a child process saw.
StuckModel is a model call that never answers, for cancellation tests.

Streamed (`stream_response`, what `Runner.run_streamed` calls): a Say comes as one text
delta per word (its trailing space included), then the completed response; `pause`, an
async function of the call, is awaited after the first delta of each Say, so a test can
hold the model in mid-reply (a gate) and know the rest comes as later deltas.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from agents import Model, ModelResponse, Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HandTo:
    agent: str  # the SDK agent's name


@dataclass(frozen=True)
class Fail:
    error: Exception


Step = Say | Call | HandTo | Fail


@dataclass(frozen=True)
class Seen:
    """One model call as the model received it; input items as JSON-able dicts."""

    model: str
    instructions: str | None
    input: list[dict[str, Any]]
    tools: list[str]
    handoffs: dict[str, str]  # agent name -> handoff tool name
    tracing: str
    pid: int

    def texts(self) -> list[tuple[str, str]]:
        """(role, text) of the plain message items, in order."""
        return [(item["role"], _text(item["content"])) for item in self.input if "role" in item]

    def last_user(self) -> str:
        return next((text for role, text in reversed(self.texts()) if role == "user"), "")

    def tool_output(self, name: str) -> str | None:
        """The output of the latest call of tool `name` in the input, if any."""
        calls = {item["call_id"]: item["name"] for item in self.input if item.get("type") == "function_call"}
        outputs = [
            item["output"]
            for item in self.input
            if item.get("type") == "function_call_output" and calls.get(item["call_id"]) == name
        ]
        return str(outputs[-1]) if outputs else None

    def last_is_output_of(self, name: str) -> bool:
        if not self.input or self.input[-1].get("type") != "function_call_output":
            return False
        return any(
            item.get("type") == "function_call"
            and item["call_id"] == self.input[-1]["call_id"]
            and item["name"] == name
            for item in self.input
        )


class FakeModel(Model):
    """Answers from `script` (a list of steps, or a rule: Seen -> Step); records every call in `calls`."""

    def __init__(
        self,
        name: str,
        script: Sequence[Step] | Callable[[Seen], Step],
        *,
        log: Path | str | None = None,
        tokens: tuple[int, int] = (11, 7),
        pause: Callable[[Seen], Awaitable[None]] | None = None,
    ):
        self.name = name
        self.rule = script if callable(script) else None
        self.steps = [] if callable(script) else list(script)
        self.calls: list[Seen] = []
        self.log = Path(log) if log else None
        self.tokens = tokens
        self.pause = pause
        self._ids = itertools.count(1)

    async def get_response(
        self, system_instructions, input, model_settings, tools, output_schema, handoffs, tracing, **_: Any
    ) -> ModelResponse:
        output, _seen = self._answer(system_instructions, input, tools, handoffs, tracing)
        return ModelResponse(output=[output], usage=self._usage(), response_id=None)

    async def stream_response(
        self, system_instructions, input, model_settings, tools, output_schema, handoffs, tracing, **_: Any
    ) -> AsyncIterator[Any]:
        """The same answer as get_response, as the Responses API streams it: word deltas, then completed."""
        output, seen = self._answer(system_instructions, input, tools, handoffs, tracing)
        number = 0
        if isinstance(output, ResponseOutputMessage):
            for number, word in enumerate(re.findall(r"\s*\S+\s*", output.content[0].text) or [""]):
                yield ResponseTextDeltaEvent(
                    type="response.output_text.delta",
                    item_id=output.id,
                    output_index=0,
                    content_index=0,
                    delta=word,
                    logprobs=[],
                    sequence_number=number,
                )
                if number == 0 and self.pause is not None:
                    await self.pause(seen)
        given, taken = self.tokens
        usage = ResponseUsage(
            input_tokens=given,
            output_tokens=taken,
            total_tokens=given + taken,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        )
        response = Response(
            id=f"resp_{self.name}_{number}",
            created_at=0,
            model=self.name,
            object="response",
            output=[output],
            tool_choice="auto",
            tools=[],
            top_p=None,
            parallel_tool_calls=False,
            status="completed",
            usage=usage,
        )
        yield ResponseCompletedEvent(type="response.completed", response=response, sequence_number=number + 1)

    def _answer(self, system_instructions, input, tools, handoffs, tracing) -> tuple[Any, Seen]:
        """Record the call and pick its step: the output item it makes, and the call as seen."""
        items = [{"role": "user", "content": input}] if isinstance(input, str) else [_plain(i) for i in input]
        seen = Seen(
            self.name,
            system_instructions,
            items,
            [tool.name for tool in tools],
            {handoff.agent_name: handoff.tool_name for handoff in handoffs},
            tracing.name,
            os.getpid(),
        )
        self.calls.append(seen)
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(seen)) + "\n")
        if self.rule is not None:
            step = self.rule(seen)
        elif self.steps:
            step = self.steps.pop(0)
        else:
            raise AssertionError(f"model {self.name} was called more often than scripted")
        if isinstance(step, Fail):
            raise step.error
        return self._output(step, seen), seen

    def _output(self, step: Step, seen: Seen):
        number = next(self._ids)
        if isinstance(step, Say):
            text = ResponseOutputText(text=step.text, type="output_text", annotations=[])
            return ResponseOutputMessage(
                id=f"msg_{self.name}_{number}", type="message", role="assistant", status="completed", content=[text]
            )
        if isinstance(step, HandTo):
            if step.agent not in seen.handoffs:
                raise AssertionError(f"model {self.name} was offered no handoff to {step.agent}: {seen.handoffs}")
            step = Call(seen.handoffs[step.agent])
        call_id = f"call_{self.name}_{number}"
        return ResponseFunctionToolCall(
            id=call_id, call_id=call_id, type="function_call", name=step.tool, arguments=json.dumps(step.arguments)
        )

    def _usage(self) -> Usage:
        given, taken = self.tokens
        return Usage(requests=1, input_tokens=given, output_tokens=taken, total_tokens=given + taken)


class StuckModel(Model):
    """A model call that awaits an event nobody sets: it ends only by cancellation.

    entered: set once the call is awaiting; cancelled: set when the call was cancelled
    (a turn's timeout). Threading events, so that a test thread can wait on them.
    """

    def __init__(self) -> None:
        self.entered, self.cancelled = threading.Event(), threading.Event()

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        await self._stuck()
        raise AssertionError("unreachable: nothing sets the event")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await self._stuck()
        yield  # pragma: no cover - makes this an async generator, as the SDK expects

    async def _stuck(self) -> None:
        self.entered.set()
        try:
            await anyio.Event().wait()  # never set
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise


def read_log(path: Path | str) -> list[Seen]:
    """The calls a FakeModel with this log path recorded, in order (any process)."""
    path = Path(path)
    if not path.exists():
        return []
    return [Seen(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _plain(item: Any) -> dict[str, Any]:
    if hasattr(item, "model_dump"):
        item = item.model_dump(exclude_unset=True)
    return json.loads(json.dumps(item, default=str))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))
