"""A webhook delivery through the pipeline, acknowledged within WEBHOOK_ACK_SECONDS.

Meta redelivers a webhook it does not see acknowledged quickly, so the answer never
waits on the Graph API or a slow agent past the budget:

- Each device's messages of the batch run in order on a background thread; the
  request waits for them only until the budget runs out.
- Sends and their retries are bounded by what is left of the budget; a reply not
  accepted in time stays unsent and the cleanup run (or the device's next delivery)
  sends it.
- When the budget runs out, every message not yet stored is stored by the request
  itself before it answers 200: nothing acknowledged is lost. Turns still running
  go on after the answer (on a server they finish and send; on a serverless
  platform that freezes the function, the lease expires and the device's next
  message or the cleanup run answers them). Turns and sends are fenced, so none
  is done twice.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

from app import validation
from app.channels.whatsapp.graph import TYPING_TIMEOUT, GraphApi
from app.channels.whatsapp.inbound import CHANNEL, UserMessage, business_tenant, user_messages
from app.channels.whatsapp import statuses
from app.channels.whatsapp.outbox import Outbox, marker_hold
from app.core.config import Settings
from app.core.logging import device_hash
from app.erasure import ReplayGuard
from app.errors import InvalidInput, RateLimited, StoreError, StoreUnavailable
from app.ledger import Answer, Ledger, Pending
from app.pipeline import Inbound, OnReply, Pipeline

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


class Background:
    """Threads that may outlive a webhook's answer; join() lets a shutdown (or a test) wait for them."""

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name="whatsapp-turn", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def join(self, timeout: float) -> bool:
        """Wait (bounded) for every running thread; True when none is left."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return True
            for thread in threads:
                thread.join(max(0.0, end - time.monotonic()))
            if time.monotonic() >= end:
                with self._lock:
                    return not self._threads


class WhatsAppSender:
    """The app's WhatsApp side: one Graph API client, and the work that goes on after an acknowledgement."""

    def __init__(self, settings: Settings, client: Any = None):
        self.settings = settings
        self.graph = GraphApi(settings, client)
        self.background = Background()

    def outbox(self, engine: Any) -> Outbox:
        return Outbox(engine, self.graph)

    def replier(self, ledger: Ledger) -> OnReply:
        """The pipeline's on_reply for WhatsApp messages (app.services.ReplyChannel)."""
        return replier(self, ledger)

    def send_due(self, engine: Any, *, deadline: float) -> int:
        """Send the replies whose backoff is over, until deadline (time.monotonic()); how many went."""
        return self.outbox(engine).send_due(deadline=deadline)

    def close(self) -> None:
        self.graph.close()


def replier(
    sender: WhatsAppSender, ledger: Ledger, deadline: Deadline | None = None, typing: Typist | None = None
) -> OnReply:
    """The pipeline's on_reply for WhatsApp: send the device's unsent replies, this one included, in order.

    deadline: the latest time.monotonic() a send may run to; by default each send gets
    its own bound (attempts x timeout).
    """
    outbox = sender.outbox(ledger.engine)
    bound = deadline or (lambda: time.monotonic() + outbox.hold)

    def on_reply(pending: Pending, answer: Answer) -> None:
        if pending.metadata.get("channel") != CHANNEL or answer.reply_id is None:
            return
        if typing is not None:
            typing.settled(pending)
        try:
            outbox.flush(reply_id=answer.reply_id, deadline=bound)
        except StoreError as err:  # the reply is stored unsent: the next delivery or the cleanup sends it
            logger.error("whatsapp reply %s left for a later send: %s", answer.reply_id, err)

    return on_reply


class Typist:
    """The pipeline's on_working for WhatsApp: mark the message read and show "typing...", throttled.

    At most once per WHATSAPP_TYPING_INTERVAL_SECONDS per message; best effort. The
    pipeline calls the hook on a thread of its own, so settled() lets the reply wait
    (at most TYPING_TIMEOUT) for a call in flight: "typing..." never follows the reply.
    """

    def __init__(self, sender: WhatsAppSender, deadline: Deadline | None = None, tenant: str | None = None):
        self.sender, self.deadline, self.tenant = sender, deadline, tenant
        self.interval = sender.settings.whatsapp_typing_interval_seconds
        self._last: dict[str, float] = {}
        self._done: set[str] = set()  # messages whose first typing call has ended
        self._cond = threading.Condition()

    def __call__(self, pending: Pending) -> None:
        metadata = pending.metadata
        message_id, phone_number_id = metadata.get("wa_message_id"), metadata.get("phone_number_id")
        if metadata.get("channel") != CHANNEL or not message_id or not phone_number_id:
            return
        tenants = self.sender.settings.whatsapp_tenants
        if self.tenant is None or business_tenant(tenants, str(phone_number_id)) != self.tenant:
            return  # only on a number of the tenant whose delivery this is
        now = time.monotonic()
        with self._cond:
            if message_id in self._last and now - self._last[message_id] < self.interval:
                return
            self._last[message_id] = now
        try:
            limit = min(self.deadline(), now + TYPING_TIMEOUT) if self.deadline else now + TYPING_TIMEOUT
            self.sender.graph.typing(str(phone_number_id), str(message_id), deadline=limit)
        finally:
            with self._cond:
                self._done.add(str(message_id))
                self._cond.notify_all()

    def settled(self, pending: Pending) -> None:
        """Wait (at most TYPING_TIMEOUT) until this message's first typing call has ended."""
        message_id = str(pending.metadata.get("wa_message_id"))
        with self._cond:
            self._cond.wait_for(lambda: message_id in self._done, timeout=TYPING_TIMEOUT)


def typist(sender: WhatsAppSender, deadline: Deadline | None = None, tenant: str | None = None) -> Typist:
    """The Typist of one tenant's delivery: it marks only messages that came in on the tenant's own numbers."""
    return Typist(sender, deadline, tenant)


@dataclass
class _Job:
    tenant: str
    message: UserMessage
    state: str = "waiting"  # waiting, running, stored, duplicate, ignored, unavailable, error
    done: bool = False  # its pipeline call returned (answered, queued or failed)

    def inbound(self) -> Inbound:
        m = self.message
        return Inbound(self.tenant, m.device_id, m.text or "", m.external_id, m.metadata(), sent_at=m.sent_at)


@dataclass
class _Batch:
    """The messages of one delivery, their state shared between the device threads and the request."""

    pipeline: Pipeline
    sender: WhatsAppSender
    ack_by: float
    jobs: list[_Job]
    # The app's event loop: the pipeline is async, these threads hand their calls to it.
    token: EventLoopToken
    acked: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def dropped(self, job: _Job, err: RateLimited) -> None:
        """Record a message refused by RATE_LIMIT_PER_DEVICE: acknowledged (Meta must not
        redeliver it), never stored, never answered."""
        logger.warning(
            "whatsapp message %s from device %s dropped: over the rate limit (RATE_LIMIT_PER_DEVICE), "
            "window ends in %s s", job.message.id, device_hash(self.sender.settings, job.message.device_id),
            err.retry_after,
        )
        self._set(job, "ignored", done=True)

    def deadline(self) -> float:
        # Until the answer is out, everything shares the acknowledgement's budget; after it,
        # each send gets its own bound (nobody waits for it any more).
        return self.ack_by if not self.acked else time.monotonic() + marker_hold(self.sender.settings)

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return anyio.from_thread.run(functools.partial(fn, *args, **kwargs), token=self.token)

    def _set(self, job: _Job, state: str, *, only_from: tuple[str, ...] | None = None, done: bool = False) -> None:
        with self.cond:
            if only_from is None or job.state in only_from:
                job.state = state
            job.done = job.done or done
            self.cond.notify_all()

    def run_device(self, jobs: list[_Job]) -> None:
        typing = typist(self.sender, self.deadline, jobs[0].tenant)
        on_reply = replier(self.sender, self.pipeline.ledger, self.deadline, typing)
        for job in jobs:
            with self.cond:
                if job.state != "waiting":
                    continue  # stored by the request meanwhile: its lease holder answers it
                job.state = "running"

            def working(pending: Pending, job: _Job = job) -> None:
                # A turn starting means this message's claim went through: it is stored.
                self._set(job, "stored", only_from=("running",))
                typing(pending)

            try:
                result = self._on_loop(
                    self.pipeline.handle, job.inbound(), wait=False, on_reply=on_reply, on_working=working,
                    stateless=False,
                )
                self._set(job, "duplicate" if result.duplicate else "stored", only_from=("running",), done=True)
            except StoreUnavailable as err:
                logger.warning("whatsapp message %s not stored: %s", job.message.id, err)
                for rest in jobs[jobs.index(job):]:
                    self._set(rest, "unavailable", only_from=("waiting", "running"), done=True)
                return  # the request stores them itself, or answers 503
            except RateLimited as err:
                self.dropped(job, err)
            except (InvalidInput, StoreError) as err:
                # A redelivery would carry the same value, and a statement the database
                # refuses would fail again: acknowledge and keep the batch going.
                logger.error("whatsapp message %s ignored: %s", job.message.id, err)
                self._set(job, "ignored", done=True)
            except Exception:  # noqa: BLE001 - the request stores the message itself if need be
                logger.exception("whatsapp message %s failed", job.message.id)
                self._set(job, "error", only_from=("running",), done=True)

    def settle(self) -> None:
        """Wait for the device threads within the budget, then store whatever they have not."""
        with self.cond:
            self.cond.wait_for(
                lambda: all(job.done or job.state in ("storing", "ignored") for job in self.jobs),
                timeout=max(0.0, self.ack_by - time.monotonic()),
            )
            open_jobs = [job for job in self.jobs if job.state in ("waiting", "running", "unavailable", "error")]
            for job in open_jobs:
                if job.state == "waiting":
                    job.state = "storing"  # its device thread skips it from now on
        for job in open_jobs:
            self._store(job)
        self.acked = True

    def _store(self, job: _Job) -> None:
        inbound, started = job.inbound(), job.state != "storing"
        try:
            claim = self._on_loop(
                self.pipeline.ledger.claim,
                validation.tenant_id(inbound.tenant_id), validation.device_id(inbound.device_id), inbound.text,
                external_id=inbound.external_id, metadata=inbound.metadata, sent_at=inbound.sent_at,
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
        # A message whose device thread had started may have been stored by it a moment ago.
        self._set(job, "stored" if claim.message_id is not None or started else "duplicate")
        if claim.lease is not None:
            # The device came free (its thread was sending an earlier reply): this claim now
            # holds the lease, so its pending messages are answered from here, after the answer.
            self.sender.background.start(self._drain, claim.lease)

    def _drain(self, lease: Any) -> None:
        typing = typist(self.sender, self.deadline, lease.tenant)
        on_reply = replier(self.sender, self.pipeline.ledger, self.deadline, typing)
        try:
            # Pipeline.drain only takes a free lease; this one is already ours.
            self._on_loop(self.pipeline._drain, lease, on_reply, typing)  # noqa: SLF001
        except Exception:  # noqa: BLE001 - the lease expires and the cleanup run answers them
            logger.exception("draining device after the webhook's answer failed")

    def report(self, ignored: int) -> DeliveryReport:
        with self.cond:
            states = [job.state for job in self.jobs]
        return DeliveryReport(states.count("stored"), states.count("duplicate"), ignored + states.count("ignored"))


def handle_delivery(
    payload: Any, pipeline: Pipeline, sender: WhatsAppSender, settings: Settings, *, received: float | None = None
) -> DeliveryReport:
    """Run the user messages of one delivery, each device's in order; answer within the budget.

    received: time.monotonic() when the request arrived. StoreUnavailable propagates
    (so Meta redelivers) when a message could not be stored. A message whose device was
    erased since it was first stored counts as a duplicate (one lookup per delivery).
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
    erased = ReplayGuard.of(settings).erased(pipeline.ledger.engine, [(j.tenant, j.message.external_id) for j in jobs])
    for n in erased:
        jobs[n].state, jobs[n].done = "duplicate", True
    token = anyio.from_thread.run_sync(anyio.lowlevel.current_token)  # called on a sync route's worker thread
    batch = _Batch(pipeline, sender, received + settings.webhook_ack_seconds - ACK_MARGIN_SECONDS, jobs, token)
    devices: dict[tuple[str, str], list[_Job]] = {}
    for job in jobs:
        if job.state == "waiting":
            devices.setdefault((job.tenant, job.message.device_id), []).append(job)
    for device_jobs in devices.values():
        sender.background.start(batch.run_device, device_jobs)
    batch.settle()
    statuses.record(pipeline.ledger.engine, settings, payload)  # delivery receipts, consented profile names
    return batch.report(ignored)
