"""SHUTDOWN_GRACE_SECONDS counts from the stop (SIGTERM), not from the lifespan's exit (Runtime.grace_left).

Between the two, uvicorn waits for open connections (a streamed reply's) for the same setting:
counted from the exit, turns got the grace period twice, and a platform whose kill timeout
matched the setting killed the process halfway through the second.
"""

from __future__ import annotations

import anyio

from app.runtime import Runtime
from tests.conftest import make_settings
from tests.utils import aio

GRACE = 600.0
BOUND_SECONDS = 60.0  # a bound on the test, never a measure of speed: well under GRACE


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def runtime_with_clock() -> tuple[Runtime, Clock]:
    runtime = Runtime(make_settings("postgresql://unused@127.0.0.1/unused", shutdown_grace_seconds=GRACE))
    clock = runtime.clock = Clock()
    return runtime, clock


def test_what_is_left_of_the_grace_period_counts_from_the_stop():
    runtime, clock = runtime_with_clock()
    clock.now += 50  # time before the stop does not count
    assert runtime.grace_left() == GRACE
    runtime.stop()
    clock.now += 200
    assert runtime.grace_left() == GRACE - 200
    runtime.stop()  # a second signal does not restart it
    clock.now += GRACE
    assert runtime.grace_left() == 0.0


def test_a_lifespan_that_exits_after_the_grace_period_cancels_the_turns_left_at_once():
    runtime, clock = runtime_with_clock()
    cancelled = anyio.Event()

    async def turn() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def lifespan() -> None:
        with anyio.fail_after(BOUND_SECONDS):  # waiting the grace period again would take GRACE
            async with runtime.serve():
                runtime.background.start(turn)
                runtime.stop()  # SIGTERM
                clock.now += GRACE  # the server's wait for open connections used all of it
        assert cancelled.is_set()

    aio.run(lifespan)
