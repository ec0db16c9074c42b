"""A waiter costs little database: woken by the holder's finish in this process, it polls about once a second."""

from __future__ import annotations

import threading
import time

from app.ledger import statements as sql
from tests.utils.agents import wait_for
from tests.utils.apps import app_client, use_registry
from tests.utils.counting import count_statements, sent
from tests.utils.gate import gate
from tests.utils.slow_agents import Slow

DEVICE = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
# The waiter's backoff starts at 10 ms and doubles up to 1 s: 7 polls in its first 1.27 s,
# then one a second, and one more when it is woken. A bound on a count, not on time.
BACKOFF_POLLS = 8
WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed


def test_a_waiter_is_woken_by_the_holders_finish_and_polls_about_once_a_second(settings, engine):
    with gate() as turn_gate, app_client(settings) as client:
        use_registry(client, {"manager": Slow()})
        engine_ = client.services.database.engine
        wakes: list[bool] = []
        wakeups = client.services.runtime.wakeups
        wait = wakeups.wait

        async def recorded(key, seconds):
            woken = await wait(key, seconds)
            wakes.append(woken)
            return woken

        wakeups.wait = recorded
        responses: dict[str, object] = {}

        def post(name: str, text: str) -> None:
            started = time.monotonic()
            response = client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": DEVICE})
            responses[name] = (response, time.monotonic() - started)

        # In the order the statements finished: a poll started as the holder's last turn ran may read
        # the reply that turn's finish committed, and then it is the one poll after that finish.
        with count_statements(engine_, when="done") as statements:
            holder = threading.Thread(target=post, args=("holder", f"first gate={turn_gate.port}"))
            holder.start()
            assert turn_gate.wait_arrived(1)  # the device's turn is running: its lease is taken
            waiter = threading.Thread(target=post, args=("waiter", "second"))
            waiter.start()

            def polls() -> int:
                return sum(1 for s in list(statements) if s == sql.POLL)

            # Let the waiter wait long enough to reach its one-a-second polls (counted, not timed).
            assert wait_for(lambda: polls() >= BACKOFF_POLLS + 2, WAIT_SECONDS)
            turn_gate.open()
            holder.join(WAIT_SECONDS)
            waiter.join(WAIT_SECONDS)
            issued = list(statements)

    (first, _), (second, waited) = responses["holder"], responses["waiter"]
    assert first.status_code == second.status_code == 200
    assert second.json()["reply"] == "slow: second attempt=1"  # answered by the holder, in order
    polls = [s for s in issued if s == sql.POLL]
    assert len(polls) <= waited + BACKOFF_POLLS, (len(polls), waited)
    # The holder's finish woke the waiter: its last sleep ended by the wake-up, and one poll read the reply.
    assert wakes[-1] is True, wakes
    last_finish = max(i for i, s in enumerate(issued) if s == sent(sql.FINISH))
    assert [s for s in issued[last_finish + 1 :] if s == sql.POLL] == [sql.POLL]
