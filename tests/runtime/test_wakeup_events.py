"""Wakeups: a waiter sleeps until its device's turn finishes in this process, and leaves nothing behind."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from app.runtime import Wakeups
from tests.utils import aio

KEY = ("default", "4c1d2e3f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")


async def _notified_while_waiting() -> tuple[bool, bool, int]:
    wakeups = Wakeups()
    results: list[bool] = []

    async def waiter() -> None:
        results.append(await wakeups.wait(KEY, 60))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(waiter)
        while len(wakeups) == 0:  # both waiters registered on the same event
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        wakeups.notify(KEY)
    return results[0], results[1], len(wakeups)


def test_a_notify_wakes_every_waiter_of_the_device():
    first, second, left = aio.run(_notified_while_waiting)
    assert (first, second) == (True, True)
    assert left == 0


async def _timed_out() -> tuple[bool, int]:
    wakeups = Wakeups()
    woken = await wakeups.wait(KEY, 0)
    return woken, len(wakeups)


def test_a_waiter_that_times_out_leaves_no_event_behind():
    assert aio.run(_timed_out) == (False, 0)


async def _other_device() -> tuple[bool, int]:
    wakeups = Wakeups()
    wakeups.notify(("default", "someone-else"))  # nobody waits on it: a no-op
    return await wakeups.wait(KEY, 0), len(wakeups)


def test_a_notify_for_another_device_wakes_nobody():
    assert aio.run(_other_device) == (False, 0)


async def _device_watch() -> tuple[list[str], bool, int, int]:
    """A chat page's stream watches its device: a finished turn and an operator action wake it; the turn's
    waiters sleep through the operator action; another device's changes wake nobody."""
    wakeups = Wakeups()
    woken: list[str] = []

    async def watcher(name: str) -> None:
        if await wakeups.watch_device(KEY, 60):
            woken.append(name)

    async def waiter() -> None:
        if await wakeups.wait(KEY, 60):
            woken.append("waiter")

    async with anyio.create_task_group() as group:
        group.start_soon(watcher, "first")
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        wakeups.changed(("default", "someone-else"))
        wakeups.changed(KEY)  # an operator replied: the page, not the turn's waiter
        await anyio.wait_all_tasks_blocked()
        group.start_soon(watcher, "second")
        await anyio.wait_all_tasks_blocked()
        wakeups.notify(KEY)  # a turn finished: both
    timed_out = await wakeups.watch_device(KEY, 0)
    return woken, timed_out, len(wakeups._devices), len(wakeups)


def test_a_device_watch_wakes_on_its_turns_and_operator_actions_and_leaves_nothing_behind():
    woken, timed_out, devices_left, waiters_left = aio.run(_device_watch)
    assert woken == ["first", "second", "waiter"] or woken == ["first", "waiter", "second"]
    assert (timed_out, devices_left, waiters_left) == (False, 0, 0)
