"""Section 2: peers on the same database: LangGraph PostgresSaver, OpenAI Agents SQLAlchemySession, Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from app import SessionService
from bench.common import (
    AGENT,
    TTL,
    Bench,
    Sample,
    async_url,
    conninfo,
    device,
    device_sequence,
    paired_ratio,
    populate_devices,
    run_for,
    run_for_async,
    summarize,
    table,
)

OPS = ("get", "set")
# What each peer calls for our set / get.
CALLS = {
    "service": ("set_session_lock", "get_session_lock"),
    "langgraph": ("PostgresSaver.put", "PostgresSaver.get_tuple"),
    "openai_agents": ("SQLAlchemySession.add_items", "SQLAlchemySession.get_items"),
    "redis": ("SET key value EX ttl", "GET key"),
}
REDIS = ("127.0.0.1", 6379)

Measure = Callable[[float], Sample]


def run(b: Bench) -> dict[str, Any]:
    """Each peer's set-like and get-like call on tiny state, side by side with SessionService."""
    threads = b.pick(1000, 100)
    window, warmup, rounds = b.pick((2.0, 0.3, 5), (0.4, 0.1, 1))
    seq = device_sequence(b.pick(50_000, 5_000), threads, seed=3)
    engine = b.engine()
    populate_devices(b.setup_engine(), threads)
    service = SessionService(engine)
    impls: dict[str, dict[str, Measure]] = {
        "service": _sync_ops(
            seq, get=service.get_session_lock, put=lambda dev: service.set_session_lock(dev, AGENT, ttl=TTL)
        )
    }
    status: dict[str, str] = {"service": "ok"}
    closers: list[Callable[[], None]] = [engine.dispose]
    for name, factory in (("langgraph", _langgraph), ("openai_agents", _openai_agents), ("redis", _redis)):
        try:
            impls[name], close = factory(b, seq, threads)
            closers.append(close)
            status[name] = "ok"
        except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            status[name] = f"not measured: {type(err).__name__}: {str(err).strip()[:300]}"
            print(f"{name}: {status[name]}", flush=True)
    samples: dict[str, dict[str, list[Sample]]] = {op: {name: [] for name in impls} for op in OPS}
    try:
        for r in range(rounds):
            names = list(impls)
            names = names[r % len(names) :] + names[: r % len(names)]
            for op in OPS:
                for name in names:
                    impls[name][op](warmup)
                    samples[op][name].append(impls[name][op](window))
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception as err:  # noqa: BLE001 - cleanup trouble must not lose the numbers
                print(f"peers: cleanup failed: {err}")
    results = {op: {name: summarize(s) for name, s in by.items()} for op, by in samples.items()}
    ratios = {
        op: {
            f"service/{name}": paired_ratio(
                results[op]["service"]["ops_per_s_rounds"], results[op][name]["ops_per_s_rounds"]
            )
            for name in impls
            if name != "service"
        }
        for op in OPS
    }
    out = {
        "threads": threads,
        "window_s": window,
        "rounds": rounds,
        "calls": CALLS,
        "status": status,
        "results": results,
        "ratios": ratios,
    }
    _print(out)
    return out


def _sync_ops(seq: list[str], *, get: Callable, put: Callable) -> dict[str, Measure]:
    n = len(seq)
    return {
        "get": lambda seconds: run_for(lambda i: get(seq[i % n]), seconds),
        "set": lambda seconds: run_for(lambda i: put(seq[i % n]), seconds),
    }


def _langgraph(b: Bench, seq: list[str], threads: int) -> tuple[dict[str, Measure], Callable[[], None]]:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres import PostgresSaver

    # from_conn_string opens the connection the docs ask for: autocommit, dict_row.
    manager = PostgresSaver.from_conn_string(conninfo(b.url))
    saver = manager.__enter__()
    saver.setup()

    def put(dev: str) -> Any:
        checkpoint = empty_checkpoint()  # a new id per write, as a graph step makes
        checkpoint["channel_values"] = {"active_agent": AGENT}
        checkpoint["channel_versions"] = {"active_agent": 1}
        return saver.put(
            {"configurable": {"thread_id": dev, "checkpoint_ns": ""}}, checkpoint, {"source": "update", "step": 1}, {}
        )

    def get(dev: str) -> Any:
        return saver.get_tuple({"configurable": {"thread_id": dev, "checkpoint_ns": ""}})

    for t in range(1, threads + 1):
        put(device(t))
    return _sync_ops(seq, get=get, put=put), lambda: manager.__exit__(None, None, None)


def _openai_agents(b: Bench, seq: list[str], threads: int) -> tuple[dict[str, Measure], Callable[[], None]]:
    from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
    from sqlalchemy.ext.asyncio import create_async_engine

    loop = asyncio.new_event_loop()
    engine = create_async_engine(async_url(b.url))  # the SDK's from_url does the same with defaults
    sessions = {
        device(t): SQLAlchemySession(device(t), engine=engine, create_tables=True) for t in range(1, threads + 1)
    }
    item = {"role": "user", "content": "hi"}
    n = len(seq)

    async def prepopulate() -> None:
        for session in sessions.values():
            await session.add_items([item])

    async def put(i: int) -> Any:
        return await sessions[seq[i % n]].add_items([item])

    async def get(i: int) -> Any:
        return await sessions[seq[i % n]].get_items()

    def close() -> None:
        loop.run_until_complete(engine.dispose())
        loop.close()

    loop.run_until_complete(prepopulate())
    ops = {
        "get": lambda seconds: loop.run_until_complete(run_for_async(get, seconds)),
        "set": lambda seconds: loop.run_until_complete(run_for_async(put, seconds)),
    }
    return ops, close


def _redis(b: Bench, seq: list[str], threads: int) -> tuple[dict[str, Measure], Callable[[], None]]:
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as err:
        client.close()
        raise ConnectionError(f"no Redis server reachable at {REDIS[0]}:{REDIS[1]} ({err})") from err
    prefix = f"bench:{uuid.uuid4().hex[:8]}:lock:"
    keys = [prefix + device(t) for t in range(1, threads + 1)]
    with client.pipeline() as pipe:
        for key in keys:
            pipe.set(key, AGENT, ex=TTL)
        pipe.execute()

    def close() -> None:
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()

    return _sync_ops(
        seq, get=lambda dev: client.get(prefix + dev), put=lambda dev: client.set(prefix + dev, AGENT, ex=TTL)
    ), close


def _print(out: dict[str, Any]) -> None:
    print(
        f"{out['threads']:,} devices/threads; {out['rounds']} round(s) of {out['window_s']} s per cell; "
        "op/s: median of rounds; ratios: median of per-round ratios"
    )
    rows = []
    for name, state in out["status"].items():
        put_call, get_call = CALLS[name]
        if state != "ok":
            rows.append([name, put_call, state, None, get_call, None, None])
            continue
        res = out["results"]
        rows.append(
            [
                name,
                put_call,
                res["set"][name]["ops_per_s"],
                None if name == "service" else out["ratios"]["set"][f"service/{name}"],
                get_call,
                res["get"][name]["ops_per_s"],
                None if name == "service" else out["ratios"]["get"][f"service/{name}"],
            ]
        )
    print(table(["peer", "set-like call", "set op/s", "svc/peer", "get-like call", "get op/s", "svc/peer"], rows))
