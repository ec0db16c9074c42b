"""What the database says happened under load: messages, their replies and the locks, per device."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from app.core.engine import Engine
from tests.utils.load_agents import expected_agent, expected_lock


@dataclass(frozen=True)
class Stored:
    """A user row and the assistant row(s) answering it."""

    id: int
    device: str
    content: str
    status: str | None
    external_id: str | None
    replies: tuple[tuple[int, str, str | None], ...]  # (id, content, agent), by id


def stored_messages(engine: Engine, tenant: str = "default") -> dict[str, list[Stored]]:
    """Each device's user rows in id order, each with its replies."""
    with engine.begin() as conn:
        users = conn.exec_driver_sql(
            "SELECT id, device_id, content, status, external_id FROM conversation_messages "
            "WHERE tenant_id = %(t)s AND role = 'user' ORDER BY id",
            {"t": tenant},
        ).all()
        replies = conn.exec_driver_sql(
            "SELECT reply_to, id, content, agent FROM conversation_messages "
            "WHERE tenant_id = %(t)s AND role = 'assistant' ORDER BY id",
            {"t": tenant},
        ).all()
    by_message: dict[int, list[tuple[int, str, str | None]]] = defaultdict(list)
    for reply_to, ident, content, agent in replies:
        by_message[reply_to].append((ident, content, agent))
    devices: dict[str, list[Stored]] = defaultdict(list)
    for ident, device, content, status, external_id in users:
        devices[device].append(Stored(ident, device, content, status, external_id, tuple(by_message.get(ident, ()))))
    return dict(devices)


def live_locks(engine: Engine, tenant: str = "default") -> dict[str, str | None]:
    with engine.begin() as conn:
        return dict(
            conn.exec_driver_sql(
                "SELECT device_id, CASE WHEN active_agent IS NOT NULL AND expires_at > now() THEN active_agent END "
                "FROM conversation_states WHERE tenant_id = %(t)s",
                {"t": tenant},
            ).all()
        )


def duplicated_contents(engine: Engine) -> dict[str, int]:
    with engine.begin() as conn:
        return dict(
            conn.exec_driver_sql(
                "SELECT content, count(*) FROM conversation_messages WHERE role = 'user' "
                "GROUP BY content HAVING count(*) > 1"
            ).all()
        )


def check_device(rows: list[Stored], order: list[str] | None = None) -> tuple[list[str], str | None]:
    """Problems with one device's rows, and the lock its messages imply.

    order: the texts in the order their client sent them, which must be the stored
    and the answered order. None (messages sent at the same moment, whose order is
    whatever the server made of it) takes the order they were answered in.
    """
    problems: list[str] = []
    texts = [row.content for row in rows]
    if order is not None and texts != order:
        problems.append(f"stored order differs from send order: {texts[:5]}... vs {order[:5]}...")
    for row in rows:
        if row.status != "done":
            problems.append(f"message {row.id} ({row.content!r}) has status {row.status}")
        if len(row.replies) != 1:
            problems.append(f"message {row.id} ({row.content!r}) has {len(row.replies)} replies")
    answered = sorted((row for row in rows if row.replies), key=lambda row: row.replies[0][0])
    if order is not None and [row.id for row in answered] != [row.id for row in rows if row.replies]:
        problems.append("replies were not written in the order the messages were sent")
    lock: str | None = None
    for row in answered:
        agent = expected_agent(lock, row.content)
        lock = expected_lock(lock, row.content)
        reply_id, reply, reply_agent = row.replies[0]
        if row.content not in reply:
            problems.append(f"reply {reply_id} to {row.content!r} does not contain it: {reply!r}")
        if reply_agent != agent:
            problems.append(f"reply to {row.content!r} is by {reply_agent}, expected {agent}")
    return problems, lock


def counts(outcomes) -> Counter:
    """Statuses of outcomes (None for no response), for readable assertion messages."""
    return Counter(outcome.status for outcome in outcomes)
