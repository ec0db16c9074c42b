"""The OpenAI Agents SDK adapter on scripted models: keys, lock actions, replay, failures, the loop, tracing."""

from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime

import anyio
import anyio.to_thread
import httpx
import pytest
from agents import Agent, RunConfig, RunContextWrapper, TracingProcessor, function_tool, handoff, set_trace_processors
from agents.models.openai_provider import OpenAIProvider
from agents.tracing.processors import default_processor

from app.agents import AgentInput, Handoff, HistoryItem, Keep, Release, load_registry
from app.agents.openai_agents import RELEASE_TOOL, agent_key, registry_from_agents, release_conversation
from app.agents.openai_example import build, model_provider
from app.agents.runner import FAILURE_REPLY
from app.errors import AgentFailed, ConfigurationError
from tests.conftest import make_settings
from tests.utils import aio, openai_registry
from tests.utils.apps import app_client, use_registry
from tests.utils.fake_llm import Call, Fail, FakeModel, HandTo, Say, StuckModel
from tests.utils.no_network import loopback_only
from tests.utils.openai_server import chat_completions
from tests.utils.server import ROOT, app_env, serving

SECRET_TEXT = "card 4111-1111 for jane@example.com"
NOW = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def example_env(database_url: str, **openai: str) -> dict[str, str]:
    """The environment of `make run` with the example registry, no OpenAI setting but those given."""
    env = app_env(database_url, agents="app.agents.openai_example:registry")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_DEFAULT_MODEL"):
        env.pop(name, None)
    return env | openai


def message(text: str, lock: str | None = None, history=()) -> AgentInput:
    return AgentInput(text, "default", "device-1", {}, lock, history=tuple(history))


def graph(triage: list, billing: list, scheduling: list | None = None):
    """Triage hands off to Billing and Scheduling; both can hand back to Triage."""
    models = {
        "Triage": FakeModel("triage", triage),
        "Billing": FakeModel("billing", billing),
        "Scheduling": FakeModel("scheduling", scheduling or []),
    }
    bill = Agent(name="Billing", model=models["Billing"])
    sched = Agent(name="Scheduling", model=models["Scheduling"])
    manager = Agent(name="Triage", model=models["Triage"], handoffs=[bill, sched])
    bill.handoffs, sched.handoffs = [manager], [manager, bill]
    return manager, models


class TestRegistry:
    def test_every_reachable_agent_is_an_entry_keyed_by_its_name(self):
        deep = Agent(name="Tech-Support 2")
        middle = Agent(name="Billing Team", handoffs=[deep])
        manager = Agent(name="Front Desk", handoffs=[middle, handoff(Agent(name="Sales.EU"))])
        registry = registry_from_agents(manager, tracing=False)
        assert sorted(registry) == ["billing_team", "manager", "sales_eu", "tech-support_2"]
        assert registry["manager"].agent is manager and registry["tech-support_2"].agent is deep

    def test_keys_override_the_name(self):
        billing = Agent(name="Billing Team")
        registry = registry_from_agents(Agent(name="Triage", handoffs=[billing]), keys={"Billing Team": "billing"})
        assert sorted(registry) == ["billing", "manager"]

    @pytest.mark.parametrize(
        ("names", "keys"),
        [
            (["Billing", "Billing"], None),  # two agents, one name
            (["Billing!", "billing?"], None),  # both "billing_"
            (["Billing", "Payments"], {"Payments": "billing"}),
            (["Billing", "Payments"], {"Payments": "manager"}),
        ],
    )
    def test_two_agents_with_one_key_are_refused(self, names, keys):
        manager = Agent(name="Triage", handoffs=[Agent(name=name) for name in names])
        with pytest.raises(ConfigurationError, match="both get key"):
            registry_from_agents(manager, keys=keys)

    @pytest.mark.parametrize(
        ("name", "keys", "error"),
        [
            ("42 Support", None, "gets key '42_support'"),
            ("Billing", {"Billing": "Bad Key"}, "gets key 'Bad Key'"),
            ("Billing", {"Nobody": "nobody"}, "does not reach"),
            ("Billing", {"Triage": "front"}, "always the entry 'manager'"),
        ],
    )
    def test_bad_keys_are_refused(self, name, keys, error):
        with pytest.raises(ConfigurationError, match=error):
            registry_from_agents(Agent(name="Triage", handoffs=[Agent(name=name)]), keys=keys)

    def test_specialists_get_the_release_tool_once_and_the_manager_never(self):
        manager, _ = graph([], [])
        registry_from_agents(manager)
        registry_from_agents(manager)  # building twice adds nothing
        specialists = [target for target in manager.handoffs]
        assert [[tool.name for tool in agent.tools] for agent in specialists] == [[RELEASE_TOOL], [RELEASE_TOOL]]
        assert manager.tools == []
        assert specialists[0].tools[0] is release_conversation

    def test_another_tool_named_release_conversation_is_refused(self):
        @function_tool(name_override=RELEASE_TOOL)
        def mine() -> str:
            """Not ours."""
            return "no"

        with pytest.raises(ConfigurationError, match="already has a tool"):
            registry_from_agents(Agent(name="Triage", handoffs=[Agent(name="Billing", tools=[mine])]))

    @pytest.mark.parametrize(("ttl", "max_turns"), [(0, 10), (10**9, 10), (None, 0), (None, True)])
    def test_bad_ttl_or_max_turns_is_refused(self, ttl, max_turns):
        with pytest.raises(ConfigurationError):
            registry_from_agents(Agent(name="Triage"), ttl=ttl, max_turns=max_turns)

    def test_agent_key_maps_names(self):
        assert agent_key("Billing Team") == "billing_team"
        assert agent_key("Überweisung") == "_berweisung"


class TestTurn:
    def test_a_handoff_is_answered_by_the_receiving_agent_and_moves_the_lock(self):
        manager, models = graph([HandTo("Billing")], [Say("What is the invoice number?")])
        registry = registry_from_agents(manager, ttl=120, tracing=False)
        reply = aio.run(registry["manager"].handle, message("I'd like to pay my bill"))
        assert reply.reply == "What is the invoice number?"
        assert reply.lock == Handoff("billing", 120, answered=True)
        assert [len(models[name].calls) for name in ("Triage", "Billing")] == [1, 1]
        assert models["Triage"].calls[0].handoffs == {
            "Billing": "transfer_to_billing",
            "Scheduling": "transfer_to_scheduling",
        }
        assert RELEASE_TOOL in models["Billing"].calls[0].tools

    def test_history_is_replayed_as_text_messages_then_the_new_message(self):
        manager, models = graph([], [Say("Invoice 4417 has $132.00 due.")])
        registry = registry_from_agents(manager)
        history = [
            HistoryItem("user", "I'd like to pay my bill", None, NOW),
            HistoryItem("assistant", "What is the invoice number?", "billing", NOW),
        ]
        reply = aio.run(registry["billing"].handle, message("4417", "billing", history))
        assert reply.lock == Keep()
        [call] = models["Billing"].calls
        assert call.input == [
            {"role": "user", "content": "I'd like to pay my bill"},
            {"role": "assistant", "content": "What is the invoice number?"},
            {"role": "user", "content": "4417"},
        ]
        assert models["Triage"].calls == []

    def test_tool_calls_of_a_turn_are_not_replayed_on_the_next(self):
        @function_tool
        def invoice_status(invoice_number: str) -> str:
            """Look up an invoice."""
            return f"Invoice {invoice_number}: $132.00 due"

        model = FakeModel(
            "billing", [Call("invoice_status", {"invoice_number": "4417"}), Say("$132.00 is due."), Say("Yes.")]
        )
        billing = Agent(name="Billing", model=model, tools=[invoice_status])
        registry = registry_from_agents(Agent(name="Triage", handoffs=[billing]))
        first = aio.run(registry["billing"].handle, message("4417", "billing"))
        assert first.tools_used == ["invoice_status"]
        assert [item.get("type") for item in model.calls[1].input] == [None, "function_call", "function_call_output"]
        history = [HistoryItem("user", "4417", None, NOW), HistoryItem("assistant", first.reply, "billing", NOW)]
        aio.run(registry["billing"].handle, message("is that all?", "billing", history))
        assert model.calls[2].input == [
            {"role": "user", "content": "4417"},
            {"role": "assistant", "content": "$132.00 is due."},
            {"role": "user", "content": "is that all?"},
        ]

    def test_release_conversation_releases_the_lock(self):
        manager, models = graph([], [Call(RELEASE_TOOL), Say("Glad I could help.")])
        reply = aio.run(registry_from_agents(manager)["billing"].handle, message("thanks, that's all", "billing"))
        assert (reply.reply, reply.lock, reply.tools_used) == ("Glad I could help.", Release(), [RELEASE_TOOL])
        assert models["Billing"].calls[1].tool_output(RELEASE_TOOL).startswith("Released")

    def test_handing_back_to_the_manager_releases_and_the_manager_answers(self):
        manager, models = graph([Say("Hi! What can I do for you?")], [HandTo("Triage")])
        reply = aio.run(registry_from_agents(manager)["billing"].handle, message("something else", "billing"))
        assert (reply.reply, reply.lock) == ("Hi! What can I do for you?", Release())
        assert reply.agent == "manager"  # the manager's words, though the run started on billing

    def test_the_reply_names_the_agent_that_wrote_it(self):
        manager, _ = graph([HandTo("Billing")], [Call(RELEASE_TOOL), Say("Done, anything else?")])
        registry = registry_from_agents(manager)
        handed = aio.run(registry["manager"].handle, message("my bill"))
        assert (handed.agent, handed.lock) == ("billing", Release())  # billing answered, then released
        kept = aio.run(
            registry_from_agents(graph([], [Say("Still me.")])[0])["billing"].handle, message("hi", "billing")
        )
        assert (kept.agent, kept.lock) == ("billing", Keep())

    def test_a_manager_turn_that_stays_with_the_manager_releases(self):
        manager, _ = graph([Say("Hi!")], [])
        assert aio.run(registry_from_agents(manager)["manager"].handle, message("hello")).lock == Release()

    def test_specialist_to_specialist_handoff_moves_the_lock(self):
        manager, models = graph([], [Say("What is the invoice number?")], [HandTo("Billing")])
        reply = aio.run(registry_from_agents(manager, ttl=60)["scheduling"].handle, message("my bill", "scheduling"))
        assert reply.lock == Handoff("billing", 60, answered=True)

    def test_a_release_before_a_handoff_does_not_release_the_new_holder(self):
        manager, _ = graph([], [Say("What is the invoice number?")], [Call(RELEASE_TOOL), HandTo("Billing")])
        reply = aio.run(registry_from_agents(manager)["scheduling"].handle, message("my bill", "scheduling"))
        assert reply.lock == Handoff("billing", None, answered=True)

    def test_usage_of_every_model_call_is_in_the_metadata(self):
        manager, _ = graph([HandTo("Billing")], [Say("What is the invoice number?")])
        reply = aio.run(registry_from_agents(manager)["manager"].handle, message("my bill"))
        assert reply.metadata == {"usage": {"requests": 2, "input_tokens": 22, "output_tokens": 14, "total_tokens": 36}}

    def test_tools_see_the_agent_input_as_run_context(self):
        @function_tool
        def whoami(ctx: RunContextWrapper[AgentInput]) -> str:
            """Who is talking."""
            return f"{ctx.context.tenant_id}/{ctx.context.device_id}"

        model = FakeModel("triage", [Call("whoami"), Say("ok")])
        registry = registry_from_agents(Agent(name="Triage", model=model, tools=[whoami]))
        aio.run(registry["manager"].handle, message("hi"))
        assert model.calls[1].tool_output("whoami") == "default/device-1"


class TestFailures:
    def test_a_model_error_raises_agent_failed_naming_only_its_type(self, caplog):
        manager, _ = graph([Fail(ConnectionError(SECRET_TEXT))], [])
        caplog.set_level(logging.DEBUG)
        with pytest.raises(AgentFailed) as raised:
            aio.run(registry_from_agents(manager)["manager"].handle, message(SECRET_TEXT))
        assert str(raised.value) == "ConnectionError in the run from agent manager"
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
        assert "SDK run from agent manager failed: ConnectionError" in caplog.text
        assert SECRET_TEXT not in caplog.text

    def test_max_turns_is_enforced(self):
        @function_tool
        def lookup() -> str:
            """Look something up."""
            return "nothing"

        model = FakeModel("triage", lambda seen: Call("lookup"))
        registry = registry_from_agents(Agent(name="Triage", model=model, tools=[lookup]), max_turns=3)
        with pytest.raises(AgentFailed, match="^MaxTurnsExceeded"):
            aio.run(registry["manager"].handle, message("loop"))
        assert len(model.calls) == 3


class TestEventLoop:
    def test_a_turn_is_a_coroutine_run_on_the_callers_loop_with_no_thread_of_its_own(self):
        loops = []

        @function_tool
        async def where() -> str:
            """Where the run is."""
            loops.append(asyncio.get_running_loop())
            return "here"

        model = FakeModel("triage", [Call("where"), Say("done")])
        entry = registry_from_agents(Agent(name="Triage", model=model, tools=[where]))["manager"]
        assert inspect.iscoroutinefunction(entry.handle)
        aio.portal()  # the tests' own loop thread, started before the count
        threads = set(threading.enumerate())

        async def caller() -> str:
            loops.append(asyncio.get_running_loop())
            return (await entry.handle(message("hi"))).reply

        assert aio.run(caller) == "done"
        assert len(loops) == 2 and loops[0] is loops[1]
        assert set(threading.enumerate()) <= threads  # no loop thread, no worker thread started

    def test_cancelling_a_turn_cancels_its_pending_model_call(self):
        model = StuckModel()
        entry = registry_from_agents(Agent(name="Triage", model=model))["manager"]
        assert inspect.iscoroutinefunction(entry.handle)  # a sync handle would block the loop below for good
        finished = []

        async def cancelled_turn() -> None:
            async with anyio.create_task_group() as group:

                async def turn() -> None:
                    finished.append(await entry.handle(message("hi")))

                group.start_soon(turn)
                await anyio.to_thread.run_sync(model.entered.wait, 30)
                group.cancel_scope.cancel()  # what the pipeline does at AGENT_TIMEOUT_SECONDS

        aio.run(cancelled_turn)
        assert model.entered.is_set() and model.cancelled.is_set()
        assert finished == []  # neither a reply nor an AgentFailed: the cancellation went through


class Recorder(TracingProcessor):
    """Keeps the traces the SDK starts, in place of its exporter to OpenAI."""

    def __init__(self) -> None:
        self.traces: list[str] = []

    def on_trace_start(self, trace) -> None:
        self.traces.append(trace.name)

    def on_trace_end(self, trace) -> None: ...
    def on_span_start(self, span) -> None: ...
    def on_span_end(self, span) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self) -> None: ...


@pytest.fixture
def traces():
    """Traces started during the test; nothing is exported (the default exporter comes back afterwards)."""
    recorder = Recorder()
    set_trace_processors([recorder])
    try:
        yield recorder.traces
    finally:
        set_trace_processors([default_processor()])


class TestTracing:
    @pytest.mark.parametrize(
        ("tracing", "env", "on"),
        [(None, None, False), (True, None, True), (None, "true", True), (False, "true", False)],
    )
    def test_tracing_is_off_unless_turned_on(self, monkeypatch, traces, tracing, env, on):
        if env is None:
            monkeypatch.delenv("OPENAI_AGENTS_TRACING", raising=False)
        else:
            monkeypatch.setenv("OPENAI_AGENTS_TRACING", env)
        manager, models = graph([Say("hi")], [])
        aio.run(registry_from_agents(manager, tracing=tracing)["manager"].handle, message("hi"))
        assert models["Triage"].calls[0].tracing == ("ENABLED" if on else "DISABLED")
        assert traces == (["Agent workflow"] if on else [])


def test_the_app_imports_without_the_sdk():
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agents' or name.startswith('agents.'): raise ImportError('no SDK here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import app.main, app.agents.demo\n"
        "from app.main import create_app\n"
        "try:\n"
        "    import app.agents.openai_agents\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install -e '.[openai-agents]'" in done.stdout


class TestOpenAICompatibleServer:
    def test_the_sdk_client_serves_turns_on_the_servers_loop_through_openai_base_url(
        self, monkeypatch, database_url, engine
    ):
        """Turns run on the app's loop, one after another; the SDK's pooled client serves them all."""
        with chat_completions("Hello from a local server") as api, loopback_only() as attempts:
            monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-offline-test-key")
            monkeypatch.delenv("OPENAI_DEFAULT_MODEL", raising=False)
            provider = OpenAIProvider(use_responses=False)  # what app.agents.openai_example uses
            registry = registry_from_agents(
                Agent(name="Triage", model="local-model"), run_config=RunConfig(model_provider=provider)
            )
            with app_client(make_settings(database_url)) as client:
                use_registry(client, registry)
                bodies = []
                for number in range(3):
                    response = client.post(
                        "/api/chat", json={"message": f"hi {number}"}, headers={"X-Device-ID": str(uuid.uuid4())}
                    )
                    assert response.status_code == 200, response.text
                    bodies.append(response.json())
        assert [(body["reply"], body["agent"]) for body in bodies] == [("Hello from a local server", "manager")] * 3
        with engine.begin() as conn:
            usage = (
                conn.exec_driver_sql(
                    "SELECT metadata -> 'usage' FROM conversation_messages WHERE role = 'assistant' ORDER BY id"
                )
                .scalars()
                .all()
            )
        assert usage == [{"requests": 1, "input_tokens": 5, "output_tokens": 2, "total_tokens": 7}] * 3
        assert [(r["path"], r["model"], r["messages"][-1]) for r in api.requests] == [
            ("/v1/chat/completions", "local-model", {"role": "user", "content": f"hi {n}"}) for n in range(3)
        ]
        assert attempts == []


class TestExample:
    def test_the_example_registry_loads_without_a_key(self, monkeypatch):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        registry = load_registry("app.agents.openai_example:registry")
        assert sorted(registry) == ["billing", "manager", "scheduling"]
        assert [tool.name for tool in registry["billing"].agent.tools] == ["invoice_status", RELEASE_TOOL]

    def test_a_specialist_hands_back_and_triage_hands_on_in_one_run(self):
        models = openai_registry.models()
        registry = registry_from_agents(build(models))
        reply = aio.run(registry["scheduling"].handle, message("actually, a question about my bill", "scheduling"))
        assert (reply.reply, reply.lock) == (openai_registry.ASK_INVOICE, Handoff("billing", None, answered=True))
        assert [len(models[name].calls) for name in ("Scheduling", "Triage", "Billing")] == [1, 1, 1]

    def test_without_a_key_or_base_url_one_line_at_start_names_them_and_each_turn_fails_saying_so(self, caplog):
        with caplog.at_level(logging.WARNING, logger="app.agents.openai_example"):
            provider = model_provider({})
        [warning] = [record.getMessage() for record in caplog.records]
        assert "OPENAI_API_KEY" in warning and "OPENAI_BASE_URL" in warning and "\n" not in warning
        caplog.clear()
        registry = registry_from_agents(build(), run_config=RunConfig(model_provider=provider), tracing=False)
        with caplog.at_level(logging.WARNING), pytest.raises(AgentFailed):
            aio.run(registry["manager"].handle, message("hello"))
        lines = [record.getMessage() for record in caplog.records]
        assert warning in lines and not any("OpenAIError" in line for line in lines)

    def test_make_run_says_at_start_that_the_key_is_missing_and_each_turn_says_it_again(self, database_url):
        env = example_env(database_url)
        with serving(env) as server:
            started = server.log()
            response = httpx.post(
                f"{server.url}/api/chat", json={"message": "hello"}, headers={"X-Device-ID": str(uuid.uuid4())}
            )
            assert response.status_code == 200 and response.json()["reply"] == FAILURE_REPLY
            log = server.log()
        [warning] = [line for line in started.splitlines() if "OPENAI_API_KEY" in line]
        assert " WARNING " in warning and "OPENAI_BASE_URL" in warning
        turn = log[len(started) :]
        assert warning.split(": ", 1)[1] in turn and "OpenAIError" not in turn

    def test_a_local_server_at_openai_base_url_needs_no_key(self, database_url):
        """The offline way the module's docstring names: an OpenAI-compatible server on this machine."""
        with chat_completions("Hello from a local server") as api:
            env = example_env(database_url, OPENAI_BASE_URL=api.base_url, OPENAI_DEFAULT_MODEL="local-model")
            with serving(env) as server:
                response = httpx.post(
                    f"{server.url}/api/chat", json={"message": "hello"}, headers={"X-Device-ID": str(uuid.uuid4())}
                )
                log = server.log()
        assert response.status_code == 200 and response.json()["reply"] == "Hello from a local server"
        assert "OPENAI_API_KEY" not in log
        assert [(request["path"], request["model"]) for request in api.requests] == [
            ("/v1/chat/completions", "local-model")
        ]

    def test_the_tools_are_deterministic(self):
        models = openai_registry.models()
        registry = registry_from_agents(build(models))
        first = aio.run(registry["scheduling"].handle, message("tomorrow at 10am", "scheduling"))
        again = aio.run(registry["scheduling"].handle, message("tomorrow at 10am", "scheduling"))
        assert first.reply == again.reply == "Booked tomorrow at 10:00, confirmation S-7254."
        assert (first.tools_used, first.lock) == (["book_slot"], Keep())
