"""Follow one message's streamed reply, from its first delta to the stored reply, on any instance.

While the turn's worker runs in this process the reader follows its writer in memory;
otherwise it reads the draft from PostgreSQL (READ, at most once per poll interval, and
at once when a turn of the device changes in this process). A run of the turn is told
apart by (lease epoch, attempt): when a rerun (after its worker died) replaces the draft,
the reader closes the text part, sends data-status {"status": "restarted", "attempt"} and
streams the rerun's text from its start. It ends with the stored reply (what the draft
missed), the lock after the turn (data-lock), the choices (data-choices) and finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.core.db import arun
from app.core.engine import Engine
from app.core.times import utc_text
from app.errors import StoreUnavailable
from app.streams import statements as sql
from app.streams.hub import Hub
from app.streams.protocol import KEEPALIVE, Encoder

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
RERUN_EVERY_SECONDS = 1.0
# While the database cannot be reached a reader reads at most this often (each read is a connect attempt).
OUTAGE_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Final:
    """How a followed message ended.

    status: "answered", "held" (a person holds the conversation: no reply), "queued"
    (still waiting when the reader gave up; the reply comes in history), "degraded"
    (answered without the store) or "gone" (the message no longer exists: erased).
    """

    status: str
    reply: str | None = None
    agent: str | None = None
    stopped: bool = False
    lock_agent: str | None = None
    lock_expires_at: datetime | None = None
    choices: tuple[dict[str, str], ...] = field(default_factory=tuple)
    events: list[dict[str, Any]] = field(default_factory=list)  # the run's tool events, kept with the reply


async def read(
    engine: Engine, tenant: str, device: str, message_id: int, *, key: tuple[int, int] | None = None, offset: int = 0
) -> dict[str, Any]:
    """One READ: message_id 0 follows the device's oldest pending message (the turn in flight)."""
    epoch, attempt = key or (0, 0)
    params = {
        "tenant": tenant,
        "device": device,
        "message_id": message_id,
        "epoch": epoch,
        "attempt": attempt,
        "offset": offset,
    }
    return await arun(engine, sql.READ, params, read_only=True)


def final_of(row: dict[str, Any]) -> Final | None:
    """The Final a READ row shows, or None while the message is still pending."""
    status = row["status"]
    if row["message_id"] is None:
        return Final("gone")
    if status == "pending":
        return None
    lock = {"lock_agent": row["lock_agent"], "lock_expires_at": row["lock_expires_at"]}
    if status == "held":
        return Final("held", None, "human", **lock)
    metadata = row["reply_metadata"] or {}
    return Final(
        "answered",
        row["reply"] or "",
        row["reply_agent"],
        bool(metadata.get("stopped")),
        choices=tuple(metadata.get("choices") or ()),
        events=list(metadata.get("stream_events") or ()),
        **lock,
    )


class Follower:
    """The UI message stream of one message's reply; see the module doc.

    final: for the request that sent the message, its outcome once the pipeline returns
    (no READ needed then); rerun: called (at most once a second) when the message is
    pending and nobody holds the device's lease (its worker died): it takes the lease and
    runs the turn again. deadline: time.monotonic() past which the reader ends with
    data-status queued. It also ends so once the server is stopping (Hub.stopped), unless this
    process holds the device's lease: then it relays the turn to its end and reads its stored
    reply (or is cut at the grace period's end). While the database cannot be reached it keeps
    following, reading at most once every OUTAGE_POLL_SECONDS, until its deadline.
    """

    def __init__(
        self,
        engine: Engine,
        hub: Hub,
        tenant: str,
        device: str,
        message_id: int,
        *,
        poll_seconds: float,
        deadline: float,
        final: Callable[[], Final | None] | None = None,
        rerun: Callable[[], None] | None = None,
    ):
        self.engine, self.hub = engine, hub
        self.tenant, self.device, self.message_id = tenant, device, message_id
        self.poll_seconds, self.deadline = poll_seconds, deadline
        self._final, self._rerun = final, rerun
        self.encoder = Encoder(f"reply-{message_id}")
        self.key: tuple[int, int] | None = None
        self.text = ""  # the text sent for the current run of the turn
        self.events = 0  # its tool events sent
        self._rerun_at = 0.0
        self._store_down = False  # the last READ found the database unreachable

    async def parts(self) -> AsyncIterator[str]:
        yield self.encoder.start()
        last_output = time.monotonic()
        wake = (self.tenant, self.device)
        while True:
            # Whether the lease was held here before the step looked: a finish that stored the reply
            # after the step's READ, then ended the hold, must not make a stopping server end the stream
            # as queued. Seen held, the loop reads again at once.
            held = self.hub.holds(wake)
            out, final = await self._step()
            if out:
                yield out
                last_output = time.monotonic()
            if final is not None:
                yield self._ending(final)
                return
            if time.monotonic() >= self.deadline:
                yield self._ending(Final("queued"))
                return
            if time.monotonic() - last_output >= KEEPALIVE_SECONDS:
                yield KEEPALIVE
                last_output = time.monotonic()
            writer = self.hub.writer(wake)
            local = writer is not None and not writer.ended and self.message_id in writer.message_ids
            if self.hub.stopped and not held:
                # The server is stopping and the turn is not run here: end now, as at the deadline; the
                # page follows it again (the resume route), on an instance that stays. A turn run here
                # is followed until its finish stored the reply, which comes after its writer retired.
                yield self._ending(Final("queued"))
                return
            if held and not self.hub.holds(wake):
                continue  # its drain ended during the step: what it stored is there to read now
            poll = max(self.poll_seconds, OUTAGE_POLL_SECONDS) if self._store_down else self.poll_seconds
            await self.hub.wait(wake, KEEPALIVE_SECONDS if local else poll)

    async def _step(self) -> tuple[str, Final | None]:
        """What to send now, and the Final once the message is settled."""
        writer = self.hub.writer((self.tenant, self.device))
        if writer is not None and not writer.ended and self.message_id in writer.message_ids:
            out = self._run(writer.key)
            return out + self._emit(writer.text[len(self.text) :], writer.events), None
        final = self._final() if self._final is not None else None
        if final is not None and final.status != "answered":
            return "", final
        # Answered: the stored reply also holds the tool events and whether it was stopped.
        try:
            row = await read(
                self.engine, self.tenant, self.device, self.message_id, key=self.key, offset=len(self.text)
            )
        except StoreUnavailable as err:
            # No news: the turn's finish is retried while its lease lasts, and the reply is read once the
            # database answers again (or the reader ends queued at its deadline, as for any slow turn).
            if not self._store_down:
                logger.warning("a stream reader cannot read message %s: %s", self.message_id, err)
            self._store_down = True
            return "", None
        self._store_down = False
        final = final_of(row)
        if final is not None:
            return "", final
        out = ""
        if row["epoch"] is not None:
            key = (row["epoch"], row["attempt"])
            if not row["same"] or key != self.key:
                out += self._run(key)
            out += self._emit(row["text"] or "", row["events"] or [])
        if not row["live"] and self._rerun is not None and time.monotonic() >= self._rerun_at:
            self._rerun_at = time.monotonic() + RERUN_EVERY_SECONDS
            self._rerun()
        return out, None

    def _run(self, key: tuple[int, int]) -> str:
        """Parts for a run of the turn seen first: a rerun restarts the text."""
        if key == self.key:
            return ""
        restarted = self.key is not None and (self.text or self.events)
        self.key, self.text, self.events = key, "", 0
        if not restarted:
            return ""
        return self.encoder.end_text() + self.encoder.data("status", {"status": "restarted", "attempt": key[1]})

    def _emit(self, new_text: str, events: list[dict[str, Any]]) -> str:
        """new_text continues self.text; events is the run's whole list (sent ones skipped)."""
        out = ""
        for item in events[self.events :]:
            at = int(item.get("at", 0))
            if at > len(self.text) + len(new_text):
                break
            cut = max(0, at - len(self.text))
            out += self.encoder.text(new_text[:cut]) + self.encoder.tool(item)
            self.text, new_text = self.text + new_text[:cut], new_text[cut:]
            self.events += 1
        self.text += new_text
        return out + self.encoder.text(new_text)

    def _ending(self, final: Final) -> str:
        out = ""
        reply = final.reply or ""
        if final.status == "answered" and final.events and reply.startswith(self.text):
            out = self._emit(reply[len(self.text) :], final.events)  # tool events this reader has not sent
        return out + ending(self.encoder, self.text, final)


def ending(enc: Encoder, sent: str, final: Final) -> str:
    """The parts that end a stream whose current text part has sent so far: what the stored
    reply adds, its status, the lock after the turn, the choices, finish and [DONE]."""
    out = ""
    reply = final.reply or ""
    if final.status == "answered":
        if reply.startswith(sent):
            out += enc.text(reply[len(sent) :])
        else:  # the stored reply is not what was streamed (the agent's final text differed)
            out += enc.end_text() + enc.data("status", {"status": "restarted", "attempt": None})
            out += enc.text(reply)
        if final.stopped:
            out += enc.data("status", {"status": "stopped"})
    elif final.status == "gone":
        return out + enc.error("this message no longer exists") + enc.finish()
    else:
        out += enc.data("status", {"status": final.status})
        if final.reply:
            out += enc.text(final.reply)
    out += enc.end_text()
    if final.status in ("answered", "held", "degraded"):
        expires = utc_text(final.lock_expires_at) if final.lock_expires_at else None
        out += enc.data("lock", {"agent": final.lock_agent, "expires_at": expires, "answered_by": final.agent})
    if final.choices:
        out += enc.data("choices", list(final.choices))
    return out + enc.finish()
