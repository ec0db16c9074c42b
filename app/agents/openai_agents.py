"""OpenAI Agents SDK adapter: an SDK agent graph as a registry whose handoffs move the lock.

The SDK hands a conversation from agent to agent within one run, but keeps no active
agent between runs. Here the agent a run ends on takes the device's lock, so the next
message, on any instance, starts at that agent.

    registry = registry_from_agents(triage)     # AGENTS=package.module:registry

One turn (`handle`, a coroutine) is one SDK run from the lock holder (or the
manager), `Runner.run` awaited on the caller's event loop, the server's own; a web
turn streams it instead (`stream`, `Runner.run_streamed`: see below). Past
AGENT_TIMEOUT_SECONDS the pipeline cancels it, and its pending model call with it.
The SDK's OpenAI client keeps its pooled connections bound to the loop that opened
them, so a process runs its turns on one loop: the server's (uvicorn's, or Mangum's
on Lambda). A turn on a new loop after that one closed fails ("Event loop is closed").

| the run ends on                                  | lock action                           |
| ------------------------------------------------ | ------------------------------------- |
| the manager (never left it, or handed back)      | Release                               |
| an agent that called `release_conversation`      | Release                               |
| another agent than the one it started on         | Handoff(key, ttl, answered=True)      |
| the agent it started on                          | Keep (sliding expiry)                 |

The reply is the last agent's (`AgentReply.agent`): stored and reported under its key.

Replay: the model sees the session history as text messages (user and assistant
turns, oldest first) and then the new message; the SDK's native items of earlier turns
(tool calls, their outputs, handoff calls, reasoning) are not replayed. What a tool
found that matters later is in the reply text, or belongs in the session context.
Within one run the SDK passes its items along as usual, handoffs included.

Streaming (`stream`, what the pipeline uses for a web turn): the model's text deltas
as they come, each message of the run after a blank line; the SDK's tool calls and
their outputs as StreamEvents ("tool-call" {name, input: the parsed arguments},
"tool-result" {output}); a handoff as a call of its tool (`transfer_to_<agent>`, input
{}) whose result is {"handoff_to": key}. It ends with the AgentReply `handle` would
give (lock action, tools used, usage), except that its reply is every message the run
wrote, as streamed, where `handle` keeps the last one; a structured output's reply is
its JSON, as with `handle`. Cancelled (a stop, the timeout), the run is cancelled too.

Needs the `openai-agents` extra (`pip install -e '.[openai-agents]'`); the rest of the
app imports without it. Tracing to OpenAI is off unless OPENAI_AGENTS_TRACING is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

try:
    from agents import Agent as SdkAgent
    from agents import FunctionTool, RunConfig, RunContextWrapper, Runner, function_tool
    from agents import Handoff as SdkHandoff
    from agents.items import (
        HandoffCallItem,
        HandoffOutputItem,
        ItemHelpers,
        MessageOutputItem,
        ToolCallItem,
        ToolCallOutputItem,
        TResponseInputItem,
    )
    from agents.result import RunResultBase
    from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
    from openai.types.responses import EasyInputMessageParam, ResponseTextDeltaEvent
except ImportError as err:  # pragma: no cover - exercised in a subprocess without the SDK
    raise ImportError(
        "app.agents.openai_agents needs the OpenAI Agents SDK: pip install -e '.[openai-agents]'"
    ) from err

from app import telemetry, validation
from app.agents import (
    MANAGER,
    AgentInput,
    AgentReply,
    Handoff,
    Keep,
    LockAction,
    Registry,
    Release,
    StreamEvent,
    StreamItem,
)
from app.core.config import Settings
from app.errors import AgentFailed, ConfigurationError, InvalidInput

logger = logging.getLogger(__name__)

RELEASE_TOOL = "release_conversation"
RELEASED = "Released: the person's next message goes to the main assistant."


async def _release(context: RunContextWrapper[Any]) -> str:
    return RELEASED


release_conversation: FunctionTool = function_tool(
    _release,
    name_override=RELEASE_TOOL,
    description_override=(
        "End your part of this conversation once the person's request is done or is not yours "
        "to handle: their next message then goes to the main assistant. Still answer them."
    ),
)
"""The tool every agent but the manager gets; a run in which the last agent called it releases the lock."""


def agent_key(name: str) -> str:
    """An agent name as a registry key: lowercased, characters outside [a-z0-9_-] as "_"."""
    return re.sub(r"[^a-z0-9_-]", "_", name.lower())


class SdkEntry:
    """One registry entry: a run of the SDK graph that starts at `agent`."""

    def __init__(self, graph: _Graph, key: str, agent: SdkAgent):
        self.graph, self.key, self.agent = graph, key, agent

    async def handle(self, message: AgentInput) -> AgentReply:
        """Run the graph from this agent on the history and the message; the last agent gets the lock.

        Raises AgentFailed (naming the error type only, never its text, which may quote
        the conversation) on a model error, MaxTurnsExceeded or a guardrail tripwire.
        Cancellation (the turn's timeout) is not a failure of the run: it propagates.
        """
        graph = self.graph
        try:
            # An OpenTelemetry span under the turn's (the SDK's own spans go to its tracing processors only).
            with telemetry.sdk_run(self.agent.name) as traced:
                result = await Runner.run(
                    self.agent,
                    input_items(message),
                    context=message,
                    max_turns=graph.max_turns,
                    run_config=graph.run_config,
                )
                traced(result)
        except Exception as err:  # noqa: BLE001 - every failure takes the pipeline's failure path
            # The type only: an SDK or provider error's text may quote the conversation.
            logger.warning("SDK run from agent %s failed: %s", self.key, type(err).__name__)
            raise AgentFailed(f"{type(err).__name__} in the run from agent {self.key}") from None
        return self._reply(result, _text(result.final_output))

    async def stream(self, message: AgentInput) -> AsyncIterator[StreamItem]:
        """The run of `handle`, streamed (Runner.run_streamed): deltas and StreamEvents, then the AgentReply.

        Raises AgentFailed as `handle` does; cancelled, it cancels the run (and its model call).
        """
        graph = self.graph
        result = Runner.run_streamed(
            self.agent,
            input_items(message),
            context=message,
            max_turns=graph.max_turns,
            run_config=graph.run_config,
        )
        streamed = ""
        item_id: str | None = None
        # The run's OpenTelemetry span, as in handle; the generator is consumed by the turn's own task.
        with telemetry.sdk_run(self.agent.name) as traced:
            try:
                async for event in result.stream_events():
                    if isinstance(event, RawResponsesStreamEvent):
                        # The union's member whose type is "response.output_text.delta": the text deltas.
                        data = event.data
                        if not isinstance(data, ResponseTextDeltaEvent) or not data.delta:
                            continue
                        if item_id is not None and data.item_id != item_id and streamed:
                            streamed += "\n\n"  # another message of the run: as the reply joins them
                            yield "\n\n"
                        item_id = data.item_id
                        streamed += data.delta
                        yield data.delta
                    elif isinstance(event, RunItemStreamEvent):
                        part = self._event(event)
                        if part is not None:
                            yield part
            except Exception as err:  # noqa: BLE001 - as in handle: the pipeline's failure path
                logger.warning("SDK run from agent %s failed: %s", self.key, type(err).__name__)
                raise AgentFailed(f"{type(err).__name__} in the run from agent {self.key}") from None
            finally:
                if not result.is_complete:  # cancelled (a stop, the timeout) or failed: end the run's task
                    result.cancel()
            traced(result)
        texts = [
            ItemHelpers.text_message_output(item) for item in result.new_items if isinstance(item, MessageOutputItem)
        ]
        reply = "\n\n".join(text for text in texts if text)
        yield self._reply(result, reply if isinstance(result.final_output, str) else _text(result.final_output))

    def _event(self, event: RunItemStreamEvent) -> StreamEvent | None:
        """A run item as a StreamEvent: tool calls and outputs, handoffs as calls of their tool."""
        item = event.item
        raw = item.raw_item
        call_id = str(_field(raw, "call_id") or _field(raw, "id") or "")
        if isinstance(item, ToolCallItem | HandoffCallItem):
            name = item.tool_name if isinstance(item, ToolCallItem) else item.raw_item.name
            arguments = _field(raw, "arguments")
            return StreamEvent(
                "tool-call", call_id, name=name or str(_field(raw, "type") or "tool"), input=_arguments(arguments)
            )
        if isinstance(item, HandoffOutputItem):
            return StreamEvent("tool-result", call_id, output={"handoff_to": self.graph.key_of(item.target_agent)})
        if isinstance(item, ToolCallOutputItem):
            return StreamEvent("tool-result", call_id, output=_jsonable(item.output))
        return None

    def _reply(self, result: RunResultBase, text: str) -> AgentReply:
        """The AgentReply of a finished run: the last agent takes the lock (see the module's table)."""
        graph = self.graph
        last = graph.key_of(result.last_agent)
        calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
        released = any(item.agent is result.last_agent and item.tool_name == RELEASE_TOOL for item in calls)
        lock: LockAction
        if last == MANAGER or released:
            lock = Release()
        elif last != self.key:
            lock = Handoff(last, graph.ttl, answered=True)
        else:
            lock = Keep()
        usage = result.context_wrapper.usage
        return AgentReply(
            text,
            agent=last,  # the run's last agent wrote the reply, whichever agent the run started on
            lock=lock,
            tools_used=[item.tool_name or str(getattr(item.raw_item, "type", "tool")) for item in calls],
            metadata={
                "usage": {
                    "requests": usage.requests,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "total_tokens": usage.total_tokens,
                }
            },
        )


def _field(raw: Any, name: str) -> Any:
    """A field of a raw SDK item, a pydantic model or a dict."""
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)


def _arguments(arguments: Any) -> Any:
    """A tool call's arguments (a JSON string) parsed; as given when they are not JSON."""
    if not isinstance(arguments, str):
        return _jsonable(arguments) if arguments is not None else {}
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments


def _jsonable(value: Any) -> Any:
    """A tool's output as JSON-ready data: as it is when it serialises, else its text."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


@dataclasses.dataclass(frozen=True)
class _Graph:
    """What every entry of one registry shares."""

    by_id: dict[int, str]  # id(agent) -> key; the agents themselves are kept by the entries
    by_name: dict[str, str]
    ttl: int | None
    max_turns: int
    run_config: RunConfig

    def key_of(self, agent: SdkAgent) -> str:
        key = self.by_id.get(id(agent)) or self.by_name.get(agent.name)
        if key is None:  # a handoff that builds its agent at run time: not in the registry
            raise AgentFailed("the run ended on an agent outside the registry")
        return key


def registry_from_agents(
    manager: SdkAgent,
    *,
    keys: Mapping[str, str] | None = None,
    ttl: int | None = None,
    max_turns: int = 10,
    tracing: bool | None = None,
    run_config: RunConfig | None = None,
) -> Registry:
    """A registry of every agent reachable from `manager` through handoffs; `manager` is "manager".

    keys maps an agent's name to its key (default: `agent_key(name)`); ttl (seconds,
    None for DEFAULT_SESSION_TTL) goes with each handoff; max_turns bounds one run
    (the SDK's MaxTurnsExceeded). tracing None reads OPENAI_AGENTS_TRACING (default
    off); run_config (model provider, settings) is passed to every run, with tracing
    set by this switch. Every agent but the manager gets the `release_conversation`
    tool (its `tools` list is extended in place). Tools receive the AgentInput as the
    run context (`RunContextWrapper.context`).

    Raises ConfigurationError when two agents get the same key, a key is not a valid
    agent key, `keys` names an agent the graph lacks, a handoff's agent cannot be
    resolved, or an agent already has another tool named release_conversation.
    """
    if not isinstance(manager, SdkAgent):
        raise ConfigurationError(f"registry_from_agents needs an agents.Agent, not {type(manager).__name__}")
    keys = dict(keys or {})
    found = _reachable(manager)
    names = {agent.name for agent in found}
    unknown = sorted(set(keys) - names)
    if unknown:
        raise ConfigurationError(f"keys names agents the graph does not reach: {unknown}")
    entries: dict[str, SdkAgent] = {}
    for agent in found:
        key = MANAGER if agent is manager else keys.get(agent.name, agent_key(agent.name))
        if agent is manager and keys.get(agent.name, MANAGER) != MANAGER:
            raise ConfigurationError(f"the manager {agent.name!r} is always the entry {MANAGER!r}")
        try:
            validation.agent_key(key)
        except InvalidInput as err:
            raise ConfigurationError(f"agent {agent.name!r} gets key {key!r}: {err}; map it with keys=") from err
        if key in entries:
            raise ConfigurationError(
                f"agents {entries[key].name!r} and {agent.name!r} both get key {key!r}; set one apart with keys="
            )
        entries[key] = agent
    for key, agent in entries.items():
        if key != MANAGER:
            _add_release_tool(agent)
    try:
        validation.ttl(ttl)
    except InvalidInput as err:
        raise ConfigurationError(str(err)) from err
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ConfigurationError("max_turns must be a whole number from 1")
    if tracing is None:
        tracing = Settings().openai_agents_tracing
    graph = _Graph(
        by_id={id(agent): key for key, agent in entries.items()},
        by_name={agent.name: key for key, agent in entries.items()},
        ttl=ttl,
        max_turns=max_turns,
        run_config=dataclasses.replace(run_config or RunConfig(), tracing_disabled=not tracing),
    )
    return {key: SdkEntry(graph, key, agent) for key, agent in entries.items()}


def input_items(message: AgentInput) -> list[TResponseInputItem]:
    """The SDK input of a turn: the history as text messages, oldest first, then the new message.

    Each item is a {"role", "content"} dict (EasyInputMessageParam), role "user" or "assistant".
    """
    items: list[TResponseInputItem] = [
        EasyInputMessageParam(role=item.role, content=item.content) for item in message.history
    ]
    items.append(EasyInputMessageParam(role="user", content=message.text))
    return items


def _reachable(manager: SdkAgent) -> list[SdkAgent]:
    """Every agent reachable from manager through handoffs, manager first, each once (by identity)."""
    found: list[SdkAgent] = []
    todo = [manager]
    while todo:
        agent = todo.pop(0)
        if any(agent is seen for seen in found):
            continue
        found.append(agent)
        for target in agent.handoffs:
            if isinstance(target, SdkHandoff):
                ref = getattr(target, "_agent_ref", None)  # set by agents.handoff(agent)
                resolved = ref() if ref is not None else None
                if not isinstance(resolved, SdkAgent):
                    raise ConfigurationError(
                        f"the handoff {target.tool_name!r} of {agent.name!r} does not name its agent; "
                        "build it with agents.handoff(agent)"
                    )
                target = resolved
            todo.append(target)
    return found


def _add_release_tool(agent: SdkAgent) -> None:
    same = [tool for tool in agent.tools if getattr(tool, "name", None) == RELEASE_TOOL]
    if any(tool is not release_conversation for tool in same):
        raise ConfigurationError(f"agent {agent.name!r} already has a tool named {RELEASE_TOOL!r}")
    if not same:
        agent.tools = [*agent.tools, release_conversation]


def _text(output: Any) -> str:
    """A run's final output as reply text; structured outputs as JSON."""
    if isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return output.model_dump_json()
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = dataclasses.asdict(output)
    return json.dumps(output, default=str)
