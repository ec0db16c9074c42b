"""A webhook delivery through the pipeline, acknowledged within WEBHOOK_ACK_SECONDS.

Meta redelivers a webhook it does not see acknowledged quickly, so the answer never
waits on the Graph API or a slow agent past the budget. Everything is a coroutine on
the app's event loop; no thread is held while a turn runs or a message waits.

- Each device's messages of the batch run in order as one task per device (devices
  run concurrently), each task holding one of the process's MAX_CONCURRENT_TURNS
  places. The request waits for them only until the budget runs out.
- A device whose task finds no free place has nothing stored: the request answers
  503 with Retry-After and Meta delivers the batch again (what was stored meanwhile
  is then a duplicate). A 200 is only ever answered for messages that are stored.
- A send and its retries get their own bound (attempts x timeout): the request stops
  waiting for them at the budget, they go on. Without a lifespan (below) they are
  bounded by what is left of the budget; a reply not accepted in time stays unsent and
  the cleanup run (or the device's next delivery) sends it.
- When the budget runs out, every message not yet stored is stored by the request
  itself before it answers: nothing acknowledged is lost. Turns and sends are
  fenced, so none is done twice.
- Turns still running go on after the answer, in the task group the app's lifespan
  owns (app/runtime.py: Background), with the request's context (its request id).
  Where there is no lifespan (Lambda through Mangum, lifespan="off": the function is
  frozen between invocations, and a task left on the loop would be too), the device
  tasks run inside the request and are cancelled when the budget runs out: a
  cancelled turn gives its lease back, and the device's next message or the cleanup
  run answers what is left, as after a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from app import validation
from app.channels.whatsapp import statuses
from app.channels.whatsapp.graph import TYPING_TIMEOUT, GraphApi
from app.channels.whatsapp.inbound import CHANNEL, UserMessage, business_tenant, user_messages
from app.channels.whatsapp.outbox import Outbox, marker_hold
from app.core.aio import call_async
from app.core.config import Settings
from app.core.logging import device_hash
from app.erasure import ReplayGuard
from app.errors import InvalidInput, Overloaded, RateLimited, StoreError, StoreUnavailable
from app.ledger import Answer, Lease, Ledger, Pending
from app.pipeline import ChannelReplier, Inbound, OnReply, Pipeline

logger = logging.getLogger(__name__)

ACK_MARGIN_SECONDS = 0.5  # kept back from the budget for the final stores and the answer itself

Deadline = Callable[[], float]


@dataclass
class DeliveryReport:
    """What became of the user messages of one delivery."""

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class WhatsAppSender:
    """The app's WhatsApp side: the Graph API client (one per event loop) and the outbox on it."""

    def __init__(self, settings: Settings, client: Any = None):
        self.settings = settings
        self.graph = GraphApi(settings, client)

    def outbox(self, engine: Any) -> Outbox:
        return Outbox(engine, self.graph)

    def replier(self, ledger: Ledger) -> ChannelReplier:
        """The pipeline's on_reply for WhatsApp messages (app.services.ReplyChannel)."""
        return replier(self, ledger)

    def send_due(self, engine: Any, *, deadline: float) -> int:
        """Send the replies whose backoff is over, until deadline (time.monotonic()); how many went.

        Sync, for the scheduled cleanup (cron route, CLI, Lambda schedule): runs the async
        outbox through call_async.
        """
        return call_async(self.outbox(engine).send_due, deadline=deadline)

    async def aclose(self) -> None:
        """Close the running loop's Graph API client (the app's shutdown)."""
        await self.graph.aclose()

    def close(self) -> None:
        """Nothing to do from sync code: each loop's client is closed on its loop (aclose, at_loop_end)."""


def replier(
    sender: WhatsAppSender, ledger: Ledger, deadline: Deadline | None = None, typing: Typist | None = None
) -> ChannelReplier:
    """The pipeline's on_reply for WhatsApp: send the device's unsent replies, this one included, in order.

    A coroutine function. deadline: the latest time.monotonic() a send may run to; by
    default each send gets its own bound (attempts x timeout).
    """
    outbox = sender.outbox(ledger.engine)
    bound = deadline or (lambda: time.monotonic() + outbox.hold)

    async def on_reply(pending: Pending, answer: Answer) -> None:
        if pending.metadata.get("channel") != CHANNEL or answer.reply_id is None:
            return
        if typing is not None:
            await typing.settled(pending)
        try:
            await outbox.flush(reply_id=answer.reply_id, deadline=bound)
        except StoreError as err:  # the reply is stored unsent: the next delivery or the cleanup sends it
            logger.error("whatsapp reply %s left for a later send: %s", answer.reply_id, err)

    return on_reply


class Typist:
    """The pipeline's on_working for WhatsApp: mark the message read and show "typing...", throttled.

    A coroutine function object. At most once per WHATSAPP_TYPING_INTERVAL_SECONDS per
    message; best effort. The pipeline runs it beside the turn, so settled() lets the
    reply wait (at most TYPING_TIMEOUT) for a call in flight: "typing..." never follows
    the reply. A call that never started cannot follow it either: nothing to wait for.
    """

    def __init__(self, sender: WhatsAppSender, deadline: Deadline | None = None, tenant: str | None = None):
        self.sender, self.deadline, self.tenant = sender, deadline, tenant
        self.interval = sender.settings.whatsapp_typing_interval_seconds
        self._last: dict[str, float] = {}
        self._calls: dict[str, anyio.Event] = {}  # per message: set when its latest typing call has ended

    async def __call__(self, pending: Pending) -> None:
        metadata = pending.metadata
        message_id, phone_number_id = metadata.get("wa_message_id"), metadata.get("phone_number_id")
        if metadata.get("channel") != CHANNEL or not message_id or not phone_number_id:
            return
        tenants = self.sender.settings.whatsapp_tenants
        if self.tenant is None or business_tenant(tenants, str(phone_number_id)) != self.tenant:
            return  # only on a number of the tenant whose delivery this is
        message_id, now = str(message_id), time.monotonic()
        if message_id in self._last and now - self._last[message_id] < self.interval:
            return
        self._last[message_id] = now
        ended = self._calls[message_id] = anyio.Event()
        try:
            limit = min(self.deadline(), now + TYPING_TIMEOUT) if self.deadline else now + TYPING_TIMEOUT
            await self.sender.graph.typing(str(phone_number_id), message_id, deadline=limit)
        finally:
            ended.set()

    async def settled(self, pending: Pending) -> None:
        """Wait (at most TYPING_TIMEOUT) until this message's typing call in flight, if any, has ended."""
        ended = self._calls.get(str(pending.metadata.get("wa_message_id")))
        if ended is not None:
            with anyio.move_on_after(TYPING_TIMEOUT):
                await ended.wait()


def typist(sender: WhatsAppSender, deadline: Deadline | None = None, tenant: str | None = None) -> Typist:
    """The Typist of one tenant's delivery: it marks only messages that came in on the tenant's own numbers."""
    return Typist(sender, deadline, tenant)


# A job's states: waiting (its device task has not reached it), running (in the pipeline),
# storing (the request stores it: its device task skips it), stored, duplicate, ignored,
# unavailable (the store was down), overloaded (no free turn place: not stored), error.
OPEN = ("waiting", "running", "unavailable", "error")


@dataclass
class _Job:
    tenant: str
    message: UserMessage
    state: str = "waiting"
    done: bool = False  # its pipeline call returned (answered, queued or failed)

    def inbound(self) -> Inbound:
        m = self.message
        return Inbound(self.tenant, m.device_id, m.text or "", m.external_id, m.metadata(), sent_at=m.sent_at)


class _Batch:
    """The messages of one delivery; their state is shared by the device tasks and the request (one loop)."""

    def __init__(self, pipeline: Pipeline, sender: WhatsAppSender, ack_by: float, jobs: list[_Job]):
        self.pipeline, self.sender, self.ack_by, self.jobs = pipeline, sender, ack_by, jobs
        self.runtime = pipeline.runtime
        self.acked = False
        self._changed = anyio.Event()

    def dropped(self, job: _Job, err: RateLimited) -> None:
        """Record a message refused by RATE_LIMIT_PER_DEVICE: acknowledged (Meta must not
        redeliver it), never stored, never answered."""
        logger.warning(
            "whatsapp message %s from device %s dropped: over the rate limit (RATE_LIMIT_PER_DEVICE), "
            "window ends in %s s",
            job.message.id,
            device_hash(self.sender.settings, job.message.device_id),
            err.retry_after,
        )
        self._set(job, "ignored", done=True)

    def deadline(self) -> float:
        # Where turns outlive the answer (a lifespan), a send gets its own bound: the request
        # stops waiting at the budget, the send goes on. Without a lifespan everything ends
        # with the request, so until the answer is out it all shares the budget.
        if self.acked or self.runtime.background.running:
            return time.monotonic() + marker_hold(self.sender.settings)
        return self.ack_by

    def _set(self, job: _Job, state: str, *, only_from: tuple[str, ...] | None = None, done: bool = False) -> None:
        if only_from is None or job.state in only_from:
            job.state = state
        job.done = job.done or done
        self._changed.set()

    def _hooks(self, tenant: str) -> tuple[OnReply, Typist]:
        typing = typist(self.sender, self.deadline, tenant)
        return replier(self.sender, self.pipeline.ledger, self.deadline, typing), typing

    async def run_device(self, jobs: list[_Job]) -> None:
        """Run one device's messages in order, holding one of the process's turn places."""
        try:
            with self.runtime.slot():
                await self._run_jobs(jobs)
        except Overloaded as err:
            logger.warning(
                "whatsapp messages of device %s not taken: %s",
                device_hash(self.sender.settings, jobs[0].message.device_id),
                err,
            )
            for job in jobs:
                self._set(job, "overloaded", only_from=("waiting",), done=True)

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        on_reply, typing = self._hooks(jobs[0].tenant)
        for job in jobs:
            if job.state != "waiting":
                continue  # stored by the request meanwhile: its lease holder answers it
            job.state = "running"

            async def working(pending: Pending, job: _Job = job) -> None:
                # A turn starting means this message's claim went through: it is stored.
                self._set(job, "stored", only_from=("running",))
                await typing(pending)

            try:
                result = await self.pipeline.handle(
                    job.inbound(), wait=False, on_reply=on_reply, on_working=working, stateless=False
                )
                self._set(job, "duplicate" if result.duplicate else "stored", only_from=("running",), done=True)
            except StoreUnavailable as err:
                logger.warning("whatsapp message %s not stored: %s", job.message.id, err)
                for rest in jobs[jobs.index(job) :]:
                    self._set(rest, "unavailable", only_from=("waiting", "running"), done=True)
                return  # the request stores them itself, or answers 503
            except RateLimited as err:
                self.dropped(job, err)
            except (InvalidInput, StoreError) as err:
                # A redelivery would carry the same value, and a statement the database
                # refuses would fail again: acknowledge and keep the batch going.
                logger.error("whatsapp message %s ignored: %s", job.message.id, err)
                self._set(job, "ignored", done=True)
            except Exception:  # the request stores the message itself if need be
                logger.exception("whatsapp message %s failed", job.message.id)
                self._set(job, "error", only_from=("running",), done=True)

    async def wait(self) -> None:
        """Wait, within the budget, until every device task is through its messages."""
        with anyio.move_on_after(max(0.0, self.ack_by - time.monotonic())):
            while not all(job.done or job.state in ("storing", "ignored") for job in self.jobs):
                self._changed = anyio.Event()  # made before waiting: one loop, no change slips in between
                await self._changed.wait()

    async def store_rest(self) -> None:
        """Store what the device tasks have not (they skip it from now on); Overloaded when a
        device found no free turn place (503: Meta delivers again), after storing the rest."""
        open_jobs = [job for job in self.jobs if job.state in OPEN]
        for job in open_jobs:
            if job.state == "waiting":
                job.state = "storing"
        for job in open_jobs:
            await self._store(job)
        self.acked = True
        if any(job.state == "overloaded" for job in self.jobs):
            raise Overloaded(
                f"this instance holds {self.runtime.max_turns} turns already: deliver again shortly", retry_after=1
            )

    async def _store(self, job: _Job) -> None:
        inbound, started = job.inbound(), job.state != "storing"
        try:
            claim = await self.pipeline.ledger.claim(
                validation.tenant_id(inbound.tenant_id),
                validation.device_id(inbound.device_id),
                inbound.text,
                external_id=inbound.external_id,
                metadata=inbound.metadata,
                sent_at=inbound.sent_at,
            )
        except StoreUnavailable:
            raise  # 503: Meta delivers again once the store is back
        except RateLimited as err:
            self.dropped(job, err)
            return
        except (InvalidInput, StoreError) as err:
            logger.error("whatsapp message %s ignored: %s", job.message.id, err)
            self._set(job, "ignored")
            return
        # A message whose device task had started may have been stored by it a moment ago.
        self._set(job, "stored" if claim.message_id is not None or started else "duplicate")
        if claim.lease is not None:
            # The device came free (its task was sending an earlier reply, or was cut short):
            # this claim now holds the lease, so its pending messages are answered from here.
            if self.runtime.background.running:
                self.runtime.background.start(self._drain, claim.lease)
            else:  # nothing may outlive the request: the next message or the cleanup run answers them
                await self._give_back(claim.lease)

    async def _drain(self, lease: Lease) -> None:
        on_reply, typing = self._hooks(lease.tenant)
        try:
            with self.runtime.slot():
                # Pipeline.drain only takes a free lease; this one is already ours.
                await self.pipeline._drain(lease, on_reply, typing)
        except Overloaded:
            await self._give_back(lease)
        except Exception:  # the lease expires and the cleanup run answers them
            logger.exception("draining device after the webhook's answer failed")

    async def _give_back(self, lease: Lease) -> None:
        try:
            await self.pipeline.ledger.release(lease)
        except Exception as err:  # noqa: BLE001 - the lease lapses on its own after LEASE_SECONDS
            logger.warning("could not give a webhook's lease back: %s", err)

    def report(self, ignored: int) -> DeliveryReport:
        states = [job.state for job in self.jobs]
        return DeliveryReport(states.count("stored"), states.count("duplicate"), ignored + states.count("ignored"))


async def handle_delivery(
    payload: Any, pipeline: Pipeline, sender: WhatsAppSender, settings: Settings, *, received: float | None = None
) -> DeliveryReport:
    """Run the user messages of one delivery, each device's in order; answer within the budget.

    received: time.monotonic() when the request arrived. StoreUnavailable propagates
    (so Meta redelivers) when a message could not be stored, Overloaded (503) when a
    device found the process's MAX_CONCURRENT_TURNS places taken. A message whose device
    was erased since it was first stored counts as a duplicate (one lookup per delivery).
    """
    received = time.monotonic() if received is None else received
    oldest = time.time() - settings.webhook_max_age_seconds
    ignored, jobs = 0, []
    for message in user_messages(payload):
        if message is None or message.text is None:  # malformed, a reaction, an empty text
            ignored += 1
        elif message.sent_at is None or message.sent_at.timestamp() < oldest:
            logger.info("whatsapp message %s is older than WEBHOOK_MAX_AGE_SECONDS: ignored", message.id)
            ignored += 1
        else:
            jobs.append(_Job(business_tenant(settings.whatsapp_tenants, message.phone_number_id), message))
    # Messages of a device erased since (app/erasure.py): duplicates, as they were before the erasure.
    guard = ReplayGuard.of(settings)
    erased = await guard.erased(pipeline.ledger.engine, [(j.tenant, j.message.external_id) for j in jobs])
    for n in erased:
        jobs[n].state, jobs[n].done = "duplicate", True
    batch = _Batch(pipeline, sender, received + settings.webhook_ack_seconds - ACK_MARGIN_SECONDS, jobs)
    devices: dict[tuple[str, str], list[_Job]] = {}
    for job in jobs:
        if job.state == "waiting":
            devices.setdefault((job.tenant, job.message.device_id), []).append(job)
    background = pipeline.runtime.background
    if background.running:
        for device_jobs in devices.values():
            background.start(batch.run_device, device_jobs)
        await batch.wait()
    else:
        async with anyio.create_task_group() as group:
            for device_jobs in devices.values():
                group.start_soon(batch.run_device, device_jobs)
            await batch.wait()
            group.cancel_scope.cancel()  # see the module doc: nothing is left on a loop that may freeze
    await batch.store_rest()
    await statuses.arecord(pipeline.ledger.engine, settings, payload)  # delivery receipts, consented profile names
    return batch.report(ignored)
